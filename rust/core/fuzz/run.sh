#!/usr/bin/env bash
# Runs every fuzz target for a bounded time (default 60 s each; FUZZ_SECONDS or $1 to change),
# starting from seeds made by the package itself. Exits non-zero on any finding; libFuzzer keeps
# the crashing input under fuzz/artifacts/<target>/.
#
#   PYTHON=.venv/bin/python bash rust/core/fuzz/run.sh 600     # ten minutes a target
set -euo pipefail
python=${PYTHON:-python3}
[[ $python == */* ]] && python="$(cd "$(dirname "$python")" && pwd)/$(basename "$python")"  # keep venv links
cd "$(dirname "${BASH_SOURCE[0]}")"
seconds=${1:-${FUZZ_SECONDS:-60}}

command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked --version 0.13.2
# cargo-fuzz passes unstable -Z flags (sanitizer instrumentation); the stable toolchain takes
# them with RUSTC_BOOTSTRAP=1. Only this fuzz build sees it.
export RUSTC_BOOTSTRAP=1

seeds=$(mktemp -d)
trap 'rm -rf "$seeds"' EXIT
"$python" - "$seeds" <<'PY'
import sys, subprocess, pathlib
import numpy as np
from safetensors.numpy import save_file
from heartmula_burn.synthetic import write_safetensors

out = pathlib.Path(sys.argv[1])
(out / "pack_index").mkdir(); (out / "safetensors_header").mkdir()
save_file({"w": np.arange(6, dtype="<f4").reshape(2, 3), "m": np.array([True, False])}, str(out / "safetensors_header" / "a.safetensors"))
write_safetensors(out / "safetensors_header" / "b.safetensors", {"x": (2,), "y": (1, 3)}, "BF16", 0, False)
np.save(out / "safetensors_header" / "c.npy", np.ones((2, 2), "<f2"))
for i, burn in enumerate(["0.21", "0.19"]):
    subprocess.run([sys.executable, "-m", "heartmula_burn", "pack", out / "safetensors_header" / "a.safetensors",
                    "--any-model", "--no-extras", "-q", "--burn-version", burn, "-o", out / "pack_index" / f"{i}.bpk"], check=True)
PY

for target in pack_index safetensors_header; do
    echo "== fuzzing $target for ${seconds}s"
    cargo fuzz build -O "$target" 2>&1 | tail -1
    cargo fuzz run -O "$target" "$seeds/$target" -- -max_total_time="$seconds" -print_final_stats=1 2>&1 \
        | grep -E "^Done|stat::number_of_executed_units|ERROR|panicked|SUMMARY" || true
    # cargo fuzz run exits non-zero on a finding; re-check artifacts so a filtered pipe cannot hide it.
    if compgen -G "artifacts/$target/*" >/dev/null; then
        echo "fuzz: finding in $target: $(ls artifacts/$target)" >&2
        exit 1
    fi
done
