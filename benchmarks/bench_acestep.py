#!/usr/bin/env python3
"""Times `heartmula_burn pack --model acestep-turbo` (the 0.6B planner) against the copy floor, side
by side, on a synthetic ACE-Step 1.5 checkpoint at the released shapes (BF16 upstream files,
7.65 GB; the folder written is 14.5 GB of F32).

Cases, alternated run by run so that drift on a noisy machine hits them alike (medians shown):
  copy-floor   every upstream weight file the folder is made from, read and written twice over into
               one file (`cat a a b b ... > out`: as many bytes written as the F32 folder holds,
               each input read), then fsync: the disk work no converter can avoid
  pack         `pack CKPT_ROOT --model acestep-turbo -o OUT/`: checks, widening, six packs, JSON
               files, everything fsynced and put in place

Inputs are warm (read once before each case, untimed). Peak RSS is the child's VmHWM from /proc.

    python benchmarks/bench_acestep.py --workdir /path/with/25GB/free [--runs 2] [--tiny] [--json out.json]

--tiny runs the same on the tiny synthetic checkpoint the tests use (seconds; checks the script).
The checkpoint is written once into WORKDIR/ckpt and kept; the outputs are removed after each run."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

from bench_pack import run_child, warm_inputs

TURBO_FOLDERS = (
    "Ace-Step1.5/acestep-v15-turbo",
    "Ace-Step1.5/vae",
    "Ace-Step1.5/Qwen3-Embedding-0.6B",
    "acestep-5Hz-lm-0.6B",
)


def checkpoint(workdir: Path, tiny: bool) -> Path:
    root = workdir / ("ckpt-tiny" if tiny else "ckpt")
    done = root / ".complete"
    if not done.exists():
        from heartmula_burn._presets.acestep.synthetic import write_checkpoint

        shutil.rmtree(root, ignore_errors=True)
        write_checkpoint(root, full=not tiny, folders=TURBO_FOLDERS)
        done.write_text("")
    return root


def weight_files(root: Path) -> list[str]:
    return sorted(str(p) for folder in TURBO_FOLDERS for p in (root / folder).glob("*.safetensors"))


def copy_floor(inputs: list[str], out: Path) -> None:
    with open(out, "wb") as f:
        for path in inputs:
            for _ in range(2):
                subprocess.run(["cat", path], stdout=f, check=True)
        f.flush()
        os.fsync(f.fileno())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    root = checkpoint(args.workdir, args.tiny)
    inputs = weight_files(root)
    input_bytes = sum(os.path.getsize(p) for p in inputs)
    times: dict[str, list[float]] = {"copy-floor": [], "pack": []}
    peaks: dict[str, list[int]] = {"copy-floor": [], "pack": []}
    written = 0
    for run in range(args.runs):
        for case in ("copy-floor", "pack"):
            out = args.workdir / "out"
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir()
            warm_inputs(inputs)
            if case == "copy-floor":
                cmd = [
                    sys.executable,
                    "-c",
                    f"import bench_acestep as b; b.copy_floor({inputs!r}, {str(out / 'all')!r})",
                ]
            else:
                cmd = [sys.executable, "-m", "heartmula_burn", "pack", str(root), "--model", "acestep-turbo"]
                cmd += ["-o", f"{out}/", "-q"]
            wall, peak, _ = run_child(cmd)
            size = sum(p.stat().st_size for p in out.iterdir())
            if case == "pack":
                written = size
            times[case].append(wall)
            peaks[case].append(peak)
            print(f"run {run + 1} {case}: {wall:.2f} s, peak RSS {peak / 2**20:.1f} MiB, {size:,} bytes", flush=True)
            shutil.rmtree(out)
    floor = statistics.median(times["copy-floor"])
    rows = []
    for case in ("copy-floor", "pack"):
        med = statistics.median(times[case])
        rows.append(
            {
                "case": case,
                "median_seconds": med,
                "x_floor": med / floor,
                "peak_rss_mib": max(peaks[case]) / 2**20,
                "runs": times[case],
            }
        )
    print(f"\ninputs {input_bytes:,} bytes (BF16), folder written {written:,} bytes (F32), medians of {args.runs}")
    print(f"{'case':<12} {'wall s':>8} {'x floor':>8} {'peak RSS MiB':>13}")
    for r in rows:
        print(f"{r['case']:<12} {r['median_seconds']:>8.2f} {r['x_floor']:>8.3f} {r['peak_rss_mib']:>13.1f}")
    if args.json:
        args.json.write_text(json.dumps({"input_bytes": input_bytes, "written_bytes": written, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
