#!/usr/bin/env bash
# The aarch64 wheel, run: an aarch64 CPython (Debian's arm64 packages, unpacked into a folder) under
# qemu-user, with the wheel and its dependencies (PyPI's aarch64 wheels) installed beside it, makes a
# synthetic checkpoint, packs it (F32 and BF16) and verifies the packs; they must be byte for byte the
# packs the x86_64 wheel writes from the same checkpoint.
#
#   bash tests/wheel_smoke_aarch64.sh AARCH64_WHEEL X86_64_PYTHON
#
# X86_64_PYTHON is an interpreter with this machine's wheel installed (the reference packs). Needs
# root for apt (qemu-user and the arm64 package lists); Debian's and PyPI's registries.
set -euo pipefail
wheel=$(realpath "${1:?usage: $0 AARCH64_WHEEL X86_64_PYTHON}")
native=$(realpath -s "${2:?usage: $0 AARCH64_WHEEL X86_64_PYTHON}")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

if ! command -v qemu-aarch64 >/dev/null || ! dpkg --print-foreign-architectures | grep -qx arm64; then
    echo "== installing qemu-user and the arm64 package lists"
    dpkg --add-architecture arm64
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-user >/dev/null
fi

echo "== an aarch64 CPython from Debian's arm64 packages"
(
    cd "$work"
    # python3.11 and the libraries its standard library loads (libpython3.11-stdlib's Depends).
    apt-get download -qq python3.11-minimal:arm64 libpython3.11-minimal:arm64 libpython3.11-stdlib:arm64 \
        libc6:arm64 libexpat1:arm64 zlib1g:arm64 libffi8:arm64 libssl3:arm64 libbz2-1.0:arm64 liblzma5:arm64 \
        libgcc-s1:arm64 libstdc++6:arm64 libsqlite3-0:arm64 libncursesw6:arm64 libtinfo6:arm64 \
        libreadline8:arm64 libuuid1:arm64 libcrypt1:arm64 libnsl2:arm64 libtirpc3:arm64 libdb5.3:arm64 2>/dev/null
    for deb in ./*.deb; do dpkg -x "$deb" root; done
)
PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --disable-pip-version-check --target "$work/site" --platform manylinux2014_aarch64 --python-version 3.11 \
    --implementation cp --only-binary=:all: "$wheel"
arm() { qemu-aarch64 -L "$work/root" -E PYTHONPATH="$work/site" "$work/root/usr/bin/python3.11" "$@"; }
arm -c 'import platform, heartmula_burn; assert platform.machine() == "aarch64"; print("aarch64", heartmula_burn.__version__)'

echo "== synthetic, pack (F32, BF16) and verify under qemu-aarch64"
cd "$work"
arm -m heartmula_burn synthetic ckpt
for dtype in f32 bf16; do
    arm -m heartmula_burn pack ckpt -o "arm-$dtype/" --dtype "$dtype" -q
    arm -m heartmula_burn verify "arm-$dtype/heartmula.bpk" --against ckpt
    "$native" -m heartmula_burn pack ckpt -o "x86-$dtype/" --dtype "$dtype" -q
    for pack in heartmula.bpk heartcodec.bpk; do
        cmp "arm-$dtype/$pack" "x86-$dtype/$pack"
    done
done
echo "aarch64 wheel: ok (packs byte-identical to the $(uname -m) wheel's)"
