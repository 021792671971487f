"""Outputs that appear whole or not at all. Every temporary output, file or folder, is named by the
core's one scheme (`.NAME.PID.heartmula-partial` beside the destination), so that a run killed
outright leaves something the next run for the same destination recognises and removes.

Nothing is ever written by opening an existing name, which may be a link to someone else's file:
files are written under fresh names and renamed over their destinations."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Callable

from . import _core
from ._errors import OutputError, SourceError
from ._fields import open_regular

COPY_CHUNK = 8 << 20
_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a plain file")


def check_replaceable(dest: Path, *, folder: bool = False) -> None:
    """Refuses an existing `dest` that --force must not replace: only regular files and symbolic
    links (the link itself, never its target) may be, and folders when `folder` (a folder output).
    A device, FIFO or socket is refused whatever the options, without opening it."""
    try:
        mode = os.lstat(dest).st_mode
    except OSError:
        return  # missing (or unreachable: writing it fails with its own error)
    if stat.S_ISREG(mode) or stat.S_ISLNK(mode) or (folder and stat.S_ISDIR(mode)):
        return
    if folder:
        raise OutputError.at(dest, f"is {_kind(mode)}, not a folder: --force replaces only folders and links")
    raise OutputError.at(dest, f"is {_kind(mode)}, not a regular file: --force replaces only files and links")


def check_destinations(dests: Iterable[Path], *, force: bool) -> None:
    """Every file a run will write may be written: nothing --force cannot replace, and nothing at
    all without --force."""
    for dest in dests:
        check_replaceable(dest)
        if not force and os.path.lexists(dest):
            raise OutputError.at(dest, "output exists (use --force to replace it)")


def copy_file(source: Path, target: Path, dest: Path | None = None, *, fresh: bool = True) -> None:
    """Copies `source` into `target`: a new file (`fresh`: refused if the name exists, so that a
    link there is never written through), or the empty temporary file a `StagedFile` made. Errors
    name `source` when reading it and `dest` (the final name; default `target`) when writing."""
    dest = dest or target
    try:
        src = open_regular(source, SourceError, source.name)
    except FileNotFoundError:
        raise SourceError.at(source, "not found") from None
    except OSError as e:
        raise SourceError.at(source, f"cannot read: {e.strerror or e}") from None
    try:
        flags = os.O_WRONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
        flags |= os.O_CREAT | os.O_EXCL if fresh else os.O_TRUNC
        try:
            out = os.open(target, flags, 0o666)
        except OSError as e:
            raise OutputError.at(dest, f"cannot write: {e.strerror or e}") from None
        try:
            while True:
                try:
                    chunk = os.read(src, COPY_CHUNK)
                except OSError as e:
                    raise SourceError.at(source, f"cannot read: {e.strerror or e}") from None
                if not chunk:
                    break
                view = memoryview(chunk)
                while view:
                    try:
                        view = view[os.write(out, view) :]
                    except OSError as e:
                        raise OutputError.at(dest, f"cannot write: {e.strerror or e}") from None
            try:
                os.fsync(out)
            except OSError as e:
                raise OutputError.at(dest, f"cannot write: {e.strerror or e}") from None
        finally:
            os.close(out)
    finally:
        os.close(src)


def write_new(path: Path, data: bytes) -> None:
    """Writes `data` to `path`, a name that must not exist yet (a link there is never written through)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), 0o666)
    except OSError as e:
        raise OutputError.at(path, f"cannot write: {e.strerror or e}") from None
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except OSError as e:
        raise OutputError.at(path, f"cannot write: {e.strerror or e}") from None
    finally:
        os.close(fd)


def _stage(dest: Path, overwrite: bool, fill: Callable[[Path], object]) -> _core.StagedFile:
    """`dest`'s temporary sibling, written by `fill(temp_path)`; commit the result to put it in place."""
    check_replaceable(dest)
    staged = _core.StagedFile(dest, overwrite=overwrite)
    try:
        fill(staged.temp_path)
    except BaseException:
        staged.discard()
        raise
    return staged


def stage_copy(source: Path, dest: Path, *, overwrite: bool) -> _core.StagedFile:
    """A copy of `source`, staged for `dest` (which, without `overwrite`, must not exist when committed)."""
    return _stage(dest, overwrite, lambda temp: copy_file(source, temp, dest, fresh=False))


def write_text(path: Path, text: str, *, overwrite: bool = True) -> None:
    _stage(path, overwrite, lambda temp: temp.write_text(text, encoding="utf-8")).commit()


def commit_all(staged: Iterable[_core.StagedFile], *, overwrite: bool) -> None:
    """Puts every staged file in place, all or nothing. Without `overwrite`: if any destination
    appeared meanwhile, none is put in place; and if one still cannot be (it appeared during the
    commit itself), those already put in place are removed again (only the files this call
    created, never another's). With `overwrite`, files replaced cannot be given back: a failure
    part-way leaves the ones before it in place. Whatever is not committed is discarded."""
    files = list(staged)
    try:
        for f in files:
            check_replaceable(f.destination)
        if not overwrite:
            appeared = next((f.destination for f in files if os.path.lexists(f.destination)), None)
            if appeared is not None:
                raise OutputError.at(
                    appeared,
                    "output exists: it appeared while this run wrote its outputs, none of which was put in place "
                    "(use --force to replace it)",
                )
        done: list[tuple[Path, tuple[int, int]]] = []
        try:
            for f in files:
                st = os.stat(f.temp_path)
                f.commit()
                done.append((f.destination, (st.st_dev, st.st_ino)))
        except BaseException:
            if not overwrite:
                for dest, identity in reversed(done):
                    with contextlib.suppress(OSError):
                        st = os.lstat(dest)
                        if (st.st_dev, st.st_ino) == identity:  # still the file this call put there
                            os.unlink(dest)
            raise
    finally:
        for f in files:
            f.discard()  # a no-op for those committed


@contextlib.contextmanager
def staged_folder(dest: Path, *, overwrite: bool) -> Iterator[Path]:
    """Yields an empty temporary folder beside `dest`; when the block ends without an exception it
    replaces `dest` (an existing one only with `overwrite`), else it is removed. The folder is
    locked (flock) while it is filled, as the core's partial files are, so that another run's sweep
    of dead runs' partials leaves it alone."""
    if not dest.parent.is_dir():
        raise OutputError.at(dest, "output folder's parent does not exist")
    check_replaceable(dest, folder=True)
    if (dest.exists() or dest.is_symlink()) and not overwrite:
        raise OutputError.at(dest, "output exists (use --force to replace it)")
    partial = _core.partial_path(dest)
    partial.mkdir()
    lock = os.open(partial, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    try:
        with contextlib.suppress(OSError):  # a filesystem without locks: nothing can take it either
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        yield partial
        check_replaceable(dest, folder=True)
        _core.commit_dir(partial, dest, overwrite=overwrite)
    finally:
        os.close(lock)
        shutil.rmtree(partial, ignore_errors=True)  # gone already when committed
