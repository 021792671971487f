"""Synthetic checkpoints laid out exactly as upstream ships them: one folder per model (shards,
index, config.json) beside the runtime files, tiny for tests or full-size for benchmarks.

Values are deterministic for a seed and at realistic scales, so that a transposed or swapped
weight changes a forward far beyond float noise: norm weights near 1, linear and convolution
weights about 1/sqrt(fan_in), weight-norm magnitudes near 1, small biases; a model adds rules for
its own names (`Preset.synthetic_value_scale`).
Shards are streamed to disk tensor by tensor, so a full-size checkpoint is written in bounded memory."""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

from ._fields import Fields
from ._presets import PRESETS, Shapes

ST_DTYPES = {"F32": np.dtype("<f4"), "BF16": np.dtype(ml_dtypes.bfloat16), "F16": np.dtype("<f2")}
CHUNK_ELEMENTS = 4 << 20  # 16 MiB of f32 per write
_FULL_BLOCK_ELEMENTS = 4 << 20
PT_METADATA = {"format": "pt"}  # what torch-side savers write


def _seed(name: str, seed: int) -> int:
    return zlib.crc32(name.encode()) ^ (seed * 0x9E3779B1 & 0xFFFFFFFF)


# A model's own value rules, by tensor name, tried before the ones below: (mean, standard
# deviation), or None where the generic rules decide.
ValueScale = Callable[[str, tuple[int, ...]], "tuple[float, float] | None"]


def value_scale(name: str, shape: tuple[int, ...], model: ValueScale | None = None) -> tuple[float, float]:
    """(mean, standard deviation) of a tensor's values, as trained weights of its kind have them:
    the model's own rule for the name if it has one, else the rule for the layer kind."""
    own = model(name, shape) if model is not None else None
    if own is not None:
        return own
    if name.endswith(("norm.weight", "parametrizations.weight.original0")):
        return 1.0, 0.1  # norm weights; weight-norm magnitudes (each output's weight norm)
    if name.endswith(".bias"):
        return 0.0, 0.02
    if "scale_shift_table" in name:
        return 0.0, 1 / math.sqrt(shape[-1])  # adaLN tables, initialised randn / sqrt(dim)
    if "embedding" in name:
        return 0.0, 1.0
    if len(shape) >= 2:  # Linear [out, in], Conv1d [out, in, k]; a weight-norm direction's scale is free
        return 0.0, 1 / math.sqrt(math.prod(shape[1:]))
    return 0.0, 0.02


def tensor_chunks(
    name: str, shape: tuple[int, ...], seed: int, full: bool, model: ValueScale | None = None
) -> Iterator[np.ndarray[Any, Any]]:
    """The tensor's f32 values in chunks. Tiny tensors are fresh normal draws; full-size tensors
    tile one random block (generating 5.6e9 fresh draws would dominate a benchmark)."""
    n = math.prod(shape)
    mean, std = value_scale(name, shape, model)
    if not full:
        rng = np.random.default_rng(_seed(name, seed))
        yield (mean + std * rng.standard_normal(n)).astype(np.float32)
        return
    block = _full_block(seed)
    start = _seed(name, seed) % _FULL_BLOCK_ELEMENTS
    done = 0
    while done < n:
        take = min(CHUNK_ELEMENTS, n - done)
        idx = (start + done) % _FULL_BLOCK_ELEMENTS
        yield (mean + std * block[idx : idx + take]).astype(np.float32)
        done += take


_blocks: dict[int, np.ndarray[Any, Any]] = {}


def _full_block(seed: int) -> np.ndarray[Any, Any]:
    """One random block stored twice in a row, so any window of up to a block is a plain slice."""
    if seed not in _blocks:
        block = np.random.default_rng(seed).standard_normal(_FULL_BLOCK_ELEMENTS).astype(np.float32)
        _blocks[seed] = np.concatenate([block, block])
    return _blocks[seed]


def _split(tensors: Shapes, num_shards: int, itemsize: int) -> list[list[str]]:
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


def write_safetensors(
    path: Path,
    tensors: Shapes,
    dtype: str,
    seed: int,
    full: bool,
    *,
    metadata: dict[str, str] | None = PT_METADATA,
    model: ValueScale | None = None,
) -> None:
    """Streams one shard. Tensors are stored sorted by name, as the safetensors library stores them;
    `metadata` is its __metadata__ (None: none, as some upstream files have); `model` the model's
    own value rules."""
    np_dtype = ST_DTYPES[dtype]
    header: dict[str, Any] = {} if metadata is None else {"__metadata__": metadata}
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
            chunks = tensor_chunks(name, tensors[name], seed, full, model)
            f.writelines(chunk.astype(np_dtype).tobytes() for chunk in chunks)


# Written into every synthetic config.json: the weights are random, whatever the shapes say.
SYNTHETIC_KEY = "heartmula_burn_synthetic"
SYNTHETIC_NOTE = "random weights written by `heartmula-burn synthetic`, not a trained model"


def write_model(
    model_dir: Path,
    config: dict[str, Any],
    tensors: Shapes,
    *,
    dtype: str,
    num_shards: int,
    seed: int,
    full: bool,
    with_index: bool = True,
    model: ValueScale | None = None,
) -> None:
    """One model folder: config.json, shards (model-0000i-of-0000n.safetensors) and their index."""
    model_dir.mkdir(parents=True, exist_ok=True)
    config = {**config, SYNTHETIC_KEY: SYNTHETIC_NOTE}  # packs carry it, so a model card can say so
    if dtype != "F32":
        config = {**config, "torch_dtype": {"BF16": "bfloat16", "F16": "float16"}[dtype]}
    groups = _split(tensors, num_shards, ST_DTYPES[dtype].itemsize)
    weight_map = {}
    for i, group in enumerate(groups, start=1):
        shard_name = f"model-{i:05d}-of-{len(groups):05d}.safetensors"
        write_safetensors(model_dir / shard_name, {n: tensors[n] for n in group}, dtype, seed, full, model=model)
        weight_map.update(dict.fromkeys(group, shard_name))
    if with_index:
        total = sum(math.prod(s) for s in tensors.values()) * ST_DTYPES[dtype].itemsize
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (model_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    (model_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")


def write_synthetic_checkpoint(
    root: str | Path,
    *,
    full: bool = False,
    dtype: str = "F32",
    num_shards: int = 4,
    seed: int = 0,
    with_index: bool = True,
    backbone_layers: int | None = None,
    models: Sequence[str] = ("heartmula",),
) -> Path:
    """Writes one folder per model in `models` (preset names), named as upstream ships it, in
    `num_shards` shards unless the preset fixes its count, and every preset's runtime files in
    ROOT. `backbone_layers` scales a model that can be scaled, for benchmarks. Returns ROOT."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for i, preset in enumerate(PRESETS):
        runtime = preset.synthetic_runtime_files()
        for name, text in runtime.items():
            (root / name).write_text(text)
        if preset.name not in models:
            continue
        config = preset.synthetic_config(full, backbone_layers)
        write_model(
            root / preset.folder_names[0],
            config,
            preset.expected_tensors(Fields(config, root / "config.json")),
            dtype=dtype,
            num_shards=preset.synthetic_shards or num_shards,
            seed=seed + i,
            full=full,
            with_index=with_index,
            model=preset.synthetic_value_scale,
        )
    return root
