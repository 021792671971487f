#!/usr/bin/env python3
"""Times `heartmula_burn pack` against the copy floor and two other packers, side by side, on
full-size synthetic HeartMuLa checkpoints (real shapes, F32, 4 shards; 15.75 GB at full size).

Cases (--cases, comma-separated):
  cat+sync       the copy floor: `cat shards > out`, then `sync out` (fsync of the output)
  pack-f32       `heartmula_burn pack --dtype f32` (the default pack)
  pack-bf16      `heartmula_burn pack --dtype bf16`
  pack-q8        `heartmula_burn pack --dtype q8` (Linear weights Q8S block 32, the rest F32)
  base-pack-f32, base-pack-bf16, base-pack-q8
                 the same packs by another installed version (--baseline-python PYTHON): an
                 earlier build timed side by side with this one
  python-packer  benchmarks/python_packer.py: safetensors + torch, one tensor at a time (F32)
  burn-writer    Burn's own BurnpackWriter (burn-store 0.21) over mmap (F32); build it first:
                 cargo build --release --features burn-021 --bin burn_writer_bench \\
                     --manifest-path rust/burn-compat/Cargo.toml
  burn-q8        Burn 0.22.1's own Tensor::quantize_dynamic (Flex) and burn-pack Writer, one
                 deferred tensor at a time, on the q8 manifest; build it first:
                 cargo build --release --features burn-022 --bin burn_q8_bench \\
                     --manifest-path rust/burn-compat/Cargo.toml

Every case ends with its output flushed to disk. Runs alternate the cases (floor, pack, ...,
floor, pack, ...) so that drift on a noisy machine hits them alike; the table shows medians.

Page cache (--cache): `warm` reads the inputs once before each timed case (that read is not
timed); `cold` flushes and drops the inputs from the page cache before each case
(posix_fadvise(POSIX_FADV_DONTNEED) on each shard after sync, which needs no privileges; with
--drop-caches also `echo 1 > /proc/sys/vm/drop_caches` where that is permitted). How much of
the inputs was resident when each case started is measured with mincore (via fincore) when
available.

Models (--model): heartmula (default, 15.75 GB) or heartcodec (6.64 GB, HeartCodec-oss shapes;
packed in F32 only, so its cases are cat+sync, pack-f32 and the F32 baselines).

Scales (--scales): 1 is the full checkpoint (28 backbone layers); 0.25 and 0.5 scale it by
backbone layer count (7 and 14 layers: a custom flavour with the same dims). Embeddings and the
decoder do not scale, so the byte sizes are reported as measured (7.3 and 10.1 GB). Scaled
checkpoints are generated on demand and deleted after their runs unless --keep-scaled.

    python benchmarks/bench_pack.py --workdir /path/with/40GB/free \\
        [--runs 3] [--cases ...] [--cache warm|cold|both] [--scales 0.25,0.5,1] [--json out.json]

Needs the checkpoint plus one output free on disk (about 32 GB at full size; 42 GB with a
scaled checkpoint). Peak RSS is each child's own VmHWM polled from /proc (wait4's ru_maxrss
would carry over the high-water mark of this forking Python process across exec)."""

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

REPO = Path(__file__).resolve().parent.parent
BURN_WRITER = REPO / "rust" / "burn-compat" / "target" / "release" / "burn_writer_bench"
BURN_Q8 = REPO / "rust" / "burn-compat" / "target" / "release" / "burn_q8_bench"
ALL_CASES = (
    "cat+sync",
    "pack-f32",
    "pack-bf16",
    "pack-q8",
    "python-packer",
    "burn-writer",
    "burn-q8",
    "base-pack-f32",
    "base-pack-bf16",
    "base-pack-q8",
)
# The interpreter whose heartmula_burn the base-pack-* cases run (--baseline-python): an earlier
# version installed elsewhere, timed side by side with this one.
BASELINE_PYTHON: list[str] = []
FULL_LAYERS = 28


def run_child(cmd: list[str], stdout_path: Path | None = None) -> tuple[float, int, str]:
    """Wall seconds, peak RSS (bytes) and stdout of one child process."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
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
    out = proc.stdout.read() if proc.stdout else ""
    if proc.returncode != 0:
        sys.exit(f"bench: {' '.join(cmd)} failed")
    return wall, peak, out


def resident_bytes(paths: list[str]) -> int | None:
    """Bytes of these files in the page cache (mincore, via util-linux fincore), or None."""
    if not shutil.which("fincore"):
        return None
    proc = subprocess.run(
        ["fincore", "--bytes", "--noheadings", "--raw", "-o", "RES", *paths],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        return None
    return sum(int(x) for x in proc.stdout.split())


def drop_inputs(paths: list[str], drop_caches: bool) -> None:
    """Flush dirty pages, then drop the inputs from the page cache."""
    os.sync()
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    if drop_caches:
        try:
            with open("/proc/sys/vm/drop_caches", "w") as f:
                f.write("1\n")
        except OSError as e:
            print(f"  (drop_caches not permitted: {e}; fadvise only)", file=sys.stderr)


def warm_inputs(paths: list[str]) -> float:
    """Reads the inputs once so they sit in the page cache; returns the seconds it took."""
    t = time.perf_counter()
    for p in paths:
        with open(p, "rb", buffering=0) as f:
            while f.readinto(_buf):
                pass
    return time.perf_counter() - t


_buf = bytearray(16 << 20)


MODEL_FOLDERS = {"heartmula": "HeartMuLa-oss-3B", "heartcodec": "HeartCodec-oss"}


def checkpoint_for(workdir: Path, scale: float, regenerate: bool, tiny: bool, model: str) -> tuple[Path, Path, bool]:
    """(checkpoint root, its model folder, generated now and to be deleted after) for one scale."""
    from heartmula_burn._synthetic import write_synthetic_checkpoint

    layers = round(FULL_LAYERS * scale)
    if not 1 <= layers <= FULL_LAYERS or (model == "heartcodec" and scale != 1):
        sys.exit(f"bench: scale {scale} gives {layers} backbone layers (1..{FULL_LAYERS}; the codec has scale 1 only)")
    name = "ckpt" if model == "heartmula" else "codec-ckpt"
    ckpt = workdir / name if layers == FULL_LAYERS else workdir / f"{name}-{layers}L"
    if tiny:
        ckpt = ckpt.with_name(ckpt.name + "-tiny")
    model_dir = ckpt / MODEL_FOLDERS[model]
    if regenerate and ckpt.exists():
        shutil.rmtree(ckpt)
    fresh = False
    if not (model_dir / "model.safetensors.index.json").exists():
        print(
            f"generating a full-size synthetic {model} checkpoint ({layers} backbone layers) in {ckpt} ...",
            file=sys.stderr,
        )
        t = time.perf_counter()
        write_synthetic_checkpoint(
            ckpt, full=not tiny, backbone_layers=None if layers == FULL_LAYERS else layers, models=(model,)
        )
        print(f"  done in {time.perf_counter() - t:.0f} s", file=sys.stderr)
        fresh = True
    return ckpt, model_dir, fresh


def phases_of(case: str, stdout: str) -> dict:
    """Per-phase seconds a case reports about itself (last JSON object on its stdout)."""
    case = case.removeprefix("base-")
    if case == "cat+sync" or not stdout.strip():
        return {}
    start = stdout.find("{")
    doc = json.loads(stdout[start:]) if start >= 0 else {}
    if "packs" in doc:  # one report per pack (versions before 0.1 printed the one pack's flat)
        doc = doc["packs"][0]
    if case.startswith("pack-"):
        return {
            "plan_s": doc.get("plan_seconds"),
            "data_s": doc.get("data_seconds"),
            "fsync_s": doc.get("sync_seconds"),
            "core_s": doc.get("seconds"),
        }
    return {"plan_s": doc.get("plan_s"), "data_s": doc.get("write_s"), "fsync_s": doc.get("fsync_s")}


def run_case(case: str, model_dir: Path, shards: list[str], out: Path, manifests: dict[str, Path]) -> dict:
    """One timed run of one case; returns wall, peak RSS, phases and output size."""
    py = sys.executable
    if case == "cat+sync":
        # Two children so the copy and the flush are timed apart; wall is their sum.
        w1, r1, _ = run_child(["sh", "-c", f'cat {" ".join(shards)} > "{out}"'])
        w2, r2, _ = run_child(["sync", str(out)])
        return {
            "wall": w1 + w2,
            "rss": max(r1, r2),
            "phases": {"data_s": w1, "fsync_s": w2},
            "out_bytes": out.stat().st_size,
        }
    if case.startswith(("pack-", "base-pack-")):
        if case.startswith("base-"):
            if not BASELINE_PYTHON:
                sys.exit("bench: base-pack-* cases need --baseline-python")
            py = BASELINE_PYTHON[0]
        cmd = [
            py,
            "-m",
            "heartmula_burn",
            "pack",
            str(model_dir),
            "-o",
            str(out),
            "--dtype",
            case.split("-")[-1],
            "--no-extras",
            "-q",
            "--json",
        ]
    elif case == "python-packer":
        cmd = [py, str(REPO / "benchmarks" / "python_packer.py"), str(manifests["f32"]), str(out)]
    elif case == "burn-writer":
        cmd = [str(BURN_WRITER), str(manifests["f32"]), str(out)]
    elif case == "burn-q8":
        cmd = [str(BURN_Q8), str(manifests["q8"]), str(out)]
    else:
        sys.exit(f"bench: unknown case {case!r} (known: {', '.join(ALL_CASES)})")
    wall, rss, stdout = run_child(cmd)
    return {"wall": wall, "rss": rss, "phases": phases_of(case, stdout), "out_bytes": out.stat().st_size}


def median_or_none(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path("bench-work"), help="scratch folder (default ./bench-work)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--cases", default=",".join(ALL_CASES), help=f"comma-separated, from: {', '.join(ALL_CASES)}")
    ap.add_argument("--cache", choices=("warm", "cold", "both"), default="both")
    ap.add_argument(
        "--drop-caches",
        action="store_true",
        help="cold runs also write /proc/sys/vm/drop_caches (system-wide; needs root)",
    )
    ap.add_argument("--scales", default="1", help="comma-separated checkpoint scales, e.g. 0.25,0.5,1 (default 1)")
    ap.add_argument(
        "--scale-cases",
        default="cat+sync,pack-f32,pack-bf16",
        help="cases to run at scales other than 1 (default cat+sync,pack-f32,pack-bf16)",
    )
    ap.add_argument("--keep-scaled", action="store_true", help="keep generated scaled checkpoints")
    ap.add_argument("--regenerate", action="store_true")
    ap.add_argument("--tiny", action="store_true", help="tiny checkpoints instead (checks this script in seconds)")
    ap.add_argument(
        "--model",
        choices=sorted(MODEL_FOLDERS),
        default="heartmula",
        help="which model's full-size synthetic checkpoint to pack (default heartmula; heartcodec is "
        "6.64 GB and packs in F32 only, so its cases are cat+sync, pack-f32 and the F32 baselines)",
    )
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument(
        "--baseline-python",
        metavar="PYTHON",
        help="an interpreter with another heartmula_burn installed, for the base-pack-* cases",
    )
    args = ap.parse_args()
    if args.baseline_python:
        BASELINE_PYTHON.append(args.baseline_python)

    # Older spellings: "f32" / "bf16" meant pack dtypes.
    def parse_cases(text: str) -> list[str]:
        cases = [c.strip() for c in text.split(",") if c.strip()]
        cases = [f"pack-{c}" if c in ("f32", "bf16", "f16") else c for c in cases]
        unknown = [c for c in cases if c not in ALL_CASES and c != "pack-f16"]
        if unknown:
            sys.exit(f"bench: unknown case(s) {', '.join(unknown)} (known: {', '.join(ALL_CASES)})")
        return cases

    full_cases = parse_cases(args.cases)
    scaled_cases = parse_cases(args.scale_cases)
    scales = [float(s) for s in args.scales.split(",") if s.strip()]
    caches = ["warm", "cold"] if args.cache == "both" else [args.cache]
    for case, binary in (("burn-writer", BURN_WRITER), ("burn-q8", BURN_Q8)):
        if (case in full_cases or case in scaled_cases) and not binary.exists():
            sys.exit(f"bench: {binary} is missing; build it (see --help)")
    args.workdir.mkdir(parents=True, exist_ok=True)
    out = args.workdir / "bench-out.bpk"

    report: dict = {"runs": args.runs, "caches": caches, "scales": [], "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    bench_started = time.perf_counter()
    for scale in scales:
        cases = full_cases if scale == 1 else scaled_cases
        ckpt, model_dir, fresh = checkpoint_for(args.workdir, scale, args.regenerate, args.tiny, args.model)
        shards = sorted(str(p) for p in model_dir.glob("*.safetensors"))
        total = sum(os.path.getsize(p) for p in shards)
        manifests = {}
        wanted = {"f32": {"python-packer", "burn-writer"} & set(cases), "q8": {"burn-q8"} & set(cases)}
        for dtype in (d for d, users in wanted.items() if users):
            manifests[dtype] = ckpt / f"bench-manifest-{dtype}.json"
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "heartmula_burn",
                    "manifest",
                    str(model_dir),
                    "--dtype",
                    dtype,
                    "-f",
                    "-o",
                    str(manifests[dtype]),
                ],
                check=True,
                capture_output=True,
            )
        samples: dict[tuple[str, str], list[dict]] = {(c, k): [] for k in caches for c in cases}
        for run in range(args.runs):
            for cache in caches:
                for case in cases:
                    out.unlink(missing_ok=True)
                    if cache == "cold":
                        drop_inputs(shards, args.drop_caches)
                        prep = None
                    else:
                        os.sync()
                        prep = warm_inputs(shards)
                    resident = resident_bytes(shards)
                    s = run_case(case, model_dir, shards, out, manifests)
                    s["resident_before"] = resident
                    s["warmup_s"] = prep
                    out.unlink(missing_ok=True)
                    samples[(case, cache)].append(s)
                    res = "" if resident is None else f"  inputs cached {min(resident / total, 1):4.0%}"
                    print(
                        f"scale {scale:g} run {run + 1} {cache} {case:>13}: {s['wall']:7.2f} s  "
                        f"peak RSS {s['rss'] / 2**20:7.1f} MiB{res}",
                        file=sys.stderr,
                    )
        if fresh and scale != 1 and not args.keep_scaled:
            shutil.rmtree(ckpt)

        entry = {"scale": scale, "checkpoint_bytes": total, "shards": len(shards), "cases": {}}
        print(
            f"\nscale {scale:g}: checkpoint {total:,} bytes in {len(shards)} shards; "
            f"{args.runs} runs each, medians; GB/s = input bytes read (and output bytes written) per wall second"
        )
        print(
            f"{'cache':>5} {'case':>13} {'median s':>8} {'x cat+sync':>10} {'read GB/s':>9} {'write GB/s':>10} "
            f"{'peak MiB':>8} {'plan s':>6} {'data s':>6} {'data GB/s':>9} {'fsync s':>7}"
        )
        for cache in caches:
            floor = (
                median_or_none([s["wall"] for s in samples[("cat+sync", cache)]])
                if ("cat+sync", cache) in samples
                else None
            )
            for case in cases:
                ss = samples[(case, cache)]
                med = statistics.median(s["wall"] for s in ss)
                out_bytes = ss[0]["out_bytes"]
                ph = {k: median_or_none([s["phases"].get(k) for s in ss]) for k in ("plan_s", "data_s", "fsync_s")}
                data_gbps = total / ph["data_s"] / 1e9 if ph["data_s"] else None
                row = {
                    "walls": [s["wall"] for s in ss],
                    "median": med,
                    "ratio": med / floor if floor else None,
                    "read_gb_per_s": total / med / 1e9,
                    "write_gb_per_s": out_bytes / med / 1e9,
                    "output_bytes": out_bytes,
                    "peak_rss": max(s["rss"] for s in ss),
                    "phases_median": ph,
                    "data_read_gb_per_s": data_gbps,
                    "samples": ss,
                }
                entry["cases"].setdefault(cache, {})[case] = row
                fmt = lambda v, w, p=2: f"{v:{w}.{p}f}" if v is not None else " " * (w - 1) + "-"
                print(
                    f"{cache:>5} {case:>13} {med:8.2f} {fmt(row['ratio'], 10, 3)} {row['read_gb_per_s']:9.2f} "
                    f"{row['write_gb_per_s']:10.2f} {row['peak_rss'] / 2**20:8.1f} {fmt(ph['plan_s'], 6)} "
                    f"{fmt(ph['data_s'], 6)} {fmt(data_gbps, 9)} {fmt(ph['fsync_s'], 7)}"
                )
        report["scales"].append(entry)
    report["bench_seconds"] = time.perf_counter() - bench_started
    print(f"\nbenchmark took {report['bench_seconds'] / 60:.1f} min", file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
