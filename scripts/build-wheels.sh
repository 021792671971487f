#!/usr/bin/env bash
# Builds the release artifacts of heartmula-burn into OUT_DIR and checks them:
#   - an abi3 wheel (CPython 3.9+) for glibc 2.17 and later (manylinux2014: RHEL 7/8, Ubuntu 18.04+),
#     linked with zig so that the build machine's newer glibc cannot leak into it;
#   - the same for aarch64 (Grace CPUs of GH200/GB200 GPU servers, ARM cloud instances), cross-built
#     by zig, when rustup has (or can install) the aarch64-unknown-linux-gnu standard library;
#   - the sdist, which builds anywhere with a Rust toolchain.
# `auditwheel show` must report the manylinux_2_17 tag of each wheel's architecture, and `twine check`
# must pass.
#
#   scripts/build-wheels.sh dist/
#
# The tools (maturin with ziglang, auditwheel, twine) are installed into a virtual environment of
# their own under target/ the first time; $PYTHON picks the interpreter that creates it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [ $# -ne 1 ] || [ "$1" = "-h" ] || [ "$1" = "--help" ]; then
    echo "usage: $0 OUT_DIR   (writes the manylinux2014 abi3 wheel and the sdist there)" >&2
    [ $# -eq 1 ] && exit 0 || exit 2
fi
out=$(realpath -m "$1")
tools=$(realpath -m "${WHEEL_TOOLS:-target/wheel-tools}")
python=${PYTHON:-python3}

if [ ! -x "$tools/bin/maturin" ] || [ ! -x "$tools/bin/auditwheel" ]; then
    echo "== installing the build tools into $tools"
    "$python" -m venv "$tools"
    "$tools/bin/python" -m pip install --quiet --upgrade pip
    "$tools/bin/python" -m pip install --quiet "maturin[zig]>=1.9,<2" "auditwheel>=6" "twine>=5"
fi
export PATH="$tools/bin:$PATH"  # maturin runs zig as `python -m ziglang` from this environment

mkdir -p "$out"
rm -f "$out"/heartmula_burn-*.whl "$out"/heartmula_burn-*.tar.gz
echo "== building the wheel (manylinux2014 through zig)"
maturin build --release --locked --zig --compatibility manylinux2014 --out "$out"
cross=aarch64-unknown-linux-gnu
if [ "$(uname -m)" = x86_64 ] && { rustup target list --installed | grep -qx "$cross" || rustup target add "$cross"; }; then
    echo "== building the aarch64 wheel (manylinux2014 through zig)"
    maturin build --release --locked --zig --compatibility manylinux2014 --target "$cross" --out "$out"
else
    echo "== no aarch64 wheel: rustup cannot provide the $cross standard library here" >&2
fi
echo "== building the sdist"
maturin sdist --out "$out"

sdist=$(ls "$out"/heartmula_burn-*.tar.gz)
for wheel in "$out"/heartmula_burn-*.whl; do
    arch=$(sed -E 's/.*manylinux_2_17_([a-z0-9_]+)\.whl$/\1/' <<<"$wheel")
    echo "== auditwheel show ($arch)"
    report=$(auditwheel show "$wheel")
    echo "$report"
    if ! grep -q "manylinux_2_17_$arch" <<<"$report"; then
        echo "build-wheels: $wheel is not manylinux_2_17_$arch (see above)" >&2
        exit 1
    fi
done
echo "== twine check"
twine check --strict "$out"/heartmula_burn-*.whl "$sdist"
ls -l "$out"/heartmula_burn-*.whl "$sdist"
