#!/usr/bin/env python3
"""The straightforward Python packer: what a competent user would write without heartmula-burn.

Reads a heartmula-burn manifest (the ordered tensor list, their sources and target dtypes, and
the metadata map), opens each shard with `safetensors.safe_open(framework="pt")`, and streams
one tensor at a time into a Burn pack: header, CBOR metadata, then each tensor's bytes at its
256-byte aligned offset. Converts with `torch.Tensor.to`. Flushes the file to disk at the end,
as the real packer does, so the two are timed doing the same work.

    python benchmarks/python_packer.py MANIFEST.json OUTPUT.bpk

Its output is byte-identical to `heartmula_burn pack --manifest MANIFEST.json` (checked by
tests/test_bench_baselines.py)."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

import cbor2
import torch
from safetensors import safe_open

MAGIC = b"NRUB"  # 0x4255524E little-endian
FORMAT_VERSION = 1
HEADER_SIZE = 10
ALIGN = 256

TORCH_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "Bool": torch.bool,
}
ITEM_SIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "Bool": 1}


def align(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def pack(manifest_path: Path, output: Path, timings: dict | None = None) -> int:
    started = time.perf_counter()
    doc = json.loads(manifest_path.read_text())
    base = manifest_path.parent
    tensors = doc["tensors"]

    # Lay the data out in manifest order, each tensor 256-byte aligned.
    descriptors = {}
    offset = 0
    for t in tensors:
        dtype = "Bool" if t["dtype"].upper() == "BOOL" else t["dtype"].upper()
        start = align(offset)
        end = start + math.prod(t["shape"]) * ITEM_SIZE[dtype]
        d = {"dtype": dtype, "shape": list(t["shape"]), "data_offsets": [start, end]}
        if t.get("param_id") is not None:
            d["param_id"] = t["param_id"]
        descriptors[t["name"]] = d
        offset = end
    # Burn serialises Rust BTreeMaps: keys in byte order, which is code point order for str.
    meta: dict = {"tensors": dict(sorted(descriptors.items()))}
    if doc.get("metadata"):
        meta["metadata"] = dict(sorted(doc["metadata"].items()))
    cbor = cbor2.dumps(meta)
    data_start = align(HEADER_SIZE + len(cbor))
    planned = time.perf_counter()

    with open(output, "wb") as f:
        f.write(MAGIC + FORMAT_VERSION.to_bytes(2, "little") + len(cbor).to_bytes(4, "little"))
        f.write(cbor)
        f.write(b"\0" * (data_start - HEADER_SIZE - len(cbor)))
        handles: dict[str, object] = {}
        written = 0
        for t in tensors:
            source = str(base / t["source"]["file"])
            if source not in handles:
                handles[source] = safe_open(source, framework="pt")
            tensor = handles[source].get_tensor(t["source"]["key"])
            dtype = "Bool" if t["dtype"].upper() == "BOOL" else t["dtype"].upper()
            tensor = tensor.to(TORCH_DTYPES[dtype]).contiguous()
            start = descriptors[t["name"]]["data_offsets"][0]
            f.write(b"\0" * (start - written))
            f.write(tensor.view(torch.uint8).numpy() if tensor.numel() else b"")
            written = descriptors[t["name"]]["data_offsets"][1]
            del tensor
        f.flush()
        wrote = time.perf_counter()
        os.fsync(f.fileno())
    if timings is not None:
        done = time.perf_counter()
        timings.update(plan_s=planned - started, write_s=wrote - planned, fsync_s=done - wrote, seconds=done - started)
    return data_start + written


def main() -> int:
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    timings: dict = {}
    size = pack(Path(sys.argv[1]), Path(sys.argv[2]), timings)
    print(f"wrote {sys.argv[2]} ({size:,} bytes)", file=sys.stderr)
    print(json.dumps(timings))  # phase timings, read by benchmarks/bench_pack.py
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
