#!/usr/bin/env bash
# The project's whole test suite, from a clean checkout: builds the release wheel and sdist
# (scripts/build-wheels.sh), installs the wheel into a local virtual environment, then runs the lint
# gates, the Rust core's tests, the wheel in a fresh environment without Rust, the Python tests
# (with the Burn compatibility checks) and a bounded fuzzing run. Any failure fails the run.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

python=${PYTHON:-python3}
# pip keeps no second copy of what it downloads (torch and its CUDA libraries: about 2.5 GB).
export PIP_NO_CACHE_DIR=1
venv=$(realpath -m "${VENV:-.venv}")
dist=$(realpath -m "${DIST:-target/dist}")

echo "== building the wheel and the sdist"
bash scripts/build-wheels.sh "$dist"
wheel=$(ls "$dist"/heartmula_burn-*manylinux_2_17_"$(uname -m)".whl)  # the one this machine runs
sdist=$(ls "$dist"/heartmula_burn-*.tar.gz)

echo "== installing the wheel into $venv, with torch and torchtune for the sanity tests and the linters"
if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --upgrade pip
# PyPI's Linux torch wheel (with its CUDA libraries) runs on the CPU too: about 5 GB, 2 minutes.
"$venv/bin/python" -m pip install --quiet --force-reinstall --no-deps "$wheel"
"$venv/bin/python" -m pip install --quiet "$wheel[test,sanity,crosscheck,lint,hub]"

echo "== lint gates: rustfmt, clippy (every crate), ruff, mypy, stubtest"
cargo fmt --all --check
cargo fmt --check --manifest-path rust/burn-compat/Cargo.toml
cargo fmt --check --manifest-path rust/core/fuzz/Cargo.toml
# Formatting only: building the runtime (wgpu included) is the opt-in HEARTMULA_RUNTIME=1 test's.
cargo fmt --check --manifest-path rust/runtime-check/Cargo.toml
cargo clippy --locked --workspace --all-targets -- -D warnings
for burn in burn-021 burn-022; do
    cargo clippy --locked --manifest-path rust/burn-compat/Cargo.toml --all-targets --features "$burn" -- -D warnings
done
cargo clippy --locked --manifest-path rust/core/fuzz/Cargo.toml --all-targets -- -D warnings
"$venv/bin/ruff" check python tests benchmarks scripts
"$venv/bin/ruff" format --check python tests benchmarks scripts
"$venv/bin/mypy"
# The stub against the compiled module (run from tests/ so that the installed package is the one checked).
(cd tests && "$venv/bin/python" -m mypy.stubtest heartmula_burn._core)

echo "== cargo test (Rust core)"
cargo test --locked

echo "== mutation testing of the Rust core's latest change (cargo-mutants --in-diff)"
bash scripts/mutants-diff.sh

echo "== the sdist builds"
sdist_out=$(mktemp -d)
CARGO_TARGET_DIR="$PWD/target" "$venv/bin/python" -m pip wheel --quiet --no-deps -w "$sdist_out" "$sdist"
ls "$sdist_out"/heartmula_burn-*.whl
rm -rf "$sdist_out"

echo "== the wheel in a fresh environment whose PATH has no cargo or rustc"
bash tests/wheel_smoke.sh "$wheel"

arm_wheel=$(ls "$dist"/heartmula_burn-*manylinux_2_17_aarch64.whl 2>/dev/null || true)
if [ -n "$arm_wheel" ]; then
    echo "== the aarch64 wheel under qemu-user, against this machine's"
    bash tests/wheel_smoke_aarch64.sh "$arm_wheel" "$venv/bin/python"
else
    echo "== no aarch64 wheel was built (see above): not run"
fi

# The real Burn crates, one release per build: 0.21.0 (what runtimes use today) and 0.22.1 (newest stable).
for burn in burn-021 burn-022; do
    echo "== building the Burn compatibility checks ($burn)"
    cargo test --release --locked --no-run --manifest-path rust/burn-compat/Cargo.toml --features "$burn"
done
# Burn's own writer, and Burn 0.22.1's quantizer with its writer, as benchmark baselines (their
# outputs are tested to equal ours byte for byte).
cargo build --release --locked --manifest-path rust/burn-compat/Cargo.toml --features burn-021 --bin burn_writer_bench
cargo build --release --locked --manifest-path rust/burn-compat/Cargo.toml --features burn-022 --bin burn_q8_bench

echo "== pytest (with the Burn compatibility checks)"
export HEARTMULA_BURN_COMPAT=1 HEARTMULA_REQUIRE_TORCH=1
(cd tests && "$venv/bin/python" -m pytest -q -p no:cacheprovider .)  # tests/: the installed package is imported

echo "== fuzzing the safetensors and .bpk parsers (${FUZZ_SECONDS:-60}s a target)"
PYTHON="$venv/bin/python" bash rust/core/fuzz/run.sh "${FUZZ_SECONDS:-60}"
