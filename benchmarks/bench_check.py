#!/usr/bin/env python3
"""Times the check of fetched files against the Hub's digests (`heartmula_burn._hub.integrity`) side by
side with coreutils' `sha256sum` over the same files, on a Hugging Face cache snapshot laid out as
huggingface_hub lays it out (links into `blobs/` named by sha256).

Cases, alternating in each round so that drift hits them alike; the table shows medians:
  sha256sum        `sha256sum` of every blob, one after another (what a user would run by hand)
  check            `check_snapshot` with its default threads (one per core, at most 4)
  check-1-thread   `check_snapshot` with one thread
  check-marked     a second check of files already marked as checked (no hashing)

Every case reads warm files (the blobs are read once, untimed, before each case). The blobs are
written once (`--gb` in all, in files of at most 5 GB, as the HeartMuLa shards are) and deleted
afterwards.

    python benchmarks/bench_check.py --workdir /path/with/space [--gb 8] [--runs 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from heartmula_burn._hub.integrity import MARK, check_snapshot

CHUNK = 64 << 20


def make_snapshot(work: Path, gb: float) -> tuple[Path, list[str]]:
    """Blobs of pseudo-random bytes (hashing speed does not depend on content), linked from a snapshot."""
    repo = work / "models--bench--model"
    snapshot, blobs = repo / "snapshots" / ("0" * 40), repo / "blobs"
    snapshot.mkdir(parents=True)
    blobs.mkdir()
    block = os.urandom(CHUNK)
    total, names, i = int(gb * 1e9), [], 0
    while total > 0:
        size = min(total, 5_000_000_000)
        digest, tmp = hashlib.sha256(), blobs / "partial"
        with open(tmp, "wb") as f:
            left = size
            while left > 0:
                chunk = block[: min(left, CHUNK)]
                f.write(chunk)
                digest.update(chunk)
                left -= len(chunk)
        os.rename(tmp, blobs / digest.hexdigest())
        name = f"model-{i:05d}.safetensors"
        os.symlink(f"../../blobs/{digest.hexdigest()}", snapshot / name)
        names.append(name)
        total -= size
        i += 1
    return snapshot, names


def warm(snapshot: Path, names: list[str]) -> None:
    for name in names:
        with open(snapshot / name, "rb") as f:
            while f.read(CHUNK):
                pass


def unmark(snapshot: Path, names: list[str]) -> None:
    for name in names:
        try:
            os.removexattr((snapshot / name).resolve(), MARK)
        except OSError:
            pass


def timed(case: str, snapshot: Path, names: list[str]) -> float:
    if case != "check-marked":
        unmark(snapshot, names)
    warm(snapshot, names)
    start = time.perf_counter()
    if case == "sha256sum":
        subprocess.run(["sha256sum", *[(snapshot / n).resolve() for n in names]], check=True, capture_output=True)
    else:
        checked = check_snapshot("bench", snapshot, names, workers=1 if case == "check-1-thread" else 0)
        assert checked.files == len(names)
        assert (checked.hashed_files == 0) == (case == "check-marked"), checked
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--gb", type=float, default=8.0, help="bytes to hash, in GB (default 8)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    work = args.workdir / "bench-check"
    shutil.rmtree(work, ignore_errors=True)
    try:
        snapshot, names = make_snapshot(work, args.gb)
        size = sum((snapshot / n).stat().st_size for n in names)
        cases = ("sha256sum", "check", "check-1-thread", "check-marked")
        times: dict[str, list[float]] = {c: [] for c in cases}
        for _ in range(args.runs):
            for case in cases:
                times[case].append(timed(case, snapshot, names))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    base = statistics.median(times["sha256sum"])
    print(f"{size / 1e9:.2f} GB in {len(names)} files, {os.cpu_count()} cores, medians of {args.runs} runs")
    print("| case | wall | GB/s | x sha256sum |")
    print("| --- | --- | --- | --- |")
    for case in cases:
        med = statistics.median(times[case])
        rate = size / med / 1e9 if med > 0 else float("inf")
        print(f"| {case} | {med:.3f} s | {rate:.2f} | {med / base:.2f} |")
    if args.json:
        args.json.write_text(json.dumps({"bytes": size, "files": len(names), "times": times}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
