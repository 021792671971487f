"""Packing a manifest or a checkpoint folder: the Rust core writes the pack; this adds the
runtime files beside it without ever leaving a half-written file."""

from __future__ import annotations

import filecmp
import os
import shutil
import time
from pathlib import Path
from typing import Callable

from . import _core
from .checkpoint import load_checkpoint
from .errors import CheckpointError
from .manifest import Manifest, build_manifest

ProgressFn = Callable[[int, int], None]


def extra_targets(extras: dict[str, Path], folder: Path, force: bool) -> list[tuple[Path, Path]]:
    """(source, destination in `folder`) for each runtime file still to copy; refuses to clobber
    a different file without force."""
    todo = []
    for name, source in extras.items():
        dest = folder / name
        if not source.is_file():
            raise CheckpointError(f"{source}: {name} not found")
        if dest.exists():
            if dest.samefile(source) or filecmp.cmp(source, dest, shallow=False):
                continue
            if not force:
                raise CheckpointError(f"{dest}: exists and differs from {source} (use --force to replace it)")
        todo.append((source, dest))
    return todo


def copy_atomic(source: Path, dest: Path) -> None:
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    try:
        shutil.copyfile(source, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def pack_manifest(
    manifest: Manifest,
    output: str | Path,
    *,
    force: bool = False,
    burn_version: str = "0.21",
    progress: ProgressFn | None = None,
    copy_extras: bool = True,
) -> dict:
    """Writes the pack described by `manifest` to `output` (atomically) and copies the runtime
    files beside it. Returns a summary dict (sizes, timings, how bytes were moved)."""
    output = Path(output)
    extras = extra_targets(manifest.extras, output.parent, force) if copy_extras else []
    started = time.perf_counter()
    summary = dict(
        _core.pack(
            manifest.core_items(),
            manifest.metadata,
            str(output),
            overwrite=force,
            burn_version=burn_version,
            progress=progress,
        )
    )
    summary["seconds"] = time.perf_counter() - started
    for source, dest in extras:
        copy_atomic(source, dest)
    summary["output"] = str(output)
    summary["extras"] = [str(dest) for _, dest in extras]
    summary["dtype"] = manifest.metadata.get("dtype", "")
    return summary


def pack_checkpoint(
    root: str | Path,
    output: str | Path,
    *,
    dtype: str = "f32",
    any_model: bool = False,
    subdir: str | None = None,
    **kwargs,
) -> dict:
    """One step from a checkpoint folder to a pack: scan, check, build the manifest, pack."""
    manifest = build_manifest(load_checkpoint(root, subdir), dtype=dtype, any_model=any_model)
    return pack_manifest(manifest, output, **kwargs)


def replace_folder(new: Path, dest: Path) -> None:
    """Renames `new` to `dest`; an existing `dest` is moved aside first and removed afterwards."""
    old = None
    if dest.exists():
        old = dest.with_name(f".{dest.name}.{os.getpid()}.old")
        os.rename(dest, old)
    try:
        os.rename(new, dest)
    except BaseException:
        if old is not None:
            os.rename(old, dest)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
