#!/usr/bin/env bash
# The project's whole test suite, from a clean checkout: builds the wheel into a local virtual
# environment, then runs the Rust core's tests and the Python tests (which drive the real CLI).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

python=${PYTHON:-python3}
venv=$(realpath -m "${VENV:-.venv}")
if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --upgrade pip
echo "== building and installing the package (maturin, release build), with torch and torchtune for the sanity tests"
# PyPI's Linux torch wheel (with its CUDA libraries) runs on the CPU too: about 5 GB, 2 minutes.
"$venv/bin/python" -m pip install --quiet ".[test,sanity,crosscheck]"

echo "== cargo test (Rust core)"
cargo test --locked

# The real Burn crates, one release per build: 0.21.0 (what runtimes use today) and 0.22.1 (newest stable).
for burn in burn-021 burn-022; do
    echo "== building the Burn compatibility checks ($burn)"
    cargo test --release --locked --no-run --manifest-path rust/burn-compat/Cargo.toml --features "$burn"
done
# Burn's own writer as a benchmark baseline (its output is tested to equal ours byte for byte).
cargo build --release --locked --manifest-path rust/burn-compat/Cargo.toml --features burn-021 --bin burn_writer_bench

echo "== pytest (with the Burn compatibility checks)"
export HEARTMULA_BURN_COMPAT=1 HEARTMULA_REQUIRE_TORCH=1
cd tests  # so that `import heartmula_burn` resolves to the installed package
"$venv/bin/python" -m pytest -q -p no:cacheprovider .

echo "== fuzzing the safetensors and .bpk parsers (${FUZZ_SECONDS:-60}s a target)"
cd ..
PYTHON="$venv/bin/python" bash rust/core/fuzz/run.sh "${FUZZ_SECONDS:-60}"
