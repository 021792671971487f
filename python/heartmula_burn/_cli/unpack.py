"""`unpack`: a pack back into a safetensors checkpoint."""

from __future__ import annotations

import argparse
from typing import Any

from ._common import (
    _progress_bar,
    _say,
    _size,
)

NAME = "unpack"


def register(sub: Any) -> None:
    u = sub.add_parser(
        "unpack",
        help="write a pack's tensors back to safetensors",
        description="Write the pack's tensors to OUT as safetensors (model.safetensors, or shards plus "
        "model.safetensors.index.json when larger than --max-shard-size). The pack's metadata and param_ids "
        "are kept in the shards' __metadata__, so `pack --any-model --dtype source OUT` gives back the identical pack. "
        "Quantized tensors (q8 packs) are written dequantized to F32, the values Burn reads back; such a folder "
        "does not repack into the same pack.",
    )
    u.add_argument("pack", metavar="PACK")
    u.add_argument("-o", "--output", required=True, metavar="OUT", help="output folder (must not exist)")
    u.add_argument("--max-shard-size", type=_size, default="5GB", help="largest shard, e.g. 5GB (default), 500MB, 2GiB")
    u.add_argument("-f", "--force", action="store_true", help="replace an existing output folder")
    u.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from .._verify import unpack

    with _progress_bar(args.quiet, "unpacking") as update:
        summary = unpack(args.pack, args.output, max_shard_size=args.max_shard_size, force=args.force, progress=update)
    if not args.quiet:
        _say(f"wrote {summary['output']} ({len(summary['shards'])} shard(s), {summary['data_bytes']:,} bytes)")
        if summary["dequantized"]:
            _say(
                f"note: {summary['dequantized']} quantized tensor(s) written dequantized to F32 (the values Burn "
                "reads back); repacking this folder gives an F32 pack, not this one"
            )
    return 0
