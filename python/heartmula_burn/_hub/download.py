"""Fetching: plan every repository first (nothing is downloaded before all are known good), download
into the Hugging Face cache, check every file against the Hub's digest, lay CKPT_ROOT out as links."""

from __future__ import annotations

import fnmatch
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from .. import _core
from .._atomic import check_replaceable, staged_folder
from .._checkpoint import hub_source
from .._errors import HubError, OutputError
from ._client import _hf, _interruptible, hub_errors, human, parallel_map, progress_bars
from .integrity import Checked, check_snapshot
from .repos import RepoSpec

# Free space kept beyond the download itself (the cache's metadata, the filesystem's own reserve).
SPACE_MARGIN = 256 << 20


@dataclass
class Fetched:
    """A repository as fetched: the commit the revision resolved to, the snapshot folder in the
    cache, the files a conversion uses, and how many bytes this run downloaded."""

    spec: RepoSpec
    commit: str
    snapshot: Path
    files: list[str]
    sizes: dict[str, int] = field(default_factory=dict)
    to_download: int = 0
    checked: Checked | None = None
    # The files not in the cache yet (their sizes make `to_download`).
    pending: list[str] = field(default_factory=list)
    # Shards left on the Hub, to be streamed into the packs (`pack --hub --stream`).
    streamed: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "role": self.spec.role,
            "repo": self.spec.repo,
            "revision": self.spec.revision or "main",
            "commit": self.commit,
            "snapshot": str(self.snapshot),
            "files": self.files,
            "downloaded_bytes": self.to_download,
            "checked_files": self.checked.files if self.checked else 0,
            "hashed_bytes": self.checked.hashed_bytes if self.checked else 0,
        }


def _wanted(name: str, patterns: Sequence[str]) -> bool:
    """Whether a file of the repository is one a pattern names, folder level by folder level: `*.json`
    takes top-level files only, `vae/*.safetensors` those of `vae/` (fnmatch's `*` alone would cross
    a `/`): a conversion reads nothing else (no README images, no other formats)."""
    return any(name.count("/") == p.count("/") and fnmatch.fnmatchcase(name, p) for p in patterns)


def plan(spec: RepoSpec) -> Fetched:
    """What fetching `spec` involves: the commit its revision resolves to and each file's size and
    whether it is cached, asked of the Hub without downloading anything. With the Hub out of reach
    (HF_HUB_OFFLINE, no network) the answer comes from the cache, as huggingface_hub itself does."""
    hf = _hf()
    with hub_errors(spec.label, spec.repo):
        # Resolved once, here: the fetch is pinned to this commit, and huggingface_hub records the
        # branch in the cache's refs/, so that a later offline run (ours or `hf`) finds the snapshot.
        revision = hf.HfApi().resolve_revision(spec.repo, revision=spec.revision)
        try:
            listing = hf.snapshot_download(
                spec.repo, revision=revision, allow_patterns=list(spec.patterns), dry_run=True
            )
        except hf.errors.DryRunError as e:
            cause = e.__cause__
            if isinstance(cause, (hf.errors.RepositoryNotFoundError, hf.errors.RevisionNotFoundError)):
                raise cause from None
            denied = isinstance(cause, hf.errors.HfHubHTTPError) and cause.response is not None
            if denied and cause.response.status_code in (401, 403):
                raise cause from None
            return _plan_from_cache(spec)
    files = sorted(f.filename for f in listing if _wanted(f.filename, spec.patterns))
    commit: str = revision.resolved
    sizes = {f.filename: f.file_size or 0 for f in listing if f.filename in files}
    pending = [f.filename for f in listing if f.filename in files and f.will_download]
    to_download = sum(sizes[name] for name in pending)
    fetched = Fetched(spec, commit, Path(hf.constants.HF_HUB_CACHE), files, sizes, to_download, pending=pending)
    _check_required(fetched)
    return fetched


def leave_shards(fetched: Fetched) -> Fetched:
    """The repository as fetched into the cache without its shards, which are named in `streamed`."""
    shards = [name for name in fetched.files if name.endswith(".safetensors")]
    rest = [name for name in fetched.files if name not in shards]
    pending = [name for name in fetched.pending if name in rest]
    to_download = sum(fetched.sizes[name] for name in pending)
    return replace(fetched, files=rest, pending=pending, to_download=to_download, streamed=shards)


def _plan_from_cache(spec: RepoSpec) -> Fetched:
    hf = _hf()
    with hub_errors(spec.label, spec.repo):
        folder = Path(
            hf.snapshot_download(
                spec.repo, revision=spec.revision, allow_patterns=list(spec.patterns), local_files_only=True
            )
        )
    present = (p.relative_to(folder).as_posix() for p in folder.rglob("*") if not p.is_dir())
    files = sorted(name for name in present if _wanted(name, spec.patterns))
    fetched = Fetched(spec, folder.name, folder, files, {name: (folder / name).stat().st_size for name in files})
    _check_required(fetched)
    return fetched


def _check_required(fetched: Fetched) -> None:
    spec = fetched.spec
    for pattern in spec.required:
        if not any(_wanted(name, [pattern]) for name in fetched.files):
            where = "at its top level" if "/" not in pattern else "there"
            raise HubError.at(
                f"{spec.repo}@{fetched.commit[:12]}",
                f"the repository has no {pattern} {where}, which a conversion needs",
            )


def check_space(plans: Sequence[Fetched]) -> None:
    """Refuses to start a download that cannot fit, saying how much it needs."""
    hf = _hf()
    needed = sum(p.to_download for p in plans)
    if needed == 0:
        return
    cache = Path(hf.constants.HF_HUB_CACHE)
    probe = cache
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < needed + SPACE_MARGIN:
        raise OutputError.at(
            cache, f"not enough free space: the download needs {human(needed)}, {human(free)} are free here"
        )


def fetch(fetched: Fetched) -> Fetched:
    """Downloads what `plan` found missing (nothing when all is cached) and returns the snapshot folder."""
    hf = _hf()
    spec = fetched.spec
    with hub_errors(f"{spec.repo}@{fetched.commit[:12]}", spec.repo):
        folder = _interruptible(
            lambda: hf.snapshot_download(spec.repo, revision=fetched.commit, allow_patterns=fetched.files)
        )
    fetched.snapshot = Path(folder)
    missing = [name for name in fetched.files if not (fetched.snapshot / name).is_file()]
    if missing:
        raise HubError.at(f"{spec.repo}@{fetched.commit[:12]}", f"{missing[0]} is missing after the download")
    return fetched


def check(fetched: Fetched) -> Fetched:
    """Compares every file of a fetched snapshot with the digest the Hub gave for it (sha256 for
    LFS files), with a progress bar of the bytes hashed; a mismatch is a HubError naming the file."""
    hf = _hf()
    label = f"{fetched.spec.repo}@{fetched.commit[:12]}"
    with hf.utils.tqdm(unit="B", unit_scale=True, unit_divisor=1024, desc=f"sha256 {fetched.spec.repo}") as bar:

        def expect(total: int) -> None:
            bar.total = total
            bar.refresh()

        fetched.checked = check_snapshot(label, fetched.snapshot, fetched.files, progress=bar.update, expect=expect)
    return fetched


def download(
    specs: Sequence[RepoSpec],
    *,
    say: Callable[[str], None] | None = None,
    quiet: bool = False,
    stream: bool = False,
    planned: Callable[[list[Fetched]], object] | None = None,
) -> list[Fetched]:
    """Plans every repository first (so that a missing file or a full disk stops the run before a
    byte is downloaded), then fetches them and checks their files against the Hub's digests, the
    repositories at once. `stream`: the shards stay on the Hub (named in each one's `streamed`),
    for `pack --hub --stream`; `planned(plans)` is told before the fetching starts."""
    with progress_bars(not quiet):
        plans = parallel_map(plan, specs)
        if stream:
            plans = [leave_shards(p) for p in plans]
        for p in plans:
            if say is not None:
                cached = sum(p.sizes[name] for name in p.files) - p.to_download
                streamed = sum(p.sizes[name] for name in p.streamed)
                say(
                    f"{p.spec.repo}: revision {p.spec.revision or 'main'} is commit {p.commit}; {len(p.files)} files, "
                    f"{human(p.to_download)} to download ({human(cached)} cached)"
                    + (f", {len(p.streamed)} shards ({human(streamed)}) to stream" if p.streamed else "")
                )
        check_space(plans)
        if planned is not None:
            planned(plans)
        fetched = parallel_map(lambda p: check(fetch(p)), plans)
        for p in fetched:
            if say is not None and p.checked is not None:
                earlier = p.checked.files - p.checked.hashed_files
                say(
                    f"{p.spec.repo}: {p.checked.files} files match the Hub's checksums "
                    f"({human(p.checked.hashed_bytes)} hashed now, {earlier} files unchanged since an earlier check)"
                )
        return fetched


def _is_cache_link(path: Path) -> bool:
    """A symbolic link into a Hugging Face cache snapshot: what `lay_out` writes."""
    return path.is_symlink() and hub_source(Path(os.readlink(path))) is not None


def _ours(path: Path) -> bool:
    """Whether `path` is (or is a folder of nothing but) links `lay_out` made: replaced without --force."""
    if path.is_symlink():
        return _is_cache_link(path)
    if path.is_dir():  # a named model's folders hold folders of links
        return all(_is_cache_link(p) or (p.is_dir() and _ours(p)) for p in path.iterdir())
    return False


def _check_replaceable(dest: Path, force: bool, *, folder: bool = False) -> None:
    """What `lay_out` may replace: links it made before; anything else only with --force, and never
    what --force must not replace (a FIFO, a device: `atomic.check_replaceable`)."""
    check_replaceable(dest, folder=folder)
    if os.path.lexists(dest) and not force and not _ours(dest):
        raise OutputError.at(dest, "exists and is not a download of this tool (use --force to replace it)")


def lay_out(root: Path, fetched: Sequence[Fetched], *, force: bool = False) -> list[Path]:
    """CKPT_ROOT as upstream's README lays it out, made of links into the cache's snapshots. Links
    this function made before are replaced; anything else only with `force`."""
    root.mkdir(parents=True, exist_ok=True)
    staged: list[_core.StagedFile] = []
    written = []
    try:
        for f in fetched:
            if f.spec.folder is not None:
                dest = root / f.spec.folder
                _check_replaceable(dest, force, folder=True)
                with staged_folder(dest, overwrite=True) as partial:
                    for name in f.files:
                        (partial / name).parent.mkdir(parents=True, exist_ok=True)
                        os.symlink(f.snapshot / name, partial / name)
                written.append(dest)
            else:
                for name in f.files:
                    dest = root / name
                    _check_replaceable(dest, force)
                    link = _core.StagedFile(dest, overwrite=True)
                    staged.append(link)
                    os.unlink(link.temp_path)  # the staged name, taken over by the link
                    os.symlink(f.snapshot / name, link.temp_path)
                    written.append(dest)
        for link in staged:
            link.commit()
    finally:
        for link in staged:
            link.discard()
    return written
