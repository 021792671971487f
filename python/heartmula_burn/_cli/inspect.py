"""`inspect`: a pack's metadata and tensor table."""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any

from .._packfile import Pack, dtype_info, open_pack
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
                "dtypes": dtype_summary(pack),
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
        for name, d in dtype_summary(pack).items():
            per = f", {d['bytes_per_parameter']:.4g} bytes per parameter" if d["parameters"] else ""
            scheme = f": {d['scheme']}" if "scheme" in d else ""
            _say(
                f"  {name}{scheme}: {d['tensors']} tensors, {d['parameters']:,} parameters, {d['bytes']:,} bytes{per}",
                out,
            )
        names = {t.name: shown(t.name) for t in pack.tensors}
        width = max((len(n) for n in names.values()), default=4)
        dwidth = max((len(t.dtype) for t in pack.tensors), default=5)
        print(f"  {'name':<{width}}  {'dtype':<{dwidth}}  {'shape':<22}  offset", file=out)
        for t in pack.tensors:
            print(f"  {names[t.name]:<{width}}  {t.dtype:<{dwidth}}  {list(t.shape)!s:<22}  {t.file_offset}", file=out)
    return 0


# What each store means for the runtime's backends.
STORE_NOTES = {
    "PackedU32(0)": " (four to a u32 along the last dimension; every Burn backend runs it)",
    "Native": " (Flex runs it; wgpu's shaders cannot, WGSL has no 8-bit type)",
}


def dtype_summary(pack: Pack) -> dict[str, dict[str, Any]]:
    """Per dtype: tensors, parameters, bytes and bytes per parameter; for a quantized dtype, its
    scheme as Burn names it."""
    summary: dict[str, dict[str, Any]] = {}
    for t in pack.tensors:
        d = summary.setdefault(t.dtype, {"tensors": 0, "parameters": 0, "bytes": 0})
        d["tensors"] += 1
        d["parameters"] += math.prod(t.shape)
        d["bytes"] += t.nbytes
    for name, d in summary.items():
        d["bytes_per_parameter"] = d["bytes"] / d["parameters"] if d["parameters"] else None
        info = dtype_info(name)
        if info.is_quantized:
            d["scheme"] = (
                f"Burn QFloat {{Q8S, {info.store}, Symmetric, block [{info.block}] F32}}: one i8 per value"
                f"{STORE_NOTES.get(str(info.store), '')}, one F32 scale per {info.block} values along the last "
                "dimension"
            )
    return summary
