#!/usr/bin/env bash
# Runs every fuzz target for a bounded time (default 60 s each; FUZZ_SECONDS or $1 to change),
# starting from seeds made by the package itself. Exits non-zero on any finding (libFuzzer keeps
# the crashing input under fuzz/artifacts/<target>/), when the fuzzer itself fails, and when a
# target ran fewer inputs than asked: FUZZ_RUNS=N asks for N executions (within the time limit),
# otherwise at least FUZZ_MIN_RUNS (default 10000; a minute gives millions) prove that it ran.
#
#   PYTHON=.venv/bin/python bash rust/core/fuzz/run.sh 600     # ten minutes a target
#   FUZZ_RUNS=200000 bash rust/core/fuzz/run.sh 120            # 200000 inputs a target, in 2 min
set -euo pipefail
python=${PYTHON:-python3}
[[ $python == */* ]] && python="$(cd "$(dirname "$python")" && pwd)/$(basename "$python")"  # keep venv links
cd "$(dirname "${BASH_SOURCE[0]}")"
seconds=${1:-${FUZZ_SECONDS:-60}}
runs=${FUZZ_RUNS:-}
min_runs=${FUZZ_RUNS:-${FUZZ_MIN_RUNS:-10000}}
[[ $seconds =~ ^[1-9][0-9]*$ && $min_runs =~ ^[0-9]+$ ]] || { echo "fuzz: bad time or run count" >&2; exit 2; }

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
from heartmula_burn._synthetic import write_safetensors

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
    echo "== fuzzing $target for ${seconds}s${runs:+ (asked: $runs runs)}"
    cargo fuzz build -O "$target" 2>&1 | tail -1
    log="$seeds/$target.log"
    status=0
    cargo fuzz run -O "$target" "$seeds/$target" -- -max_total_time="$seconds" ${runs:+-runs="$runs"} \
        -print_final_stats=1 >"$log" 2>&1 || status=$?
    grep -E "^Done|stat::number_of_executed_units|ERROR|panicked|SUMMARY" "$log" || true
    # A finding shows as a non-zero exit and a file under artifacts/; check both, so that neither a
    # crash of the fuzzer nor a filtered log can pass for a clean run.
    if compgen -G "artifacts/$target/*" >/dev/null; then
        echo "fuzz: finding in $target: $(ls artifacts/$target)" >&2
        exit 1
    fi
    if ((status != 0)); then
        echo "fuzz: $target: the fuzzer exited with status $status; its last lines:" >&2
        tail -n 20 "$log" >&2
        exit 1
    fi
    # libFuzzer's own count (-print_final_stats), else its closing "Done N runs in S second(s)".
    executed=$(sed -n 's/^stat::number_of_executed_units: *\([0-9][0-9]*\).*/\1/p' "$log" | tail -n 1)
    [[ -n $executed ]] || executed=$(sed -n 's/^Done \([0-9][0-9]*\) runs in .*/\1/p' "$log" | tail -n 1)
    if [[ -z $executed ]]; then
        echo "fuzz: $target: no count of executed inputs in the fuzzer's output; its last lines:" >&2
        tail -n 20 "$log" >&2
        exit 1
    fi
    if ((executed < min_runs)); then
        echo "fuzz: $target: $executed inputs executed, fewer than the $min_runs asked" >&2
        exit 1
    fi
    echo "fuzz: $target: $executed inputs, no finding"
done
