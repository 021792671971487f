#!/usr/bin/env python3
"""Times `pack --hub --stream` against downloading the same files alone with huggingface_hub and
against `pack --hub` (download into the cache, then pack), on the test Hub server
(tests/hub_server.py) serving synthetic checkpoints over loopback HTTP.

Cases (--cases, comma-separated):
  download   huggingface_hub alone: `snapshot_download` of the three repositories at once (one
             thread each; each downloads its files in parallel), the files `pack --hub` fetches
  pack-hub   `heartmula_burn pack --hub`: the same download into the cache, checked, then packed
  stream     `heartmula_burn pack --hub --stream`: the shards read in ranges straight into the packs
  resume     the same, killed (SIGKILL) once the server has sent half the shard bytes, then run
             again: the row is the rerun (its wall time, and the shard bytes it fetched)

Every case starts from an empty cache and output folder, in a fresh process. Runs alternate the
cases so that drift hits them alike; the table shows medians, each case's ratio to download, and
the shard bytes the server sent for it (its own count).

Two settings:
  default    the tiny synthetic checkpoint, each connection throttled to --rate bytes/s (the server
             sleeps between chunks), so that the transfer sets the pace as on a real link
  --full     the full-size synthetic LM (15.75 GB, 4 shards; the codec stays tiny), loopback with no
             throttle: wall time, peak RSS and the disk in use at the peak (cache + output)

    python benchmarks/bench_stream.py [--runs 5] [--rate 262144] [--json out.json]
    python benchmarks/bench_stream.py --full --workdir /path/with/50GB/free [--runs 1]

Needs huggingface_hub (pip install '.[hub]'). Peak RSS is the child's VmHWM polled from /proc; disk
is the allocated blocks of every file under the case's cache and output, polled every 50 ms."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_pack import run_child
from heartmula_burn._synthetic import write_synthetic_checkpoint
from hub_server import HubServer

LM, CODEC, GEN = "HeartMuLa/HeartMuLa-oss-3B", "HeartMuLa/HeartCodec-oss", "HeartMuLa/HeartMuLaGen"
CASES = ("download", "pack-hub", "stream", "resume")
MODEL_PATTERNS = ["config.json", "*.safetensors", "*.safetensors.index.json"]
DOWNLOAD = """
import sys, threading
from huggingface_hub import snapshot_download
repos = [("{lm}", {models}), ("{codec}", {models}), ("{gen}", ["tokenizer.json", "gen_config.json"])]
errors = []
def fetch(repo, patterns):
    try:
        snapshot_download(repo, allow_patterns=patterns)
    except BaseException as e:
        errors.append(e)
threads = [threading.Thread(target=fetch, args=r) for r in repos]
for t in threads: t.start()
for t in threads: t.join()
sys.exit(1 if errors else 0)
"""


def files_of(folder: Path) -> dict[str, Path]:
    return {p.name: p for p in sorted(folder.iterdir()) if p.is_file()}


def disk_in_use(folders: list[Path]) -> int:
    total = 0
    for folder in folders:
        for dirpath, _, names in os.walk(folder):
            for name in names:
                try:
                    total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
                except OSError:
                    pass
    return total


class DiskPeak:
    """The most disk the files under `folders` took while the block ran."""

    def __init__(self, folders: list[Path]) -> None:
        self.folders, self.peak, self._stop = folders, 0, threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, disk_in_use(self.folders))

    def __enter__(self) -> DiskPeak:  # noqa: PYI034 - no typing.Self before Python 3.11
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, disk_in_use(self.folders))


def shard_bytes_sent(server: HubServer) -> int:
    return sum(n for path, n in server.body_bytes.items() if path.endswith(".safetensors"))


def kill_at_half(cmd: list[str], server: HubServer, shard_bytes: int) -> float:
    """Runs `cmd` until the server has sent half the shard bytes, then SIGKILLs it; the seconds
    it ran. Returns once the server's side of the cut transfers has ended."""
    before, started = shard_bytes_sent(server), time.perf_counter()
    with subprocess.Popen(cmd, stdout=subprocess.DEVNULL) as proc:
        while shard_bytes_sent(server) - before < shard_bytes // 2:
            if proc.poll() is not None:
                sys.exit("bench: the stream ended before half of it")
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    ran = time.perf_counter() - started
    while server.open_bodies:
        time.sleep(0.05)
    return ran


def run_case(case: str, server: HubServer, work: Path, shard_bytes: int) -> dict:
    cache, out = work / "cache", work / "out"
    for folder in (cache, out):
        shutil.rmtree(folder, ignore_errors=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(
        HF_ENDPOINT=server.url,
        HF_HOME=str(work / "hf-home"),
        HF_HUB_CACHE=str(cache),
        HF_HUB_DISABLE_XET="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
    )
    if case == "download":
        code = DOWNLOAD.format(lm=LM, codec=CODEC, gen=GEN, models=MODEL_PATTERNS)
        cmd = [sys.executable, "-c", code]
    else:
        cmd = [sys.executable, "-m", "heartmula_burn", "pack", "--hub", "-o", f"{out}/", "-q", "--json"]
        cmd += ["--stream"] if case in ("stream", "resume") else []
    os.environ.update(env)  # run_child passes this process's environment on
    killed_after = kill_at_half(cmd, server, shard_bytes) if case == "resume" else None
    sent = shard_bytes_sent(server)
    with DiskPeak([cache, out]) as disk:
        wall, rss, stdout = run_child(cmd)
    result = {"case": case, "seconds": wall, "peak_rss": rss, "peak_disk": disk.peak}
    result["shard_bytes_fetched"] = shard_bytes_sent(server) - sent
    if killed_after is not None:
        result["killed_after_seconds"] = killed_after
    if case in ("stream", "resume"):
        result["streamed"] = json.loads(stdout)["streamed"]
    for folder in (cache, out):
        shutil.rmtree(folder, ignore_errors=True)
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path("bench-work"), help="scratch folder (default ./bench-work)")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, from: {', '.join(CASES)}")
    ap.add_argument("--rate", type=int, default=256 << 10, help="bytes/s per connection (default 262144; 0: none)")
    ap.add_argument("--full", action="store_true", help="the full-size LM over loopback, no throttle")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    cases = [c for c in args.cases.split(",") if c]
    if unknown := [c for c in cases if c not in CASES]:
        ap.error(f"unknown cases {unknown}")
    work = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    tiny = work / "tiny"
    if not (tiny / "HeartCodec-oss").is_dir():
        write_synthetic_checkpoint(tiny, models=("heartmula", "heartcodec"))
    lm_folder = tiny / "HeartMuLa-oss-3B"
    if args.full:
        full = work / "full"
        if not (full / "HeartMuLa-oss-3B").is_dir():
            print("writing the full-size synthetic LM ...", file=sys.stderr)
            write_synthetic_checkpoint(full, full=True, models=("heartmula",))
        lm_folder = full / "HeartMuLa-oss-3B"
    server = HubServer()
    server.start()
    server.add_repo(LM, files_of(lm_folder))
    server.add_repo(CODEC, files_of(tiny / "HeartCodec-oss"))
    server.add_repo(GEN, {name: tiny / name for name in ("tokenizer.json", "gen_config.json")})
    server.slow_bytes_per_s = None if args.full or not args.rate else args.rate
    shard_bytes = sum(
        p.stat().st_size for p in [*lm_folder.glob("*.safetensors"), *(tiny / "HeartCodec-oss").glob("*.safetensors")]
    )
    setting = "loopback, full-size LM" if args.full else f"throttled to {args.rate} B/s per connection, tiny checkpoint"
    print(f"{setting}: {shard_bytes:,} shard bytes, {args.runs} runs of {', '.join(cases)}", file=sys.stderr)
    results: dict[str, list[dict]] = {c: [] for c in cases}
    try:
        for run in range(args.runs):
            for case in cases if run % 2 == 0 else reversed(cases):
                r = run_case(case, server, work, shard_bytes)
                results[case].append(r)
                print(f"  run {run + 1} {case:9} {r['seconds']:7.2f} s", file=sys.stderr)
    finally:
        server.stop()
    base = statistics.median(r["seconds"] for r in results["download"]) if "download" in results else None
    print(f"\n{setting}; medians of {args.runs} runs\n")
    print("| case | wall s | x download | peak RSS MiB | peak disk MB | shard bytes fetched |")
    print("|---|---|---|---|---|---|")
    summary = {}
    for case, runs in results.items():
        wall = statistics.median(r["seconds"] for r in runs)
        rss = statistics.median(r["peak_rss"] for r in runs) / 2**20
        disk = statistics.median(r["peak_disk"] for r in runs) / 1e6
        fetched = statistics.median(r["shard_bytes_fetched"] for r in runs)
        ratio = f"{wall / base:.3f}" if base else "-"
        print(f"| {case} | {wall:.2f} | {ratio} | {rss:.1f} | {disk:.1f} | {fetched / shard_bytes:.1%} |")
        summary[case] = {"median_seconds": wall, "median_peak_rss_mib": rss, "median_peak_disk_mb": disk, "runs": runs}
    if "resume" in results:
        killed = statistics.median(r["killed_after_seconds"] for r in results["resume"])
        print(f"\nresume: killed after a median {killed:.2f} s, at half the shard bytes sent; the row is the rerun")
    if args.json:
        args.json.write_text(json.dumps({"setting": setting, "shard_bytes": shard_bytes, "cases": summary}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
