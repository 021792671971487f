"""Synthetic HeartMuLa checkpoints laid out exactly as upstream ships them (shards, index,
config.json, tokenizer.json, gen_config.json), tiny for tests or full-size for benchmarks.

Shards are streamed to disk tensor by tensor, so a full-size (15.75 GB) checkpoint is written
in bounded memory. Values are deterministic for a given seed."""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Iterator
from pathlib import Path

import ml_dtypes
import numpy as np

from . import heartmula
from .checkpoint import HEARTMULA_SUBDIR

GEN_CONFIG = {"text_bos_id": 128000, "text_eos_id": 128001, "audio_eos_id": 8193, "empty_id": 0}

FULL_CONFIG = {
    "architectures": ["HeartMuLa"],
    "model_type": "heartmula",
    "backbone_flavor": "llama-3B",
    "decoder_flavor": "llama-300M",
    "text_vocab_size": 128256,
    "audio_vocab_size": 8197,
    "audio_num_codebooks": 8,
    "muq_dim": 512,
    "torch_dtype": "float32",
}

# Same tensor names and layer counts as upstream; small, distinct dims so that a swapped or
# transposed tensor changes shapes wherever it can.
TINY_CONFIG = {
    **FULL_CONFIG,
    "backbone_flavor": "tiny-backbone",
    "decoder_flavor": "tiny-decoder",
    "text_vocab_size": 300,
    "audio_vocab_size": 37,
    "muq_dim": 8,
    "flavors": {
        "tiny-backbone": {"num_layers": 28, "num_heads": 4, "num_kv_heads": 2, "embed_dim": 32, "intermediate_dim": 64},
        "tiny-decoder": {"num_layers": 3, "num_heads": 2, "num_kv_heads": 1, "embed_dim": 16, "intermediate_dim": 48},
    },
}

ST_DTYPES = {"F32": np.dtype("<f4"), "BF16": np.dtype(ml_dtypes.bfloat16), "F16": np.dtype("<f2")}
CHUNK_ELEMENTS = 4 << 20  # 16 MiB of f32 per write
_FULL_BLOCK_ELEMENTS = 4 << 20


def _seed(name: str, seed: int) -> int:
    return zlib.crc32(name.encode()) ^ (seed * 0x9E3779B1 & 0xFFFFFFFF)


def tensor_chunks(name: str, shape: tuple[int, ...], seed: int, full: bool) -> Iterator[np.ndarray]:
    """The tensor's f32 values in chunks. Tiny tensors are fresh normal draws; full-size tensors
    tile one random block (generating 3.9e9 fresh draws would dominate a benchmark)."""
    n = math.prod(shape)
    scale = 1.0 if name.endswith(".scale") else 0.02
    base = 1.0 if name.endswith(".scale") else 0.0
    if not full:
        rng = np.random.default_rng(_seed(name, seed))
        yield (base + scale * rng.standard_normal(n)).astype(np.float32)
        return
    block = _full_block(seed)
    start = _seed(name, seed) % _FULL_BLOCK_ELEMENTS
    done = 0
    while done < n:
        take = min(CHUNK_ELEMENTS, n - done)
        idx = (start + done) % _FULL_BLOCK_ELEMENTS
        yield (base + scale * block[idx : idx + take]).astype(np.float32)
        done += take


_blocks: dict[int, np.ndarray] = {}


def _full_block(seed: int) -> np.ndarray:
    """One random block stored twice in a row, so any window of up to a block is a plain slice."""
    if seed not in _blocks:
        block = np.random.default_rng(seed).standard_normal(_FULL_BLOCK_ELEMENTS).astype(np.float32)
        _blocks[seed] = np.concatenate([block, block])
    return _blocks[seed]


def _split(tensors: dict[str, tuple[int, ...]], num_shards: int, itemsize: int) -> list[list[str]]:
    """Consecutive groups of roughly equal bytes, like transformers' max_shard_size splitting."""
    names = list(tensors)
    sizes = [math.prod(tensors[n]) * itemsize for n in names]
    target = sum(sizes) / num_shards
    shards: list[list[str]] = [[]]
    acc = 0
    for name, size in zip(names, sizes):
        if shards[-1] and acc + size / 2 > target * len(shards) and len(shards) < num_shards:
            shards.append([])
        shards[-1].append(name)
        acc += size
    return shards


def write_safetensors(path: Path, tensors: dict[str, tuple[int, ...]], dtype: str, seed: int, full: bool) -> None:
    """Streams one shard. Tensors are stored sorted by name, as the safetensors library stores them."""
    np_dtype = ST_DTYPES[dtype]
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    names = sorted(tensors)
    for name in names:
        size = math.prod(tensors[name]) * np_dtype.itemsize
        header[name] = {"dtype": dtype, "shape": list(tensors[name]), "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the library pads the header to 8 bytes
    with open(path, "wb") as f:
        f.write(len(encoded).to_bytes(8, "little"))
        f.write(encoded)
        for name in names:
            f.writelines(chunk.astype(np_dtype).tobytes() for chunk in tensor_chunks(name, tensors[name], seed, full))


def write_synthetic_checkpoint(
    root: str | Path,
    *,
    full: bool = False,
    dtype: str = "F32",
    num_shards: int = 4,
    seed: int = 0,
    with_index: bool = True,
    backbone_layers: int | None = None,
) -> Path:
    """Writes ROOT/HeartMuLa-oss-3B/{config.json, index, shards}, ROOT/tokenizer.json and
    ROOT/gen_config.json. Returns ROOT.

    `backbone_layers` scales the checkpoint for benchmarks: the backbone gets that many layers
    (a custom flavour with the same dims, described under "flavors" in config.json)."""
    root = Path(root)
    model_dir = root / HEARTMULA_SUBDIR
    model_dir.mkdir(parents=True, exist_ok=True)
    config = dict(FULL_CONFIG if full else TINY_CONFIG)
    if backbone_layers is not None:
        config["flavors"] = dict(config.get("flavors", {}))
        base_name = config["backbone_flavor"]
        if base_name in heartmula.FLAVORS:
            base = {k: getattr(heartmula.FLAVORS[base_name], k) for k in (*heartmula.FLAVOR_KEYS, "max_seq_len")}
        else:
            base = config["flavors"][base_name]
        name = f"{base_name}-{backbone_layers}L"
        config["flavors"][name] = {**base, "num_layers": backbone_layers}
        config["backbone_flavor"] = name
    if dtype != "F32":
        config["torch_dtype"] = {"BF16": "bfloat16", "F16": "float16"}[dtype]
    cfg = heartmula.parse_config(config, model_dir / "config.json")
    tensors = heartmula.expected_tensors(cfg)
    groups = _split(tensors, num_shards, ST_DTYPES[dtype].itemsize)
    weight_map = {}
    for i, group in enumerate(groups, start=1):
        shard_name = f"model-{i:05d}-of-{len(groups):05d}.safetensors"
        write_safetensors(model_dir / shard_name, {n: tensors[n] for n in group}, dtype, seed, full)
        weight_map.update({n: shard_name for n in group})
    if with_index:
        total = sum(math.prod(s) for s in tensors.values()) * ST_DTYPES[dtype].itemsize
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (model_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    (model_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (root / "gen_config.json").write_text(json.dumps(GEN_CONFIG, indent=4))
    tokenizer = {"version": "1.0", "added_tokens": [], "model": {"type": "BPE", "vocab": {}, "merges": []}}
    (root / "tokenizer.json").write_text(json.dumps(tokenizer))
    return root
