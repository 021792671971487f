"""`manifest`: the JSON that says which tensor goes where, with which dtype."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .._manifest import build_manifest
from ._common import (
    DTYPE_HELP,
    UsageError,
    _add_source_args,
    _say,
)

NAME = "manifest"


def register(sub: Any) -> None:
    m = sub.add_parser(
        "manifest",
        help="write the manifest a pack would use, to edit names, order or dtypes",
        description="Write the manifest (ordered tensors, sources, dtypes, metadata) of one model of CKPT_ROOT. "
        "Edit it and pack it with `pack --manifest FILE`. Paths inside are relative to the manifest's folder and "
        "must lie inside it, so save it in a folder that holds the checkpoint (e.g. CKPT_ROOT/manifest.json).",
    )
    _add_source_args(m, DTYPE_HELP)
    m.add_argument("-o", "--output", default="manifest.json", help="manifest file (default: ./manifest.json)")
    m.add_argument("-f", "--force", action="store_true", help="replace an existing manifest")


def run(args: argparse.Namespace) -> int:
    from .._checkpoint import load_checkpoint

    if not args.ckpt_root:
        raise UsageError("give a CKPT_ROOT")
    manifest = build_manifest(
        load_checkpoint(args.ckpt_root, args.subdir), dtype=args.dtype, any_model=args.any_model, q_block=args.q_block
    )
    out = Path(args.output)
    manifest.save(out, overwrite=args.force)
    _say(f"wrote {out} ({len(manifest.tensors)} tensors, {manifest.total_bytes:,} bytes of data)")
    return 0
