"""A synthetic ACE-Step 1.5 checkpoint laid out as `download --model acestep-*` lays it out, with
upstream's exact tensor names (`upstream`), tiny for tests or at the released shapes for benchmarks.

The tiny configs keep what the runtime fixes whatever its config says (the FSQ projections'
2048, 64 latent channels and `in_channels` = 3 x 64, the encoder's width = `text_hidden_dim`),
and shrink the rest. `silence_latent.pt` is written as `torch.save` writes it (a zip holding a
pickle and the raw storage), without needing torch."""

from __future__ import annotations

import io
import json
import struct
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..._synthetic import SYNTHETIC_KEY, SYNTHETIC_NOTE, write_safetensors
from . import upstream

SILENCE_FRAMES_FULL = 15000  # as released: [1, 64, 15000]
SILENCE_FRAMES_TINY = 40
# A Hugging Face tokenizers file, as small as one can be; the runtime's own test keeps one like it.
TOKENIZER = {"version": "1.0", "model": {"type": "WordLevel", "vocab": {"<unk>": 0}, "unk_token": "<unk>"}}


def tiny_dit_config() -> dict[str, Any]:
    return {
        **upstream.TURBO_CONFIG,
        "hidden_size": 32,
        "intermediate_size": 48,
        "head_dim": 8,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "num_hidden_layers": 2,
        "num_audio_decoder_hidden_layers": 2,
        "layer_types": ["sliding_attention", "full_attention"],
        "num_lyric_encoder_hidden_layers": 2,
        "num_timbre_encoder_hidden_layers": 1,
        "num_attention_pooler_hidden_layers": 1,
        "text_hidden_dim": 16,
    }


def tiny_vae_config() -> dict[str, Any]:
    return {
        **upstream.VAE_CONFIG,
        "channel_multiples": [1, 2],
        "downsampling_ratios": [2, 3],
        "encoder_hidden_size": 8,
        "decoder_channels": 8,
    }


def tiny_qwen3_config(base: dict[str, Any], hidden: int) -> dict[str, Any]:
    layers = 2
    return {
        **base,
        "hidden_size": hidden,
        "intermediate_size": 2 * hidden,
        "head_dim": 8,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "num_hidden_layers": layers,
        "max_window_layers": layers,
        "layer_types": ["full_attention"] * layers,
        "vocab_size": 96,
    }


def configs(full: bool) -> dict[str, dict[str, Any]]:
    """Folder (relative to CKPT_ROOT) -> its config.json."""
    if full:
        dit, vae, encoder = upstream.TURBO_CONFIG, upstream.VAE_CONFIG, upstream.QWEN3_EMBEDDING_CONFIG
        planners = dict(upstream.PLANNER_CONFIGS)
    else:
        dit, vae = tiny_dit_config(), tiny_vae_config()
        encoder = tiny_qwen3_config(upstream.QWEN3_EMBEDDING_CONFIG, dit["text_hidden_dim"])
        planners = {size: tiny_qwen3_config(c, 24) for size, c in upstream.PLANNER_CONFIGS.items()}
    return {
        "Ace-Step1.5/acestep-v15-turbo": dit,
        "acestep-v15-sft": {**dit, "is_turbo": False, "model_version": "sft"},
        "Ace-Step1.5/vae": vae,
        "Ace-Step1.5/Qwen3-Embedding-0.6B": encoder,
        "acestep-5Hz-lm-0.6B": planners["0.6B"],
        "Ace-Step1.5/acestep-5Hz-lm-1.7B": planners["1.7B"],
        "acestep-5Hz-lm-4B": planners["4B"],
    }


# How upstream's files differ: the weights' file name, the names' prefix, __metadata__, shards.
_QWEN3_FILES = {
    "Ace-Step1.5/Qwen3-Embedding-0.6B": ("", True, 1),
    "acestep-5Hz-lm-0.6B": ("model.", False, 1),
    "Ace-Step1.5/acestep-5Hz-lm-1.7B": ("", True, 1),
    "acestep-5Hz-lm-4B": ("model.", True, 2),
}


def write_checkpoint(
    root: str | Path, *, full: bool = False, seed: int = 0, folders: Sequence[str] | None = None
) -> Path:
    """Writes the synthetic checkpoint's folders (`folders`: some of `configs`'s keys; default all)
    under ROOT, each with its config.json, weights and (Qwen3 stacks) tokenizer.json; the turbo
    folder also gets silence_latent.pt. Returns ROOT."""
    root = Path(root)
    for i, (folder, config) in enumerate(configs(full).items()):
        if folders is not None and folder not in folders:
            continue
        target = root / folder
        target.mkdir(parents=True, exist_ok=True)
        config = {**config, SYNTHETIC_KEY: SYNTHETIC_NOTE}
        (target / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        if folder in _QWEN3_FILES:
            prefix, with_metadata, shards = _QWEN3_FILES[folder]
            tensors = upstream.qwen3_checkpoint(config, prefix)
            (target / "tokenizer.json").write_text(json.dumps(TOKENIZER))
            _write_shards(target, tensors, shards, seed + i, full, with_metadata)
        elif folder.endswith("vae"):
            write_safetensors(
                target / "diffusion_pytorch_model.safetensors", upstream.vae_checkpoint(config), "BF16", seed + i, full
            )
        else:
            write_safetensors(target / "model.safetensors", upstream.dit_checkpoint(config), "BF16", seed + i, full)
            if folder.endswith("turbo"):
                frames = SILENCE_FRAMES_FULL if full else SILENCE_FRAMES_TINY
                latent = np.random.default_rng(seed).standard_normal((1, 64, frames)).astype(np.float32)
                (target / "silence_latent.pt").write_bytes(torch_save_bytes(latent))
    return root


def _write_shards(
    target: Path, tensors: upstream.Shapes, shards: int, seed: int, full: bool, with_metadata: bool
) -> None:
    metadata = {"format": "pt"} if with_metadata else None
    if shards == 1:
        write_safetensors(target / "model.safetensors", tensors, "BF16", seed, full, metadata=metadata)
        return
    names = sorted(tensors)
    half = len(names) // 2
    weight_map = {}
    for k, group in enumerate((names[:half], names[half:]), start=1):
        shard = f"model-{k:05d}-of-{shards:05d}.safetensors"
        write_safetensors(target / shard, {n: tensors[n] for n in group}, "BF16", seed, full, metadata=metadata)
        weight_map.update(dict.fromkeys(group, shard))
    index = {"metadata": {"total_size": upstream.safetensors_file_size(tensors)}, "weight_map": weight_map}
    (target / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


def torch_save_bytes(values: np.ndarray[Any, Any]) -> bytes:
    """What `torch.save(torch.from_numpy(values))` writes for a contiguous float32 array: a zip of
    `archive/data.pkl` (protocol 2), `archive/data/0` (the raw little-endian values),
    `archive/byteorder` and `archive/version`."""
    values = np.ascontiguousarray(values, dtype="<f4")
    shape = values.shape
    strides = tuple(s // 4 for s in values.strides)

    def text(s: str) -> bytes:
        raw = s.encode()
        return b"X" + struct.pack("<I", len(raw)) + raw  # BINUNICODE

    def ints(xs: tuple[int, ...]) -> bytes:
        return b"(" + b"".join(b"J" + struct.pack("<i", x) for x in xs) + b"t"  # MARK ... TUPLE

    storage = b"(" + text("storage") + b"ctorch\nFloatStorage\n" + text("0") + text("cpu")
    storage += b"J" + struct.pack("<i", values.size) + b"tQ"  # TUPLE, BINPERSID
    pickled = (
        b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n("
        + storage
        + b"K\x00"
        + ints(shape)
        + ints(strides)
        + b"\x89ccollections\nOrderedDict\n)Rt"  # NEWFALSE, OrderedDict(), TUPLE
        + b"R."  # REDUCE, STOP
    )
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("archive/data.pkl", pickled)
        archive.writestr("archive/byteorder", "little")
        archive.writestr("archive/data/0", values.tobytes())
        archive.writestr("archive/version", "3\n")
    return out.getvalue()
