"""`verify` and `unpack`: check a pack against its source, and turn a pack back into safetensors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from . import _core
from ._atomic import staged_folder
from ._checkpoint import load_checkpoint
from ._errors import CheckpointError
from ._manifest import PACK_METADATA_KEY, PARAM_IDS_KEY, Manifest, build_manifest
from ._packfile import Pack, dtype_info, open_pack, tensor_nbytes
from ._packing import ProgressFn
from ._presets import named_model_of_pack, preset_for, preset_for_pack
from ._presets.named import Problem

DEFAULT_MAX_SHARD_SIZE = 5 * 1000**3  # as transformers' save_pretrained default


def verify(
    pack_path: str | Path,
    against: str | Path | None = None,
    *,
    subdir: str | None = None,
    progress: ProgressFn | None = None,
) -> list[str]:
    """Problems found, one line each naming the pack and tensor; empty when the pack is right.
    The container is always checked (header, Burn's reader limits, offsets, alignment, overlaps,
    padding, sizes); `against`, when given, is a checkpoint folder (each tensor is expected under
    its own name, in the dtype the pack holds) or a manifest (exactly what it says). A checkpoint
    of another model than the pack's is a `CheckpointError`, not a list of every tensor."""
    pack_path = Path(pack_path)
    lines = [_line(pack_path, p) for p in _core.check_container(pack_path)]
    if against is None:
        return lines
    against = Path(against)
    if against.suffix == ".json":
        manifest = Manifest.load(against)
    else:
        with open_pack(pack_path) as pack:
            named = named_model_of_pack(pack.metadata)
        if named is not None:
            return lines + [_line(pack_path, p) for p in named.verify(pack_path, against, progress)]
        with open_pack(pack_path) as pack:
            preset = preset_for_pack(pack.metadata, {t.name for t in pack.tensors})
            ckpt = load_checkpoint(against, subdir, model=preset.name if preset else None)
            source = preset_for(ckpt.config) if preset is not None and ckpt.config is not None else None
            if preset is not None and source is not None and source.name != preset.name:
                raise CheckpointError.at(
                    pack_path,
                    f"is a {preset.title} pack, but {ckpt.model_dir} holds {source.title}: "
                    f"verify it against the {preset.title} checkpoint",
                )
            manifest = build_manifest(ckpt, dtype="source", any_model=True)
            for t in manifest.tensors:
                if t.name in pack:
                    t.dtype = pack.info(t.name).dtype  # compare against the exact cast to what the pack holds
    lines += [_line(pack_path, p) for p in _core.verify_against(pack_path, manifest.core_items(), progress=progress)]
    return lines


def _line(pack_path: Path, problem: Problem) -> str:
    return f"{pack_path}: " + (f"tensor '{problem.tensor}': " if problem.tensor is not None else "") + problem.message


def unpacked_nbytes(t: _core.PackTensor) -> int:
    """Bytes the tensor takes in safetensors: as in the pack, or F32 for a quantized one."""
    return t.nbytes if not dtype_info(t.dtype).is_quantized else tensor_nbytes("F32", t.shape)


def shard_plan(pack: Pack, max_shard_size: int) -> list[list[str]]:
    """Consecutive tensors (in data order) grouped into shards of at most `max_shard_size` bytes
    (a single larger tensor gets a shard of its own)."""
    shards: list[list[str]] = [[]]
    size = 0
    for t in pack.tensors:
        n = unpacked_nbytes(t)
        if shards[-1] and size + n > max_shard_size:
            shards.append([])
            size = 0
        shards[-1].append(t.name)
        size += n
    return shards


def unpack(
    pack_path: str | Path,
    out_dir: str | Path,
    *,
    max_shard_size: int = DEFAULT_MAX_SHARD_SIZE,
    force: bool = False,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Writes the pack's tensors as safetensors in OUT_DIR: `model.safetensors`, or shards plus a
    `model.safetensors.index.json` when they exceed `max_shard_size`. The folder appears whole or
    not at all."""
    pack_path, out_dir = Path(pack_path), Path(out_dir)
    if max_shard_size <= 0:
        raise ValueError(f"--max-shard-size must be positive, not {max_shard_size}")
    with open_pack(pack_path) as pack:
        groups = shard_plan(pack, max_shard_size)
        # Quantized tensors come out dequantized to F32 (safetensors has no quantized dtype), so
        # repacking the folder cannot give this pack back: its metadata is not kept for that.
        dequantized = [t.name for t in pack.tensors if dtype_info(t.dtype).is_quantized]
        metadata = {"format": "pt"}
        if not dequantized:
            metadata[PACK_METADATA_KEY] = json.dumps(pack.metadata, sort_keys=True)
            param_ids = {t.name: t.param_id for t in pack.tensors if t.param_id is not None}
            if param_ids:
                metadata[PARAM_IDS_KEY] = json.dumps(param_ids, sort_keys=True)
        dtypes = {t.name: "F32" if t.name in dequantized else t.dtype for t in pack.tensors}
        total = sum(unpacked_nbytes(t) for t in pack.tensors)
    names = (
        ["model.safetensors"]
        if len(groups) == 1
        else [f"model-{i:05d}-of-{len(groups):05d}.safetensors" for i in range(1, len(groups) + 1)]
    )
    done = 0
    with staged_folder(out_dir, overwrite=force) as partial:
        for name, group in zip(names, groups):

            def shard_progress(d: int, _t: int, base: int = done) -> None:
                if progress:
                    progress(base + d, total)

            items = [_core.TensorRequest(n, pack_path, n, dtypes[n]) for n in group]
            summary = _core.write_safetensors(items, partial / name, metadata, progress=shard_progress)
            done += summary.data_bytes
        if len(groups) > 1:
            index = {
                "metadata": {"total_size": total},
                "weight_map": {n: name for name, group in zip(names, groups) for n in group},
            }
            (partial / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return {"output": str(out_dir), "shards": names, "data_bytes": total, "dequantized": len(dequantized)}
