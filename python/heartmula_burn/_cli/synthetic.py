"""`synthetic`: a checkpoint of random weights at realistic scales, laid out as upstream ships it."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .._errors import OutputError
from .._presets import PRESETS
from ._common import (
    UsageError,
    _count,
    _one_of,
    _say,
)

# "both": every model the presets know (the name kept from when there were two).
# "both": every preset's model (HeartMuLa and HeartCodec); "acestep": ACE-Step 1.5's folders.
SYNTHETIC_MODELS = ("both", *(p.name for p in PRESETS), "acestep")
SYNTHETIC_DTYPES = ("F32", "BF16", "F16")

NAME = "synthetic"


def register(sub: Any) -> None:
    s = sub.add_parser(
        "synthetic",
        help="write a synthetic checkpoint (HeartMuLa and HeartCodec, or ACE-Step 1.5) for trying the tool, tests "
        "and benchmarks",
        description="Write a CKPT_ROOT laid out as upstream ships it (HeartMuLa-oss-3B/ with all 289 tensor names, "
        "HeartCodec-oss/ with all 818, tokenizer.json, gen_config.json), with deterministic random values at "
        "realistic scales (norm weights near 1, linear and conv weights about 1/sqrt(fan_in)). Tiny by default; "
        "--full writes the real shapes (15.75 GB + 6.64 GB in F32). --model acestep writes ACE-Step 1.5's folders "
        "as `download --model` lays them out, with upstream's tensor names, in BF16 as upstream (about 24 GB with "
        "--full: both DiTs and every planner).",
    )
    s.add_argument("output", metavar="CKPT_ROOT")
    s.add_argument(
        "--model",
        **_one_of(SYNTHETIC_MODELS),
        default="both",
        help="which models (default both)",
    )
    s.add_argument("--full", action="store_true", help="the real shapes (HeartMuLa-oss-3B, HeartCodec-oss)")
    s.add_argument(
        "--dtype",
        **_one_of(SYNTHETIC_DTYPES, str.upper),
        default="F32",
        help="dtype of the tensors (any case; default F32)",
    )
    s.add_argument("-f", "--force", action="store_true", help="write into a folder that is not empty")
    s.add_argument("--shards", type=_count, default=4, help="shards of the HeartMuLa checkpoint (the codec has 2)")
    s.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    from .._synthetic import write_synthetic_checkpoint

    models = tuple(p.name for p in PRESETS) if args.model == "both" else (args.model,)
    out = Path(args.output)
    if out.is_dir() and any(out.iterdir()) and not args.force:
        # Beside a real CKPT_ROOT, synthetic weights must never replace real files unasked.
        raise OutputError.at(out, "is not empty: synthetic files would replace what is there (use --force)")
    if args.model == "acestep":
        from .._presets.acestep.synthetic import write_checkpoint

        if args.dtype != "F32":
            raise UsageError("--model acestep writes BF16, as upstream ships it: leave out --dtype")
        _say(f"wrote synthetic checkpoint {write_checkpoint(out, full=args.full, seed=args.seed)} (acestep)")
        return 0
    root = write_synthetic_checkpoint(
        args.output, full=args.full, dtype=args.dtype, num_shards=args.shards, seed=args.seed, models=models
    )
    _say(f"wrote synthetic checkpoint {root} ({', '.join(models)})")
    return 0
