"""Synthetic checkpoints laid out exactly as upstream ships them: CKPT_ROOT/HeartMuLa-oss-3B and
CKPT_ROOT/HeartCodec-oss (shards, index, config.json) beside tokenizer.json and gen_config.json,
tiny for tests or full-size for benchmarks.

Values are deterministic for a seed and at realistic scales, so that a transposed or swapped
weight changes a forward far beyond float noise: norm weights near 1, linear and convolution
weights about 1/sqrt(fan_in), weight-norm magnitudes near 1, PReLU slopes near 0.25, small biases.
Shards are streamed to disk tensor by tensor, so a full-size checkpoint is written in bounded memory."""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

from ._fields import Fields
from ._presets import Preset, Shapes
from ._presets.heartcodec import HeartCodec
from ._presets.heartmula import FLAVOR_KEYS, FLAVORS, HeartMuLa

GEN_CONFIG = {"text_bos_id": 128000, "text_eos_id": 128001, "audio_eos_id": 8193, "empty_id": 0}

FULL_CONFIG: dict[str, Any] = {
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
TINY_CONFIG: dict[str, Any] = {
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

# HeartCodec-oss's config.json (heartlib's HeartCodecConfig as released).
CODEC_FULL_CONFIG: dict[str, Any] = {
    "architectures": ["HeartCodec"],
    "model_type": "heartcodec",
    "dim": 512,
    "codebook_size": 8192,
    "decay": 0.9,
    "commitment_weight": 1.0,
    "threshold_ema_dead_code": 2,
    "use_cosine_sim": False,
    "codebook_dim": 32,
    "num_quantizers": 8,
    "attention_head_dim": 64,
    "in_channels": 1024,
    "norm_type": "ada_norm_single",
    "num_attention_heads": 24,
    "num_layers": 24,
    "num_layers_2": 6,
    "out_channels": 256,
    "num_bands": 1,
    "sample_rate": 48000,
    "causal": True,
    "num_samples": 2,
    "downsample_factors": [3, 4, 4, 4, 5],
    "downsample_kernel_sizes": [6, 8, 8, 8, 10],
    "upsample_factors": [5, 4, 4, 4, 3],
    "upsample_kernel_sizes": [10, 8, 8, 8, 6],
    "latent_hidden_dim": 128,
    "default_kernel_size": 7,
    "delay_kernel_size": 5,
    "init_channel": 64,
    "res_kernel_size": 7,
    "torch_dtype": "float32",
}

# Every one of the 818 tensor names (24 + 6 blocks, 8 quantizers, all ScalarModel stages), tiny
# widths: estimator 16 / 32 wide, latent 2 x 4 channels, ScalarModel channels 2 .. 64.
CODEC_TINY_CONFIG: dict[str, Any] = {
    **CODEC_FULL_CONFIG,
    "dim": 16,
    "codebook_size": 32,
    "codebook_dim": 4,
    "attention_head_dim": 8,
    "num_attention_heads": 2,
    "in_channels": 32,  # latent 8 + in-context latent 8 + conditioning 16
    "out_channels": 8,
    "latent_hidden_dim": 4,
    "init_channel": 2,
}

ST_DTYPES = {"F32": np.dtype("<f4"), "BF16": np.dtype(ml_dtypes.bfloat16), "F16": np.dtype("<f2")}
CHUNK_ELEMENTS = 4 << 20  # 16 MiB of f32 per write
_FULL_BLOCK_ELEMENTS = 4 << 20


def _seed(name: str, seed: int) -> int:
    return zlib.crc32(name.encode()) ^ (seed * 0x9E3779B1 & 0xFFFFFFFF)


def value_scale(name: str, shape: tuple[int, ...]) -> tuple[float, float]:
    """(mean, standard deviation) of a tensor's values, as trained weights of its kind have them."""
    if name.endswith((".scale", "norm.weight", "parametrizations.weight.original0")):
        return 1.0, 0.1  # RMSNorm weights; weight-norm magnitudes (each output's weight norm)
    if ".activation" in name:
        return 0.25, 0.05  # PReLU slopes (torch initialises them to 0.25)
    if name.endswith(".initted"):
        return 1.0, 0.0
    if name.endswith(".cluster_size"):
        return 4.0, 0.5
    if name.endswith(".bias"):
        return 0.0, 0.02
    if "scale_shift_table" in name:
        return 0.0, 1 / math.sqrt(shape[-1])  # upstream initialises randn / sqrt(dim)
    if "embedding" in name or name.endswith(("._codebook.embed", "._codebook.embed_avg")):
        return 0.0, 1.0
    if name == "audio_head":  # [codebooks, in, out]: h @ audio_head[i]
        return 0.0, 1 / math.sqrt(shape[1])
    if len(shape) >= 2:  # Linear [out, in], Conv1d [out, in, k]; a weight-norm direction's scale is free
        return 0.0, 1 / math.sqrt(math.prod(shape[1:]))
    return 0.0, 0.02


def tensor_chunks(name: str, shape: tuple[int, ...], seed: int, full: bool) -> Iterator[np.ndarray[Any, Any]]:
    """The tensor's f32 values in chunks. Tiny tensors are fresh normal draws; full-size tensors
    tile one random block (generating 5.6e9 fresh draws would dominate a benchmark)."""
    n = math.prod(shape)
    mean, std = value_scale(name, shape)
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


def write_safetensors(path: Path, tensors: Shapes, dtype: str, seed: int, full: bool) -> None:
    """Streams one shard. Tensors are stored sorted by name, as the safetensors library stores them."""
    np_dtype = ST_DTYPES[dtype]
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
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
        write_safetensors(model_dir / shard_name, {n: tensors[n] for n in group}, dtype, seed, full)
        weight_map.update(dict.fromkeys(group, shard_name))
    if with_index:
        total = sum(math.prod(s) for s in tensors.values()) * ST_DTYPES[dtype].itemsize
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (model_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    (model_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")


def heartmula_config(full: bool, backbone_layers: int | None = None) -> dict[str, Any]:
    """The LM's config.json; `backbone_layers` scales it for benchmarks (a custom flavour with the
    same dims and that many backbone layers, described under "flavors")."""
    config = dict(FULL_CONFIG if full else TINY_CONFIG)
    if backbone_layers is not None:
        flavors: dict[str, Any] = dict(config.get("flavors", {}))
        base_name = config["backbone_flavor"]
        if base_name in FLAVORS:
            base = {k: getattr(FLAVORS[base_name], k) for k in (*FLAVOR_KEYS, "max_seq_len")}
        else:
            base = dict(flavors[base_name])
        name = f"{base_name}-{backbone_layers}L"
        flavors[name] = {**base, "num_layers": backbone_layers}
        config["flavors"] = flavors
        config["backbone_flavor"] = name
    return config


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
    """Writes ROOT/HeartMuLa-oss-3B (`models` holding "heartmula"), ROOT/HeartCodec-oss ("heartcodec",
    in 2 shards as released) and ROOT/{tokenizer.json, gen_config.json}. Returns ROOT."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    plans: list[tuple[Preset, dict[str, Any], int]] = [
        (HeartMuLa(), heartmula_config(full, backbone_layers), num_shards),
        (HeartCodec(), dict(CODEC_FULL_CONFIG if full else CODEC_TINY_CONFIG), 2),  # 2 shards, as released
    ]
    for i, (preset, config, shards) in enumerate(plans):
        if preset.name in models:
            tensors = preset.expected_tensors(Fields(config, root / "config.json"))
            write_model(
                root / preset.folder_names[0],
                config,
                tensors,
                dtype=dtype,
                num_shards=shards,
                seed=seed + i,
                full=full,
                with_index=with_index,
            )
    (root / "gen_config.json").write_text(json.dumps(GEN_CONFIG, indent=4))
    tokenizer = {"version": "1.0", "added_tokens": [], "model": {"type": "BPE", "vocab": {}, "merges": []}}
    (root / "tokenizer.json").write_text(json.dumps(tokenizer))
    return root
