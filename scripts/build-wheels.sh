#!/usr/bin/env bash
# Builds the release artifacts of heartmula-burn into OUT_DIR and checks them:
#   - an abi3 wheel (CPython 3.9+) for glibc 2.17 and later (manylinux2014: RHEL 7/8, Ubuntu 18.04+),
#     linked with zig so that the build machine's newer glibc cannot leak into it;
#   - the sdist, which builds anywhere with a Rust toolchain.
# `auditwheel show` must report the manylinux_2_17 tag, and `twine check` must pass.
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
echo "== building the sdist"
maturin sdist --out "$out"

wheel=$(ls "$out"/heartmula_burn-*.whl)
sdist=$(ls "$out"/heartmula_burn-*.tar.gz)
echo "== auditwheel show"
report=$(auditwheel show "$wheel")
echo "$report"
if ! grep -q "manylinux_2_17_$(uname -m)" <<<"$report"; then
    echo "build-wheels: $wheel is not manylinux_2_17 (see above)" >&2
    exit 1
fi
echo "== twine check"
twine check --strict "$wheel" "$sdist"
ls -l "$wheel" "$sdist"
