"""Packing a manifest or a checkpoint folder: the Rust core writes the pack; this adds the
runtime files beside it without ever leaving a half-written file."""

from __future__ import annotations

import filecmp
import time
from pathlib import Path
from typing import Any, Callable

from . import _core
from .atomic import commit_all, stage_copy
from .checkpoint import load_checkpoint
from .errors import OutputError, SourceError
from .manifest import Manifest, build_manifest

ProgressFn = Callable[[int, int], None]


def extra_targets(extras: dict[str, Path], folder: Path, force: bool) -> list[tuple[Path, Path]]:
    """(source, destination in `folder`) for each runtime file still to copy; refuses to clobber
    a different file without force."""
    todo = []
    for name, source in extras.items():
        dest = folder / name
        if not source.is_file():
            raise SourceError.at(source, f"{name} not found")
        if dest.exists():
            if dest.samefile(source) or filecmp.cmp(source, dest, shallow=False):
                continue
            if not force:
                raise OutputError.at(dest, f"exists and differs from {source} (use --force to replace it)")
        todo.append((source, dest))
    return todo


def pack_manifest(
    manifest: Manifest,
    output: str | Path,
    *,
    force: bool = False,
    burn_version: str = "0.21",
    progress: ProgressFn | None = None,
    copy_extras: bool = True,
) -> dict[str, Any]:
    """Writes the pack described by `manifest` to `output` and copies the runtime files beside it;
    all of them appear together, once complete and on disk, or none does. Returns a summary (sizes,
    timings, how bytes were moved)."""
    output = Path(output)
    extras = extra_targets(manifest.extras, output.parent, force) if copy_extras else []
    started = time.perf_counter()
    summary, staged = _core.pack(
        manifest.core_items(),
        manifest.metadata,
        output,
        overwrite=force,
        burn_version=burn_version,
        progress=progress,
    )
    files = [staged]
    try:
        files += [stage_copy(source, dest) for source, dest in extras]
    except BaseException:
        for f in files:
            f.discard()
        raise
    commit_all(files)
    report = summary_dict(summary)
    report.update(
        seconds=time.perf_counter() - started,
        output=str(output),
        extras=[str(dest) for _, dest in extras],
        dtype=manifest.metadata.get("dtype", ""),
    )
    return report


def summary_dict(summary: _core.PackSummary) -> dict[str, Any]:
    fields = ("file_size", "tensors", "data_bytes", "kernel_copied", "buffer_copied", "converted")
    timings = ("plan_seconds", "data_seconds", "sync_seconds")
    return {name: getattr(summary, name) for name in fields + timings}


def pack_checkpoint(
    root: str | Path,
    output: str | Path,
    *,
    dtype: str = "f32",
    any_model: bool = False,
    subdir: str | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """One step from a checkpoint folder to a pack: scan, check, build the manifest, pack."""
    manifest = build_manifest(load_checkpoint(root, subdir), dtype=dtype, any_model=any_model)
    return pack_manifest(manifest, output, **kwargs)
