"""Outputs that appear whole or not at all. Every temporary output, file or folder, is named by the
core's one scheme (`.NAME.PID.heartmula-partial` beside the destination), so that a run killed
outright leaves something the next run for the same destination recognises and removes."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Callable

from . import _core
from .errors import OutputError


def _stage(dest: Path, overwrite: bool, fill: Callable[[Path], object]) -> _core.StagedFile:
    """`dest`'s temporary sibling, written by `fill(temp_path)`; commit the result to put it in place."""
    staged = _core.StagedFile(dest, overwrite=overwrite)
    try:
        fill(staged.temp_path)
    except BaseException:
        staged.discard()
        raise
    return staged


def stage_copy(source: Path, dest: Path, *, overwrite: bool = True) -> _core.StagedFile:
    """A copy of `source`, staged for `dest`."""
    return _stage(dest, overwrite, lambda temp: shutil.copyfile(source, temp))


def write_text(path: Path, text: str, *, overwrite: bool = True) -> None:
    _stage(path, overwrite, lambda temp: temp.write_text(text, encoding="utf-8")).commit()


def commit_all(staged: Iterable[_core.StagedFile]) -> None:
    """Puts every staged file in place; if one fails, the ones after it are discarded."""
    files = list(staged)
    try:
        for f in files:
            f.commit()
    finally:
        for f in files:
            f.discard()  # a no-op for those committed


@contextlib.contextmanager
def staged_folder(dest: Path, *, overwrite: bool) -> Iterator[Path]:
    """Yields an empty temporary folder beside `dest`; when the block ends without an exception it
    replaces `dest` (an existing one only with `overwrite`), else it is removed."""
    if not dest.parent.is_dir():
        raise OutputError.at(dest, "output folder's parent does not exist")
    if (dest.exists() or dest.is_symlink()) and not overwrite:
        raise OutputError.at(dest, "output exists (use --force to replace it)")
    partial = _core.partial_path(dest)
    partial.mkdir()
    try:
        yield partial
        _core.commit_dir(partial, dest, overwrite=overwrite)
    finally:
        shutil.rmtree(partial, ignore_errors=True)  # gone already when committed
