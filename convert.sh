#!/usr/bin/env bash
# One step from an upstream checkpoint folder to the folder a Burn HeartMuLa runtime loads.
#
#   ./convert.sh CKPT_ROOT [extra pack options, e.g. --dtype bf16 --force]
#   ./convert.sh --hub [extra pack options, e.g. --ckpt-root ckpt/ --lm-revision REV]
#   ./convert.sh --hub --stream [...]   (the shards read from the Hub straight into the packs, never stored)
#
# With --hub the checkpoint is downloaded from the Hugging Face Hub first (HeartMuLa/HeartMuLa-oss-3B,
# HeartMuLa/HeartCodec-oss, HeartMuLa/HeartMuLaGen; needs `pip install '.[hub]'`).
# CKPT_ROOT holds HeartMuLa-oss-3B/ and HeartCodec-oss/ (or HeartCodec-oss-20260123/) beside
# tokenizer.json and gen_config.json, as upstream ships them. Writes heartmula.bpk, heartcodec.bpk,
# tokenizer.json and gen_config.json at the repository root (or in $HEARTMULA_OUT_DIR). All four
# appear together once complete: on failure or Ctrl-C the folder is as it was.
#
#   ./convert.sh CKPT_ROOT --model acestep-turbo [--planner all]   (or acestep-sft; --hub works too)
#
# writes ACE-Step 1.5's runtime folder (six packs, six JSON files) into acestep/ at the repository
# root (or into $HEARTMULA_OUT_DIR), CKPT_ROOT laid out as `download --model NAME` lays it out.
# Needs the package installed (`pip install .`); $PYTHON picks the interpreter.
set -euo pipefail

if [ $# -lt 1 ] || [ "$1" = "-h" ] || [ "$1" = "--help" ]; then
    echo "usage: $0 CKPT_ROOT|--hub [pack options...]   (writes heartmula.bpk, heartcodec.bpk, tokenizer.json, gen_config.json)" >&2
    [ $# -ge 1 ] && exit 0 || exit 2
fi

ckpt_root=$1
shift
out_dir=${HEARTMULA_OUT_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)}
python=${PYTHON:-python3}

if ! "$python" -c "import heartmula_burn" 2>/dev/null; then
    echo "convert.sh: heartmula_burn is not installed for $python; run 'pip install .' first" >&2
    exit 1
fi

for arg in "$@"; do
    if [ "$arg" = --model ] || [ "${arg#--model=}" != "$arg" ]; then
        # A model packed by name writes a folder of its own.
        exec "$python" -m heartmula_burn pack "$ckpt_root" -o "${HEARTMULA_OUT_DIR:-$out_dir/acestep}/" "$@"
    fi
done
exec "$python" -m heartmula_burn pack "$ckpt_root" -o "$out_dir/heartmula.bpk" "$@"
