"""The Hugging Face Hub at both ends: fetch the three upstream repositories a conversion needs, and
push a publish-layout folder as one commit. Everything goes through `huggingface_hub` (its cache,
resumable downloads, progress bars, HF_TOKEN / `hf auth login`, HF_HUB_OFFLINE,
HF_ENDPOINT); nothing here speaks HTTP itself.

Files are downloaded into the Hugging Face cache, never copied out of it: a CKPT_ROOT made by
`download` holds symbolic links into the cache's snapshot folders. The 22 GB are stored once,
shared with every other tool that reads the cache (heartlib, ComfyUI nodes, `hf download`), a second
run downloads nothing, and HF_HUB_OFFLINE=1 works from the cache alone. The links also record where
each model came from (`models--ORG--NAME/snapshots/COMMIT/`), which packs then carry as
`source_repo` and `source_revision` (see `checkpoint.hub_source`). Every file fetched is checked
against the digest the Hub gave for it before anything reads it (`_integrity`): huggingface_hub
checks sizes only."""

from __future__ import annotations

import fnmatch
import os
import shutil
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, TypeVar

from . import _core
from ._atomic import check_replaceable, staged_folder
from ._checkpoint import hub_source
from ._errors import HubError, OutputError
from ._integrity import Checked, check_snapshot
from ._presets import PRESETS

if TYPE_CHECKING:
    from huggingface_hub import HfApi

T = TypeVar("T")

INSTALL_HINT = "the Hub commands need huggingface_hub: pip install 'heartmula-burn[hub]' (Python 3.10 or later)"
# The thread transfers run in; the CLI leaves without waiting for it when stopped by a signal.
THREAD_NAME = "heartmula-burn-hub"
# Free space kept beyond the download itself (the cache's metadata, the filesystem's own reserve).
SPACE_MARGIN = 256 << 20


@dataclass(frozen=True)
class RepoSpec:
    """One repository a conversion needs: where its files go in CKPT_ROOT (`folder`, or the root
    itself for the runtime files), which files to fetch and which must be there."""

    role: str
    repo: str
    revision: str | None
    folder: str | None
    patterns: tuple[str, ...]
    required: tuple[str, ...]

    @property
    def label(self) -> str:
        return f"{self.repo}@{self.revision or 'main'}"


MODEL_PATTERNS = ("config.json", "*.safetensors", "*.safetensors.index.json")
MODEL_REQUIRED = ("config.json", "*.safetensors")
RUNTIME_ROLE = "gen"  # the repository of the runtime files: --gen-repo, --gen-revision


def default_specs() -> list[RepoSpec]:
    """The repositories a conversion fetches, as the presets name them: each model's default
    release, laid out as upstream's README does (every release of a model lands in the model's
    first folder name, where heartlib looks for it), then the runtime files' repository."""
    specs = [
        RepoSpec(p.hub_role, p.releases[0].repo, None, p.folder_names[0], MODEL_PATTERNS, MODEL_REQUIRED)
        for p in PRESETS
    ]
    specs += [
        RepoSpec(RUNTIME_ROLE, p.runtime_repo, None, None, p.runtime_files, p.runtime_files)
        for p in PRESETS
        if p.runtime_repo is not None
    ]
    return specs


def repo_specs(
    repos: Mapping[str, str | None] | None = None, revisions: Mapping[str, str | None] | None = None
) -> list[RepoSpec]:
    """`default_specs` with the repository and revision of some roles (`lm`, `codec`, `gen`) replaced."""
    repos, revisions = repos or {}, revisions or {}
    return [
        replace(s, repo=repos.get(s.role) or s.repo, revision=revisions.get(s.role) or s.revision)
        for s in default_specs()
    ]


def release_repo(role: str, name: str) -> str:
    """The repository of the release `name` of the model whose Hub role is `role`."""
    preset = next(p for p in PRESETS if p.hub_role == role)
    return next(r.repo for r in preset.releases if r.name == name)


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


def _hf() -> Any:
    try:
        import huggingface_hub
        import huggingface_hub.constants
        import huggingface_hub.errors
        import huggingface_hub.utils  # the package loads its submodules lazily
    except ImportError:
        raise HubError(INSTALL_HINT) from None
    return huggingface_hub


def human(size: int) -> str:
    value = float(size)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.2f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


@contextmanager
def hub_errors(label: str, repo: str) -> Iterator[None]:
    """huggingface_hub's exceptions as one line naming the repository and what to do."""
    hf = _hf()
    errors = hf.errors
    endpoint = hf.constants.ENDPOINT
    try:
        yield
    except errors.GatedRepoError:
        raise HubError.at(
            label, f"gated repository: accept its licence at {endpoint}/{repo} and set HF_TOKEN (or `hf auth login`)"
        ) from None
    except errors.RepositoryNotFoundError:
        raise HubError.at(
            label, f"repository not found on {endpoint} (a private one needs HF_TOKEN or `hf auth login`)"
        ) from None
    except errors.RevisionNotFoundError:
        raise HubError.at(label, "revision not found (a branch, tag or commit of the repository)") from None
    except errors.RemoteEntryNotFoundError as e:
        raise HubError.at(label, f"file not found on the Hub: {_first_line(e)}") from None
    except errors.LocalEntryNotFoundError as e:
        offline = " (HF_HUB_OFFLINE is set)" if hf.constants.HF_HUB_OFFLINE else ""
        raise HubError.at(
            label,
            f"not complete in the local cache {hf.constants.HF_HUB_CACHE} and the Hub cannot be reached{offline}: "
            f"{_first_line(e)}",
        ) from None
    except errors.HfHubHTTPError as e:
        status = e.response.status_code if e.response is not None else "?"
        raise HubError.at(label, f"the Hub answered {status}: {_first_line(e)}") from None
    except errors.OfflineModeIsEnabled as e:
        raise HubError.at(label, f"HF_HUB_OFFLINE is set: {_first_line(e)}") from None
    except OSError:
        raise  # a full disk, a permission: the OSError (with its file name) says it best
    except Exception as e:
        if type(e).__module__.split(".")[0] in ("httpx", "httpx2", "httpcore", "httpcore2"):
            raise HubError.at(label, f"cannot reach {endpoint}: {_first_line(e) or type(e).__name__}") from None
        cause = e.__cause__
        if isinstance(cause, errors.HfHubHTTPError):  # an upload's "Error while uploading 'FILE' to the Hub."
            status = cause.response.status_code if cause.response is not None else "?"
            raise HubError.at(label, f"{_first_line(e)} The Hub answered {status}: {_first_line(cause)}") from None
        raise


def _first_line(e: BaseException) -> str:
    return next((line.strip() for line in str(e).splitlines() if line.strip()), "")


def _wanted(name: str, patterns: Sequence[str]) -> bool:
    # Top-level files only: a conversion reads nothing from sub-folders (no README images, no other formats).
    return "/" not in name and any(fnmatch.fnmatchcase(name, p) for p in patterns)


def _interruptible(fn: Callable[[], T]) -> T:
    """Runs `fn` in a daemon thread and waits in short slices, so that Ctrl-C and SIGTERM raise in
    the main thread at once: huggingface_hub's download pool joins its threads before it lets an
    exception out, which for a 5 GB shard would mean minutes. (Its files are written under
    temporary names and renamed when complete, so leaving mid-file leaves no half file.)"""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 (re-raised in the waiting thread)
            box["error"] = e

    worker = threading.Thread(target=run, name=THREAD_NAME, daemon=True)
    worker.start()
    while worker.is_alive():
        worker.join(0.1)
    if "error" in box:
        raise box["error"]
    return box["value"]  # type: ignore[no-any-return]


def plan(spec: RepoSpec) -> Fetched:
    """What fetching `spec` involves: the commit its revision resolves to and each file's size and
    whether it is cached, asked of the Hub without downloading anything. With the Hub out of reach
    (HF_HUB_OFFLINE, no network) the answer comes from the cache, as huggingface_hub itself does."""
    hf = _hf()
    with hub_errors(spec.label, spec.repo):
        try:
            listing = hf.snapshot_download(
                spec.repo, revision=spec.revision, allow_patterns=list(spec.patterns), dry_run=True
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
    commits = {f.commit_hash for f in listing}
    commit = commits.pop() if len(commits) == 1 else _resolve(spec)
    sizes = {f.filename: f.file_size or 0 for f in listing if f.filename in files}
    to_download = sum(f.file_size or 0 for f in listing if f.filename in files and f.will_download)
    fetched = Fetched(spec, commit, Path(hf.constants.HF_HUB_CACHE), files, sizes, to_download)
    _check_required(fetched)
    return fetched


def _resolve(spec: RepoSpec) -> str:
    hf = _hf()
    with hub_errors(spec.label, spec.repo):
        sha: str = hf.HfApi().repo_info(spec.repo, revision=spec.revision).sha
    return sha


def _plan_from_cache(spec: RepoSpec) -> Fetched:
    hf = _hf()
    with hub_errors(spec.label, spec.repo):
        folder = Path(
            hf.snapshot_download(
                spec.repo, revision=spec.revision, allow_patterns=list(spec.patterns), local_files_only=True
            )
        )
    files = sorted(p.name for p in folder.iterdir() if _wanted(p.name, spec.patterns))
    fetched = Fetched(spec, folder.name, folder, files, {name: (folder / name).stat().st_size for name in files})
    _check_required(fetched)
    return fetched


def _check_required(fetched: Fetched) -> None:
    spec = fetched.spec
    for pattern in spec.required:
        if not any(fnmatch.fnmatchcase(name, pattern) for name in fetched.files):
            raise HubError.at(
                f"{spec.repo}@{fetched.commit[:12]}",
                f"the repository has no {pattern} at its top level, which a conversion needs",
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


@contextmanager
def progress_bars(enabled: bool) -> Iterator[None]:
    """huggingface_hub's own progress bars, on or off for the block."""
    utils = _hf().utils
    was_disabled = utils.are_progress_bars_disabled()
    if enabled:
        yield
        return
    utils.disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            utils.enable_progress_bars()


def download(
    specs: Sequence[RepoSpec], *, say: Callable[[str], None] | None = None, quiet: bool = False
) -> list[Fetched]:
    """Plans every repository first (so that a missing file or a full disk stops the run before a
    byte is downloaded), then fetches each and checks its files against the Hub's digests."""
    with progress_bars(not quiet):
        plans = [plan(spec) for spec in specs]
        for p in plans:
            if say is not None:
                cached = sum(p.sizes.values()) - p.to_download
                say(
                    f"{p.spec.repo}: revision {p.spec.revision or 'main'} is commit {p.commit}; {len(p.files)} files, "
                    f"{human(p.to_download)} to download ({human(cached)} cached)"
                )
        check_space(plans)
        fetched = []
        for p in plans:
            fetched.append(check(fetch(p)))
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
    if path.is_dir():
        return all(_is_cache_link(p) for p in path.iterdir())
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


@dataclass(frozen=True)
class Upload:
    """What a push sends (or sent): the files with their sizes, and the commit it made."""

    repo: str
    revision: str
    files: dict[str, int]
    commit_url: str | None = None
    commit: str | None = None


def push_folder(
    folder: Path,
    repo_id: str,
    *,
    message: str,
    description: str = "",
    private: bool = False,
    revision: str | None = None,
    dry_run: bool = False,
    quiet: bool = False,
) -> Upload:
    """Uploads `folder` to `repo_id` in one commit (creating the repository, and the branch
    `revision`, when missing). The Hub routes each file through LFS or not by the folder's
    .gitattributes; a commit is all or nothing, so an upload that fails part-way leaves the
    repository as it was."""
    files = {p.relative_to(folder).as_posix(): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file()}
    branch = revision or "main"
    if dry_run:
        return Upload(repo_id, branch, files)
    client: HfApi = _hf().HfApi()
    label = f"{repo_id}@{branch}"
    with progress_bars(not quiet), hub_errors(label, repo_id):
        client.create_repo(repo_id, private=private, exist_ok=True)
        if revision is not None:
            client.create_branch(repo_id, branch=revision, exist_ok=True)
        info = _interruptible(
            lambda: client.upload_folder(
                repo_id=repo_id,
                folder_path=folder,
                commit_message=message,
                commit_description=description,
                revision=revision,
            )
        )
    return Upload(repo_id, branch, files, info.commit_url, info.oid)
