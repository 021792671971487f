"""`verify` and `unpack`: check a pack against its source, and turn a pack back into safetensors."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

from . import _core
from .checkpoint import load_checkpoint
from .errors import CheckpointError
from .manifest import PACK_METADATA_KEY, PARAM_IDS_KEY, Manifest, build_manifest
from .packfile import Pack, dtype_size, open_pack
from .packing import ProgressFn, replace_folder

DEFAULT_MAX_SHARD_SIZE = 5 * 1000**3  # as transformers' save_pretrained default


def verify(pack_path: str | Path, against: str | Path, *, subdir: str | None = None,
           progress: ProgressFn | None = None) -> list[str]:
    """Problems found, one line each naming the pack and tensor; empty when the pack is right.
    `against` is a checkpoint folder (each tensor is expected under its own name, in the dtype
    the pack holds) or a manifest (exactly what it says)."""
    pack_path = Path(pack_path)
    lines = [f"{pack_path}: " + (f"tensor '{t}': " if t else "") + m for t, m in _core.check_container(str(pack_path))]
    against = Path(against)
    if against.suffix == ".json":
        manifest = Manifest.load(against)
    else:
        manifest = build_manifest(load_checkpoint(against, subdir), dtype="source", any_model=True)
        with open_pack(pack_path) as pack:
            for t in manifest.tensors:
                if t.name in pack:
                    t.dtype = pack.info(t.name).dtype  # compare against the exact cast to what the pack holds
    problems = _core.verify_against(str(pack_path), manifest.core_items(), progress=progress)
    lines += [f"{pack_path}: tensor '{t}': {m}" for t, m in problems]
    return lines


def shard_plan(pack: Pack, max_shard_size: int) -> list[list[str]]:
    """Consecutive tensors (in data order) grouped into shards of at most `max_shard_size` bytes
    (a single larger tensor gets a shard of its own)."""
    shards: list[list[str]] = [[]]
    size = 0
    for t in pack:
        n = math.prod(t.shape) * dtype_size(t.dtype)
        if shards[-1] and size + n > max_shard_size:
            shards.append([])
            size = 0
        shards[-1].append(t.name)
        size += n
    return shards


def unpack(pack_path: str | Path, out_dir: str | Path, *, max_shard_size: int = DEFAULT_MAX_SHARD_SIZE,
           force: bool = False, progress: ProgressFn | None = None) -> dict:
    """Writes the pack's tensors as safetensors in OUT_DIR: `model.safetensors`, or shards plus a
    `model.safetensors.index.json` when they exceed `max_shard_size`. The folder appears whole or
    not at all."""
    pack_path, out_dir = Path(pack_path), Path(out_dir)
    if max_shard_size <= 0:
        raise CheckpointError(f"--max-shard-size must be positive, not {max_shard_size}")
    if out_dir.exists() and not force:
        raise CheckpointError(f"{out_dir}: output exists (use --force to replace it)")
    if not out_dir.parent.is_dir():
        raise CheckpointError(f"{out_dir}: output folder's parent does not exist")
    with open_pack(pack_path) as pack:
        groups = shard_plan(pack, max_shard_size)
        metadata = {"format": "pt", PACK_METADATA_KEY: json.dumps(pack.metadata, sort_keys=True)}
        param_ids = {t.name: t.param_id for t in pack if t.param_id is not None}
        if param_ids:
            metadata[PARAM_IDS_KEY] = json.dumps(param_ids, sort_keys=True)
        dtypes = {t.name: t.dtype for t in pack}
        total = sum(t.nbytes for t in pack)
    names = (["model.safetensors"] if len(groups) == 1
             else [f"model-{i:05d}-of-{len(groups):05d}.safetensors" for i in range(1, len(groups) + 1)])
    partial = out_dir.with_name(f".{out_dir.name}.{os.getpid()}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    done = 0
    try:
        for name, group in zip(names, groups):
            base = done

            def shard_progress(d: int, _t: int) -> None:
                if progress:
                    progress(base + d, total)

            items = [(n, str(pack_path), n, dtypes[n], None, None, None) for n in group]
            summary = _core.write_safetensors(items, str(partial / name), metadata, progress=shard_progress)
            done += summary["data_bytes"]
        if len(groups) > 1:
            index = {"metadata": {"total_size": total},
                     "weight_map": {n: name for name, group in zip(names, groups) for n in group}}
            (partial / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
        replace_folder(partial, out_dir)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return {"output": str(out_dir), "shards": names, "data_bytes": total}
