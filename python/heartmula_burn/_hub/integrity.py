"""Every file a Hub command fetched, checked against the digest the Hub gave for it, before
anything reads it.

huggingface_hub stores each file of its cache once, as a blob named by the ETag the Hub sent for
it: for an LFS file (every shard) the sha256 of its bytes (`X-Linked-Etag`), for a regular file
its git blob id (sha1 of `blob <size>\\0` and the bytes). The client checks a download's size, not
these digests, so a shard altered on the way (a proxy, a CDN, a disk) would be packed and
published as if it were upstream's. Here each blob is hashed and compared with its name. A blob
that matched is marked with an extended attribute holding its size, mtime and inode, so that it is
hashed once, not on every run: a later run skips it unless the file changed (or the filesystem
keeps no extended attributes, where it is hashed each time). A blob that does not match is removed
from the cache, so that the next run downloads it anew."""

from __future__ import annotations

import hashlib
import os
import re
import stat
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._errors import HubError
from ._client import wait_for

CHUNK = 8 << 20
# Where a blob that matched its name records it: "size:mtime_ns:inode" of the file it hashed.
MARK = "user.heartmula_burn.checked"
_SHA256 = re.compile(r"[0-9a-f]{64}")
_GIT_SHA1 = re.compile(r"[0-9a-f]{40}")


@dataclass(frozen=True)
class Blob:
    """A file of a snapshot, as the cache holds it: the blob the snapshot's link points at and the
    digest its name promises (`algorithm` "sha256" for LFS files, "git-sha1" for regular ones)."""

    name: str
    path: Path
    algorithm: str
    digest: str


@dataclass(frozen=True)
class Checked:
    """What a check did: how many files it compared and how many bytes it hashed (files marked as
    checked by an earlier run are compared by their mark, and hashed again only when changed)."""

    files: int
    hashed_files: int
    hashed_bytes: int


def blob_of(label: str, snapshot: Path, name: str) -> Blob:
    """The blob behind `snapshot/name` and the digest its name promises. Anything but a link into
    the repository's own `blobs/` folder, named by a digest, cannot be checked and is refused."""
    link = snapshot / name
    blobs = snapshot.parent.parent / "blobs"
    if not link.is_symlink():
        raise HubError.at(label, f"{name}: not a link into the Hugging Face cache's blobs, so it cannot be checked")
    target = Path(os.path.normpath(link.parent / os.readlink(link)))
    if target.parent != Path(os.path.normpath(blobs)):
        raise HubError.at(label, f"{name}: links outside the repository's blobs ({target}), so it cannot be checked")
    if _SHA256.fullmatch(target.name):
        return Blob(name, target, "sha256", target.name)
    if _GIT_SHA1.fullmatch(target.name):
        return Blob(name, target, "git-sha1", target.name)
    raise HubError.at(label, f"{name}: the cache names it {target.name!r}, which is no sha256 or git blob id")


def file_digest(
    path: Path,
    algorithm: str,
    progress: Callable[[int], object] | None = None,
    stop: threading.Event | None = None,
) -> tuple[str, os.stat_result]:
    """The hex digest of a regular file (never a link, FIFO or device) and the stat it was read under."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb", buffering=0) as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise HubError.at(path, "is not a regular file")
        digest: Any = hashlib.sha256() if algorithm == "sha256" else hashlib.sha1(b"blob %d\0" % st.st_size)
        while chunk := f.read(CHUNK):
            if stop is not None and stop.is_set():
                raise InterruptedError
            digest.update(chunk)
            if progress is not None:
                progress(len(chunk))
    return digest.hexdigest(), st


def _stamp(st: os.stat_result) -> bytes:
    return f"{st.st_size}:{st.st_mtime_ns}:{st.st_ino}".encode()


def _marked(blob: Blob) -> bool:
    try:
        st = os.stat(blob.path, follow_symlinks=False)
        return stat.S_ISREG(st.st_mode) and os.getxattr(blob.path, MARK, follow_symlinks=False) == _stamp(st)
    except OSError:  # no mark yet, or a filesystem without extended attributes
        return False


def _mark(blob: Blob, st: os.stat_result) -> None:
    try:
        os.setxattr(blob.path, MARK, _stamp(st), follow_symlinks=False)
    except OSError:  # read-only cache, no extended attributes: the next run hashes it again
        pass


def _check_one(label: str, snapshot: Path, blob: Blob, progress: Callable[[int], object], stop: threading.Event) -> int:
    got, st = file_digest(blob.path, blob.algorithm, progress, stop)
    if got != blob.digest:
        for path in (snapshot / blob.name, blob.path):  # the link, then the bad blob: the next run fetches it anew
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        raise HubError.at(
            label,
            f"{blob.name}: the bytes downloaded have {blob.algorithm} {got}, the Hub gave {blob.digest}; "
            "removed from the cache, run again to download it anew",
        )
    _mark(blob, st)
    return st.st_size


def check_snapshot(
    label: str,
    snapshot: Path,
    names: Sequence[str],
    *,
    progress: Callable[[int], object] | None = None,
    expect: Callable[[int], object] | None = None,
    workers: int = 0,
) -> Checked:
    """Compares every file `names` of a cache snapshot with the digest the Hub gave for it, in
    `workers` threads (default: one per core, at most 4; hashlib releases the GIL). `expect` is
    told how many bytes will be hashed, `progress` each chunk hashed. Raises HubError naming the
    repository (`label`), the file and both digests on the first mismatch. Waits in short slices,
    so that Ctrl-C and SIGTERM stop it at once."""
    blobs = [blob_of(label, snapshot, name) for name in names]
    todo = sorted((b for b in blobs if not _marked(b)), key=lambda b: -_size(b.path))
    if expect is not None:
        expect(sum(_size(b.path) for b in todo))
    count = max(1, min(len(todo), workers or min(4, os.cpu_count() or 1)))
    stop = threading.Event()
    lock = threading.Lock()
    hashed: list[int] = []
    failures: list[BaseException] = []

    def report(n: int) -> None:
        if progress is not None:
            with lock:
                progress(n)

    def work() -> None:
        while not stop.is_set():
            with lock:
                if not todo:
                    return
                blob = todo.pop(0)
            try:
                size = _check_one(label, snapshot, blob, report, stop)
            except BaseException as e:  # noqa: BLE001 (raised again in the waiting thread)
                with lock:
                    failures.append(e)
                stop.set()
                return
            with lock:
                hashed.append(size)

    threads = [threading.Thread(target=work, name="heartmula-burn-check", daemon=True) for _ in range(count)]
    for t in threads:
        t.start()
    try:
        wait_for(threads)
    finally:
        stop.set()  # a signal in the wait: the workers stop at their next chunk
    real = [e for e in failures if not isinstance(e, InterruptedError)]
    if real:
        raise real[0]
    return Checked(len(blobs), len(hashed), sum(hashed))


def _size(path: Path) -> int:
    try:
        return os.stat(path, follow_symlinks=False).st_size
    except OSError:
        return 0
