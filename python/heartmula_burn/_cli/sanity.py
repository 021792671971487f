"""`sanity`: the model run from a pack's weights, judged."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from .._presets import PRESETS
from ._common import (
    _count,
    _say,
)

NAME = "sanity"


def register(sub: Any) -> None:
    sn = sub.add_parser(
        "sanity",
        help="run the model from a pack's weights and check that it behaves (needs torch)",
        description="Load the pack tensor by tensor (zero-copy from the mapped file) and run a deterministic "
        "forward in f32 on fixed inputs. "
        + " ".join(f"{p.title}: {p.sanity_summary}." for p in PRESETS if p.sanity_summary)
        + " With --reference (the checkpoint folder or another pack) the same forward runs on the reference "
        "weights cast to the pack's dtypes and must agree exactly; for a lossy pack (e.g. BF16 from F32) the "
        "difference from the uncast reference is reported. Exit 0 when every check passes, 1 otherwise. Needs "
        "PyTorch: pip install 'heartmula-burn[sanity]'.",
    )
    sn.add_argument("pack", metavar="PACK")
    sn.add_argument("--reference", metavar="CKPT_ROOT|PACK", help="compare with this checkpoint folder or pack")
    sn.add_argument("--subdir", metavar="NAME", help="model folder inside the reference CKPT_ROOT")
    sn.add_argument("--device", default="auto", help="auto (cuda when available, else cpu), cuda, cuda:N or cpu")
    sn.add_argument("--frames", type=_count, default=2, help="frames a generative model decodes greedily (default 2)")
    sn.add_argument(
        "--config",
        metavar="CONFIG_JSON",
        help="the model's config.json (default: the one in the pack's metadata, else the reference's)",
    )
    sn.add_argument("--json", action="store_true", help="print every check and figure as JSON on stdout")


def run(args: argparse.Namespace) -> int:
    from .._sanity import format_table, run

    result = run(
        args.pack,
        reference=args.reference,
        device=args.device,
        frames=args.frames,
        config=args.config,
        subdir=args.subdir,
    )
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        for line in format_table(result).splitlines():
            _say(line, sys.stdout)
    if not result.ok:
        failed = "; ".join(f"{c.name} ({c.figure})" for c in result.failed[:3])
        more = f"; and {len(result.failed) - 3} more" if len(result.failed) > 3 else ""
        _say(f"heartmula-burn: error: {args.pack}: sanity check failed: {failed}{more}")
        return 1
    return 0
