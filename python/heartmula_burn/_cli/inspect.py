"""`inspect`: a pack's metadata and tensor table."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from .._packfile import open_pack
from .._text import shown
from ._common import (
    _say,
)

NAME = "inspect"


def register(sub: Any) -> None:
    i = sub.add_parser(
        "inspect",
        help="show a pack's metadata and tensors",
        description="Show a Burn pack's layout, metadata and tensor table (names and values are shown with "
        "control characters escaped; --json keeps them exact).",
    )
    i.add_argument("pack", metavar="FILE.bpk")
    i.add_argument("--json", action="store_true", help="print everything as JSON")


def run(args: argparse.Namespace) -> int:
    with open_pack(args.pack) as pack:
        if args.json:
            doc = {
                "path": str(pack.path),
                "file_size": pack.file_size,
                "layout": pack.layout,
                "metadata_size": pack.metadata_size,
                "data_start": pack.data_start,
                "metadata": pack.metadata,
                "tensors": [
                    {
                        "name": t.name,
                        "dtype": t.dtype,
                        "shape": list(t.shape),
                        "param_id": t.param_id,
                        "data_offsets": list(t.data_offsets),
                        "file_offset": t.file_offset,
                    }
                    for t in pack.tensors
                ],
            }
            print(json.dumps(doc, indent=2))
            return 0
        out = sys.stdout
        _say(f"{pack.path}: Burn pack, {pack.file_size:,} bytes, layout {pack.layout}, {len(pack)} tensors", out)
        for k, v in pack.metadata.items():
            _say(f"  {k} = {v}", out)
        names = {t.name: shown(t.name) for t in pack.tensors}
        width = max((len(n) for n in names.values()), default=4)
        print(f"  {'name':<{width}}  {'dtype':<5}  {'shape':<22}  offset", file=out)
        for t in pack.tensors:
            print(f"  {names[t.name]:<{width}}  {t.dtype:<5}  {list(t.shape)!s:<22}  {t.file_offset}", file=out)
    return 0
