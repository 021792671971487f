"""The two-step workflow: export a checkpoint to one `.npy` per tensor plus a manifest, which
`pack --manifest` turns into the same pack, byte for byte, as the one-step pack."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

from . import _core
from ._atomic import check_destinations, commit_all, copy_file, stage_copy, staged_folder
from ._manifest import Manifest, ManifestTensor
from ._packing import ProgressFn, plan_checkpoint
from ._runtime_files import extra_targets, runtime_notes


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
    """Writes OUTPUT_ROOT/<model>_raw_<dtype>/{<tensor>.npy..., manifest.json} for every model of
    the checkpoint (heartmula_raw_f32, heartcodec_raw_f32), plus the runtime files in OUTPUT_ROOT.
    A manifest may only refer to files inside its folder, so the runtime files its pack needs are
    copied into that folder as well. The folders appear whole or not at all (built beside them,
    then renamed)."""
    jobs, notes = plan_checkpoint(checkpoint_root, None, dtype=dtype, any_model=any_model, subdir=subdir)
    output_root = Path(output_root)
    # Every runtime file is checked before anything is written (extra_targets), even those already in place.
    extras = [
        pair
        for job in jobs
        for pair in extra_targets(job.manifest.extras, output_root, force, job.manifest.metadata.get("model"))
    ]
    extras = list({dest: (source, dest) for source, dest in extras}.values())
    notes = [*notes, *dict.fromkeys(n for job in jobs for n in runtime_notes(job.manifest.extras))]
    output_root.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    written, manifests = [], []
    with contextlib.ExitStack() as folders:
        for job in jobs:
            raw_dir = output_root / f"{job.output.stem}_raw_{job.dtype}"  # heartmula_raw_f32, heartcodec_raw_f32
            partial = folders.enter_context(staged_folder(raw_dir, overwrite=force))
            names = [npy_file_name(t.name) for t in job.manifest.tensors]
            _core.export_npy(job.manifest.core_items(), partial, names, progress=progress)
            for name, source in job.manifest.extras.items():
                copy_file(source, partial / name, raw_dir / name)
            raw = Manifest(
                [
                    ManifestTensor(t.name, partial / name, name[: -len(".npy")], t.dtype, t.dtype, t.shape, t.param_id)
                    for t, name in zip(job.manifest.tensors, names)
                ],
                dict(job.manifest.metadata),
                {name: partial / name for name in job.manifest.extras},
            )
            raw.save(partial / "manifest.json")
            written.append(str(raw_dir))
            manifests.append(str(raw_dir / "manifest.json"))
        # The runtime files are staged before the folders are put in place, and none of them put in
        # place if one appeared meanwhile (without --force).
        check_destinations((dest for _, dest in extras), force=force)
        staged: list[_core.StagedFile] = []
        try:
            for source, dest in extras:
                staged.append(stage_copy(source, dest, overwrite=force))
        except BaseException:
            for f in staged:
                f.discard()
            raise
    commit_all(staged, overwrite=force)
    return {
        "outputs": written,
        "manifests": manifests,
        "extras": [str(d) for _, d in extras],
        "notes": notes,
        "seconds": time.perf_counter() - started,
    }
