"""The two-step workflow: export a checkpoint to one `.npy` per tensor plus a manifest, which
`pack --manifest` turns into the same pack, byte for byte, as the one-step pack."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from urllib.parse import quote

from . import _core
from .checkpoint import load_checkpoint
from .errors import CheckpointError
from .manifest import Manifest, ManifestTensor, build_manifest
from .packing import ProgressFn, copy_atomic, extra_targets, replace_folder


def npy_file_name(tensor_name: str) -> str:
    """A file name for a tensor: HeartMuLa names stay as they are; '/', '%' and the like are escaped."""
    return quote(tensor_name, safe="") + ".npy"


def export_raw(
    checkpoint_root: str | Path,
    output_root: str | Path,
    *,
    subdir: str | None = None,
    dtype: str = "f32",
    any_model: bool = False,
    force: bool = False,
    progress: ProgressFn | None = None,
) -> dict:
    """Writes OUTPUT_ROOT/heartmula_raw_<dtype>/{<tensor>.npy..., manifest.json} plus the runtime
    files in OUTPUT_ROOT. The folder appears whole or not at all (built beside it, then renamed)."""
    manifest = build_manifest(load_checkpoint(checkpoint_root, subdir), dtype=dtype, any_model=any_model)
    output_root = Path(output_root)
    output_root.mkdir(parents=True, exist_ok=True)
    raw_dir = output_root / f"heartmula_raw_{dtype}"
    if raw_dir.exists() and not force:
        raise CheckpointError(f"{raw_dir}: output exists (use --force to replace it)")
    extras = extra_targets(manifest.extras, output_root, force)
    partial = output_root / f".{raw_dir.name}.{os.getpid()}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    started = time.perf_counter()
    try:
        names = [npy_file_name(t.name) for t in manifest.tensors]
        summary = dict(_core.export_npy(manifest.core_items(), str(partial), names, progress=progress))
        raw = Manifest(
            [
                ManifestTensor(t.name, partial / name, name[: -len(".npy")], t.dtype, t.dtype, t.shape, t.param_id)
                for t, name in zip(manifest.tensors, names)
            ],
            dict(manifest.metadata),
            {name: output_root / name for name in manifest.extras},
        )
        raw.save(partial / "manifest.json")
        replace_folder(partial, raw_dir)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    for source, dest in extras:
        copy_atomic(source, dest)
    summary.update(seconds=time.perf_counter() - started, output=str(raw_dir), manifest=str(raw_dir / "manifest.json"),
                   extras=[str(d) for _, d in extras])
    return summary
