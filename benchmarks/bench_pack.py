#!/usr/bin/env python3
"""Times `heartmula_burn pack` against the copy floor (`cat shards > out; sync out`) side by side,
on a full-size synthetic HeartMuLa checkpoint (real shapes, F32, 4 shards, 15.75 GB).

Runs alternate (floor, pack, floor, pack, ...) so that drift on a noisy machine hits both alike.
Reports the median wall time of each, their ratio, throughput and the pack's peak RSS.

    python benchmarks/bench_pack.py --workdir /path/with/40GB/free [--runs 3] [--cases f32,bf16]

The checkpoint is generated once into WORKDIR/ckpt and reused by later runs (--regenerate to redo).
Needs about 2x the checkpoint size free (checkpoint + one output at a time)."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path


def timed(cmd: list[str]) -> tuple[float, int]:
    """Wall seconds and peak RSS (bytes) of one child process.

    Peak RSS is the child's own VmHWM polled from /proc: `ru_maxrss` from wait4 would carry over
    the high-water mark of this (forking) Python process across exec."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd)
    peak = 0
    status_path = f"/proc/{proc.pid}/status"
    while proc.poll() is None:
        try:
            with open(status_path) as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        peak = max(peak, int(line.split()[1]) * 1024)
        except (FileNotFoundError, ProcessLookupError, ValueError):
            pass
        time.sleep(0.02)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"bench: {' '.join(cmd)} failed")
    return wall, peak


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path("bench-work"), help="scratch folder (default ./bench-work)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--cases", default="f32", help="comma-separated pack dtypes to time: f32, bf16, f16")
    ap.add_argument("--regenerate", action="store_true")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()

    from heartmula_burn.synthetic import write_synthetic_checkpoint

    ckpt = args.workdir / "ckpt"
    model = ckpt / "HeartMuLa-oss-3B"
    if args.regenerate and ckpt.exists():
        shutil.rmtree(ckpt)
    if not (model / "model.safetensors.index.json").exists():
        print(f"generating full-size synthetic checkpoint in {ckpt} ...", file=sys.stderr)
        t = time.perf_counter()
        write_synthetic_checkpoint(ckpt, full=True)
        print(f"  done in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    shards = sorted(str(p) for p in model.glob("*.safetensors"))
    total = sum(os.path.getsize(p) for p in shards)
    out = args.workdir / "out.bin"
    pack_out = args.workdir / "heartmula.bpk"

    floor_cmd = ["sh", "-c", f'cat {" ".join(shards)} > "{out}" && sync "{out}"']
    results: dict[str, list[tuple[float, int]]] = {"cat+sync": []}
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    for case in cases:
        results[f"pack {case}"] = []
    for run in range(args.runs):
        for name in results:
            for p in (out, pack_out):
                p.unlink(missing_ok=True)
            if name == "cat+sync":
                cmd = floor_cmd
            else:
                dtype = name.split()[1]
                cmd = [sys.executable, "-m", "heartmula_burn", "pack", str(ckpt), "-o", str(pack_out),
                       "--dtype", dtype, "--no-extras", "-q"]
            wall, rss = timed(cmd)
            results[name].append((wall, rss))
            print(f"run {run + 1} {name:>10}: {wall:6.2f} s  peak RSS {rss / 2**20:7.1f} MiB", file=sys.stderr)
    for p in (out, pack_out):
        p.unlink(missing_ok=True)

    floor = statistics.median(w for w, _ in results["cat+sync"])
    report = {"checkpoint_bytes": total, "runs": args.runs, "cases": {}}
    print(f"\ncheckpoint: {total:,} bytes in {len(shards)} shards; {args.runs} runs each, medians")
    print(f"{'case':>10}  {'median s':>8}  {'x floor':>7}  {'GB/s':>5}  {'peak RSS MiB':>12}")
    for name, samples in results.items():
        med = statistics.median(w for w, _ in samples)
        rss = max(r for _, r in samples)
        report["cases"][name] = {"walls": [w for w, _ in samples], "median": med, "ratio": med / floor,
                                 "gb_per_s": total / med / 1e9, "peak_rss": rss}
        print(f"{name:>10}  {med:8.2f}  {med / floor:7.3f}  {total / med / 1e9:5.2f}  {rss / 2**20:12.1f}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
