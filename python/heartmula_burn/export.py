"""The two-step workflow: export a checkpoint to one `.npy` per tensor plus a manifest, which
`pack --manifest` turns into the same pack, byte for byte, as the one-step pack."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

from . import _core
from .atomic import commit_all, stage_copy, staged_folder
from .checkpoint import load_checkpoint
from .manifest import Manifest, ManifestTensor, build_manifest
from .packing import ProgressFn, extra_targets, summary_dict


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
) -> dict[str, Any]:
    """Writes OUTPUT_ROOT/heartmula_raw_<dtype>/{<tensor>.npy..., manifest.json} plus the runtime
    files in OUTPUT_ROOT. The folder appears whole or not at all (built beside it, then renamed)."""
    manifest = build_manifest(load_checkpoint(checkpoint_root, subdir), dtype=dtype, any_model=any_model)
    output_root = Path(output_root)
    output_root.mkdir(parents=True, exist_ok=True)
    raw_dir = output_root / f"heartmula_raw_{dtype}"
    extras = extra_targets(manifest.extras, output_root, force)
    started = time.perf_counter()
    with staged_folder(raw_dir, overwrite=force) as partial:
        names = [npy_file_name(t.name) for t in manifest.tensors]
        summary = summary_dict(_core.export_npy(manifest.core_items(), partial, names, progress=progress))
        raw = Manifest(
            [
                ManifestTensor(t.name, partial / name, name[: -len(".npy")], t.dtype, t.dtype, t.shape, t.param_id)
                for t, name in zip(manifest.tensors, names)
            ],
            dict(manifest.metadata),
            {name: output_root / name for name in manifest.extras},
        )
        raw.save(partial / "manifest.json")
    commit_all(stage_copy(source, dest) for source, dest in extras)
    summary.update(
        seconds=time.perf_counter() - started,
        output=str(raw_dir),
        manifest=str(raw_dir / "manifest.json"),
        extras=[str(d) for _, d in extras],
    )
    return summary
