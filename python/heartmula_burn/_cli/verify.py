"""`verify`: a pack's bytes against its checkpoint or manifest."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ._common import (
    _progress_bar,
    _say,
)

NAME = "verify"


def register(sub: Any) -> None:
    v = sub.add_parser(
        "verify",
        help="check a pack bit for bit against its checkpoint or manifest, and its container",
        description="Stream the pack and its source and check every tensor bit for bit (or against the exact "
        "cast when dtypes differ), plus the container: header, metadata limits, offsets, 256-byte alignment, "
        "overlaps, zero padding, sizes. Each problem is reported with the tensor's name; exit 1 on any. Against a "
        "CKPT_ROOT holding several models, the one the pack was made from is used.",
    )
    v.add_argument("pack", metavar="PACK")
    v.add_argument(
        "--against",
        metavar="CKPT_ROOT|MANIFEST",
        help="checkpoint folder or manifest.json to compare every tensor with (without it: the container only)",
    )
    v.add_argument("--subdir", metavar="NAME", help="model folder inside CKPT_ROOT")
    v.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    v.add_argument(
        "--json",
        action="store_true",
        help='print the result as JSON ({"pack", "against", "ok", "problems": [one line each]}); exit codes as without',
    )


def run(args: argparse.Namespace) -> int:
    from .._verify import verify

    with _progress_bar(args.quiet, "verifying") as update:
        problems = verify(args.pack, args.against, subdir=args.subdir, progress=update)
    if args.json:
        doc = {"pack": args.pack, "against": args.against, "ok": not problems, "problems": problems}
        print(json.dumps(doc, indent=2))
        return 1 if problems else 0
    for line in problems:
        _say(f"heartmula-burn: {line}")
    if problems:
        _say(f"heartmula-burn: error: {args.pack}: {len(problems)} problem(s) found")
        return 1
    if not args.quiet:
        what = f"every tensor matches {args.against}" if args.against else "the container is sound (no source given)"
        _say(f"{args.pack}: ok, {what}", sys.stdout)
    return 0
