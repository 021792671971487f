#!/usr/bin/env bash
# Installs a built wheel into a fresh virtual environment whose PATH holds no Rust toolchain, and
# packs, inspects and verifies a synthetic checkpoint with it: what a user without Rust gets.
#
#   bash tests/wheel_smoke.sh target/dist/heartmula_burn-*.whl
set -euo pipefail
wheel=$(realpath "${1:?usage: $0 WHEEL}")
python=$(command -v "${PYTHON:-python3}")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

"$python" -m venv "$work/venv"
"$work/venv/bin/python" -m pip install --quiet "$wheel"

# Only the environment's own bin and the system's: no ~/.cargo/bin.
env -i HOME="$HOME" PATH="$work/venv/bin:/usr/bin:/bin" LANG=C.UTF-8 bash -euo pipefail -c '
    cd "$1"
    for tool in cargo rustc; do
        if command -v "$tool" >/dev/null; then
            echo "wheel_smoke: $tool is on PATH ($(command -v "$tool")); this check needs it gone" >&2
            exit 1
        fi
    done
    python -c "import heartmula_burn._core as core; print(\"installed\", core.__file__)"
    python -m heartmula_burn synthetic ckpt
    mkdir out
    python -m heartmula_burn pack ckpt -o out/heartmula.bpk -q
    python -m heartmula_burn inspect out/heartmula.bpk | head -3
    python -m heartmula_burn verify out/heartmula.bpk --against ckpt
    ls out
' smoke "$work"
echo "wheel_smoke: ok"
