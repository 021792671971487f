"""A small, real Hugging Face Hub server for the test suite (standard library only).

`HubServer` listens on 127.0.0.1 over plain HTTP so that the real `huggingface_hub` client, pointed at it with
`HF_ENDPOINT=HubServer.url` (and `HF_HUB_DISABLE_XET=1` for uploads), downloads from it and uploads to it.
Written against and checked with huggingface_hub 2.4.0 (httpx2 transport); the header and JSON fields below are
the ones that client reads (`file_download.py`, `hf_api.py`, `_commit_api.py`, `lfs.py`, `_snapshot_download.py`,
`utils/_http.py`, `utils/_pagination.py`).

Endpoints (model repos only; `{repo}` is `name` or `org/name`; `{rev}` is a branch, tag, `refs/...` name or a
commit sha (full, or an unambiguous prefix of 7+ hex digits), URL-quoted as the client sends it):

Downloads
- `GET  /api/models/{repo}` and `/api/models/{repo}/revision/{rev}`: `id`, `sha`, `private`, `gated`,
  `siblings[{rfilename}]`; with `?blobs=true` each sibling also has `size`, `blobId` and, for LFS files,
  `lfs{sha256,size,pointerSize}`.
- `GET  /api/models/{repo}/tree/{rev}[/{path}]?recursive=true|false`: one page (no `Link` header) of
  `{type: file|directory, path, oid, size, lfs{oid,size,pointerSize}?}`.
- `POST /api/models/{repo}/paths-info/{rev}` (form or JSON `paths`), `GET /api/models/{repo}/refs[?include_prs=1]`,
  `GET /api/models/{repo}/commits/{rev}`.
- `HEAD|GET /{repo}/resolve/{rev}/{path}`: regular files are answered directly (`X-Repo-Commit`,
  `ETag: "<git blob sha1>"`, `Content-Length`, `Accept-Ranges`; `Range` -> 206 + `Content-Range`, 416 when out
  of range). LFS files are answered like the real Hub: `302` with `X-Repo-Commit`, `X-Linked-Etag: "<sha256>"`,
  `X-Linked-Size` and a `Location` on a second listener of this server (another port, so the client treats it as a
  CDN: it stops following the HEAD there, drops the Authorization header and GETs the signed URL directly). The
  "CDN" URL has the same `/{repo}/resolve/{commit}/{path}` path plus a `sig` query parameter.
- Errors carry `X-Error-Code` / `X-Error-Message` and a JSON `{"error": ...}` body: `RepoNotFound` (401 without a
  token, 404 with one), `RevisionNotFound` (404), `EntryNotFound` (404, with `X-Repo-Commit`), `GatedRepo` (401
  without a token, 403 with a token not in `tokens`). Gated repos show their info and tree to anyone (as the Hub
  does); only their files are gated. Private repos need a valid token for everything. A token not in `tokens` is
  ignored on public repos (the real Hub would answer 401 to any invalid token).

Uploads (`create_repo`, `create_branch`, `create_tag`, `upload_folder`/`create_commit` with `HF_HUB_DISABLE_XET=1`)
- `POST /api/repos/create` (`name`, `organization`, `visibility`/`private`; 409 if it exists). A new repo gets an
  initial commit holding a default `.gitattributes`, as on the Hub. Without an organization the repo goes to the
  token owner's namespace, `test-user` (as on the Hub; the 2.4 client cannot commit to a repo id without a
  namespace anyway: it parses `commitUrl` and refuses single-segment repo URLs).
- `GET  /api/whoami-v2`, `POST /api/validate-yaml` (always valid), `GET /api/agent-harnesses` (an empty registry:
  the client fetches it, at most once a day per HF_HOME, when it builds its user agent). The Xet token routes answer
  404: `upload_folder` needs `HF_HUB_DISABLE_XET=1` (with hf_xet installed it asks `xet-write-token` otherwise).
- `POST /api/models/{repo}/preupload/{rev}`: `uploadMode` `lfs` for files over 10 MiB or named `*.safetensors` /
  `*.bpk`, else `regular`; `shouldIgnore: false`; `oid` of the file already at that path (sha256 for LFS, git sha1
  otherwise) so the client skips unchanged files.
- `POST /{repo}.git/info/lfs/objects/batch` (git-lfs batch API, basic transfer): an `upload` action pointing at
  `PUT /lfs-upload/{oid}?repo=...&sig=...` on this server; objects the repo already has get no action.
  The PUT checks size and sha256 (400 on mismatch) and stores the object in a temporary directory.
- `POST /api/models/{repo}/commit/{rev}[?create_pr=1]`: NDJSON `header` (`summary`, `description`,
  `parentCommit`: 412 unless it is the branch head), `file` (base64), `lfsFile` (400 unless its object was
  uploaded to / is held by this repo), `deletedFile` / `deletedFolder` (404 EntryNotFound if absent). All or
  nothing. Answers `commitOid`, `commitUrl`, `success` (+ `pullRequestUrl`/`pullRequestRevision` with create_pr).
- `POST /api/models/{repo}/branch/{branch}` (`startingPoint`; 409 if it exists), `POST /api/models/{repo}/tag/{rev}`.
Write endpoints need a token from `tokens` (401 otherwise) unless `write_requires_token` is set to False.

Test hooks: `requests` (every request of both listeners, raw path without query), `downloads()`, `tokens`,
`fail_lfs_upload` (the object PUT of these repo paths is answered 403 after its body was read; the path is found by
matching the object's size and first 512 bytes against the `sample`s of the preupload calls), `drop_after` (close
the connection after that many body bytes of the next GET of that path, once), `tamper` (GET bodies of these repo
paths are served with the byte at the given offset flipped, every time, as a corrupted CDN object would be, while
the advertised sha256 / git sha1 stay those of the true bytes), `slow_bytes_per_s` (throttle file bodies; read per
chunk so a test may change it mid-transfer), `ranges` ((path, Range header) of file requests sent with a Range),
`cdn_authorized` (paths of requests that reached the second listener carrying a token), `errors` (tracebacks of unexpected server errors: a test may assert it stays empty), `range_faults` (for a repo
path, faults answered in turn to its ranged GETs: "whole"
(200 and the whole file), "shifted" (206 with the range one byte later than asked), "cut" (the connection closed
after half the range), "expire" (403, and the locations of that path signed so far expire), or a status such as "416"
(with ":N" after it, "429:4", a Retry-After of N), "pass" (answered as asked: lets a fault reach a later GET), "trickle"
(100 kB, then one byte every 5 s until the client hangs up). `outage_until` (a `time.monotonic()` time: until
then every ranged GET of a file is answered 503, as a CDN outage), `body_bytes` (per repo path, file body bytes
sent), `open_bodies` / `max_open_bodies` (file bodies being sent now, and the most at once since last reset).

What the 2.4.0 client does that tests should know: it reads downloads in 10 MiB chunks and, after a dropped
connection, sleeps 1 s and resumes with `Range: bytes=<last full 10 MiB boundary>-` (so a `drop_after` below
10 MiB restarts from byte 0, without a Range); it checks the downloaded size, not the sha256; a second
`snapshot_download` of a cached revision makes one request (repo info; the tree listing is cached per commit);
`snapshot_download` GETs files by commit sha, `hf_hub_download` by the revision it was given; `upload_folder`
validates README.md twice; `GET /api/agent-harnesses` shows up in `requests`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import secrets
import shutil
import socket
import tempfile
import threading
import time
import traceback
import weakref
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, Union, cast
from urllib.parse import parse_qs, quote, unquote, urlsplit

LFS_THRESHOLD = 10 * 1024 * 1024
LFS_SUFFIXES = (".safetensors", ".bpk")
CHUNK = 64 * 1024
# The "trickle" fault: this many bytes at full speed, then one byte per TRICKLE_SECONDS.
TRICKLE_AFTER = 100_000
TRICKLE_SECONDS = 5.0
DEFAULT_TOKEN = "hf_test_token"
USER_NAME = "test-user"

# The `.gitattributes` the Hub puts in the first commit of a new repo (abridged).
_GITATTRIBUTES_PATTERNS = (
    "*.7z",
    "*.arrow",
    "*.bin",
    "*.bz2",
    "*.ckpt",
    "*.ftz",
    "*.gz",
    "*.h5",
    "*.joblib",
    "*.lfs.*",
    "*.mlmodel",
    "*.model",
    "*.msgpack",
    "*.npy",
    "*.npz",
    "*.onnx",
    "*.ot",
    "*.parquet",
    "*.pb",
    "*.pickle",
    "*.pkl",
    "*.pt",
    "*.pth",
    "*.rar",
    "*.safetensors",
    "saved_model/**/*",
    "*.tar.*",
    "*.tar",
    "*.tflite",
    "*.tgz",
    "*.wasm",
    "*.xz",
    "*.zip",
    "*.zst",
    "*tfevents*",
)
DEFAULT_GITATTRIBUTES = "".join(f"{p} filter=lfs diff=lfs merge=lfs -text\n" for p in _GITATTRIBUTES_PATTERNS).encode()

_API_SUBROUTES = {
    "revision",
    "tree",
    "paths-info",
    "refs",
    "commits",
    "preupload",
    "commit",
    "branch",
    "tag",
    "xet-write-token",
    "xet-read-token",
}
_RANGE_RE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$", re.IGNORECASE)
_HEX40 = re.compile(r"^[0-9a-f]{40}$")
_HEX_PREFIX = re.compile(r"^[0-9a-f]{7,40}$")

Content = Union[bytes, Path]


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def _git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class _Blob:
    """Immutable file content, in memory (bytes) or on disk (Path, streamed in chunks)."""

    def __init__(self, content: Content, *, sha256: str | None = None, git_sha1: str | None = None) -> None:
        self.data: bytes | None = None
        self.path: Path | None = None
        if isinstance(content, Path):
            self.path = content
            self.size = content.stat().st_size
        else:
            self.data = bytes(content)
            self.size = len(self.data)
        if sha256 is None or git_sha1 is None:
            h256 = hashlib.sha256()
            h1 = hashlib.sha1(b"blob %d\0" % self.size)
            for chunk in self.chunks(0, self.size):
                h256.update(chunk)
                h1.update(chunk)
            sha256, git_sha1 = h256.hexdigest(), h1.hexdigest()
        self.sha256: str = sha256
        self.git_sha1: str = git_sha1

    def chunks(self, start: int, end: int, chunk_size: int = CHUNK) -> Iterator[bytes]:
        """Bytes [start, end) in chunks."""
        if self.data is not None:
            for pos in range(start, end, chunk_size):
                yield self.data[pos : min(pos + chunk_size, end)]
            return
        assert self.path is not None
        with open(self.path, "rb") as f:
            f.seek(start)
            remaining = end - start
            while remaining > 0:
                chunk = f.read(min(chunk_size, remaining))
                if not chunk:
                    raise OSError(f"{self.path} is shorter than when it was added")
                remaining -= len(chunk)
                yield chunk

    def read(self) -> bytes:
        if self.data is not None:
            return self.data
        return b"".join(self.chunks(0, self.size))


class _Entry:
    """A file of a commit: its content and whether it was committed as an LFS object."""

    def __init__(self, blob: _Blob, lfs: bool) -> None:
        self.blob = blob
        self.lfs = lfs
        self.pointer = _lfs_pointer(blob.sha256, blob.size) if lfs else b""

    @property
    def oid(self) -> str:
        """Git object id of the entry (for LFS files: of the pointer file)."""
        return _git_blob_sha1(self.pointer) if self.lfs else self.blob.git_sha1

    @property
    def etag(self) -> str:
        return self.blob.sha256 if self.lfs else self.blob.git_sha1

    def tree_json(self, path: str) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "file", "oid": self.oid, "size": self.blob.size, "path": path}
        if self.lfs:
            out["lfs"] = {"oid": self.blob.sha256, "size": self.blob.size, "pointerSize": len(self.pointer)}
        return out


class _Commit:
    def __init__(self, sha: str, parents: list[str], message: str, files: dict[str, _Entry]) -> None:
        self.sha = sha
        self.parents = parents
        self.message = message
        self.files = files
        self.date = _now()


class _Repo:
    def __init__(self, repo_id: str, *, private: bool, gated: bool) -> None:
        self.repo_id = repo_id
        self.private = private
        self.gated = gated
        self.created_at = _now()
        self.branches: dict[str, str] = {}
        self.tags: dict[str, str] = {}
        self.commits: dict[str, _Commit] = {}
        self.lfs_objects: dict[str, _Blob] = {}  # sha256 -> blob held by (or uploaded to) this repo
        self.expected_sizes: dict[str, int] = {}  # sha256 -> size announced in an LFS batch call
        self.preuploads: list[tuple[str, int, bytes]] = []  # (path, size, first 512 bytes) from preupload calls
        self.pr_count = 0

    def resolve(self, revision: str) -> str | None:
        """Commit sha of a branch, tag, `refs/heads|tags/...` name or (prefix of a) commit sha."""
        if revision in self.branches:
            return self.branches[revision]
        if revision in self.tags:
            return self.tags[revision]
        if revision.startswith("refs/heads/") and revision[11:] in self.branches:
            return self.branches[revision[11:]]
        if revision.startswith("refs/tags/") and revision[10:] in self.tags:
            return self.tags[revision[10:]]
        if revision in self.commits:
            return revision
        if _HEX_PREFIX.match(revision):
            found = [sha for sha in self.commits if sha.startswith(revision)]
            if len(found) == 1:
                return found[0]
        return None

    def history(self, sha: str) -> list[str]:
        out: list[str] = []
        current: str | None = sha
        while current is not None:
            out.append(current)
            parents = self.commits[current].parents
            current = parents[0] if parents else None
        return out


class _HttpError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
        body: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers = dict(headers or {})
        self.body = dict(body or {})


class _Listener(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, hub: HubServer, is_cdn: bool) -> None:
        self.hub = hub
        self.is_cdn = is_cdn
        super().__init__(("127.0.0.1", 0), _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:  # connection resets are expected in tests
        pass


class HubServer:
    """A Hugging Face Hub on 127.0.0.1 for tests. See the module docstring for what it serves."""

    def __init__(self) -> None:
        self.url: str = ""
        self.cdn_url: str = ""
        self.requests: list[tuple[str, str]] = []
        self.tokens: set[str] = {DEFAULT_TOKEN}
        self.fail_lfs_upload: set[str] = set()
        self.drop_after: dict[str, int] = {}
        self.tamper: dict[str, int] = {}
        self.slow_bytes_per_s: int | None = None
        self.range_faults: dict[str, list[str]] = {}
        self.outage_until: float = 0.0
        self.body_bytes: dict[str, int] = {}
        self.open_bodies = 0
        self.max_open_bodies = 0
        self.cdn_authorized: list[str] = []  # paths of requests that reached the CDN with an Authorization header
        self._generations: dict[str, int] = {}  # per repo path: bumped when its signed locations expire
        self.write_requires_token: bool = True
        self.errors: list[str] = []
        self.ranges: list[tuple[str, str]] = []  # (raw path, Range header) of every file GET/HEAD sent with a Range
        self._downloads: list[str] = []
        self._repos: dict[str, _Repo] = {}
        self._lock = threading.RLock()
        self._counter = 0
        self._secret = secrets.token_bytes(16)
        self._tmp: Path | None = None
        self._listeners: list[_Listener] = []
        self._threads: list[threading.Thread] = []
        self._connections: set[socket.socket] = set()
        self._stopping = False

    # ----------------------------------------------------------------------------------------------- lifecycle
    def start(self) -> None:
        if self._listeners:
            return
        self._stopping = False
        hub, cdn = _Listener(self, is_cdn=False), _Listener(self, is_cdn=True)
        self._listeners = [hub, cdn]
        self.url = f"http://127.0.0.1:{hub.server_address[1]}"
        self.cdn_url = f"http://127.0.0.1:{cdn.server_address[1]}"
        for listener in self._listeners:
            thread = threading.Thread(target=listener.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stopping = True
        for listener in self._listeners:
            listener.shutdown()
            listener.server_close()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:  # end transfers still in progress
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for thread in self._threads:
            thread.join(timeout=5)
        self._listeners, self._threads = [], []

    def __enter__(self) -> HubServer:  # noqa: PYI034 - no typing.Self before Python 3.11, stdlib only
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # ----------------------------------------------------------------------------------------------- test API
    def add_repo(
        self,
        repo_id: str,
        files: Mapping[str, Content],
        *,
        branch: str = "main",
        gated: bool = False,
        private: bool = False,
        message: str = "initial",
    ) -> str:
        """Create a repo whose first commit (on `branch`) holds `files`; returns the commit sha."""
        entries = {path: self._entry_for(path, content) for path, content in files.items()}
        with self._lock:
            if repo_id in self._repos:
                raise ValueError(f"repo {repo_id} already exists")
            repo = _Repo(repo_id, private=private, gated=gated)
            self._repos[repo_id] = repo
            return self._commit(repo, branch, None, message, entries)

    def add_commit(
        self,
        repo_id: str,
        files: Mapping[str, Content],
        *,
        branch: str = "main",
        message: str = "update",
        delete: Sequence[str] = (),
    ) -> str:
        """New commit on `branch` (created from `main` if new): `files` added/replaced, `delete` removed."""
        new = {path: self._entry_for(path, content) for path, content in files.items()}
        with self._lock:
            repo = self._get_repo(repo_id)
            parent = repo.branches.get(branch) or repo.branches.get("main")
            entries = dict(repo.commits[parent].files) if parent else {}
            for path in delete:
                if path not in entries:
                    raise KeyError(f"{path} is not in {repo_id}@{branch}")
                del entries[path]
            entries.update(new)
            return self._commit(repo, branch, parent, message, entries)

    def tag(self, repo_id: str, tag: str, sha: str) -> None:
        with self._lock:
            repo = self._get_repo(repo_id)
            resolved = repo.resolve(sha)
            if resolved is None:
                raise KeyError(f"unknown revision {sha} of {repo_id}")
            repo.tags[tag] = resolved

    def commit_message(self, repo_id: str, revision: str = "main") -> str:
        """The message of the commit `revision` names: the summary, then the description after a blank line."""
        with self._lock:
            repo = self._get_repo(repo_id)
            sha = repo.resolve(revision)
            if sha is None:
                raise KeyError(f"unknown revision {revision} of {repo_id}")
            return repo.commits[sha].message

    def commits(self, repo_id: str, branch: str = "main") -> list[str]:
        """Commit shas reachable from `branch` (first parents), newest first; [] if the branch does not exist."""
        with self._lock:
            repo = self._get_repo(repo_id)
            head = repo.resolve(branch)
            return repo.history(head) if head else []

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        return {path: entry.blob.read() for path, entry in self._snapshot(repo_id, revision).items()}

    def lfs_paths(self, repo_id: str, revision: str = "main") -> set[str]:
        return {path for path, entry in self._snapshot(repo_id, revision).items() if entry.lfs}

    def downloads(self) -> list[str]:
        """Raw paths (no query) of the GETs of /{repo}/resolve/... (hub or CDN listener) answered 200 or 206."""
        with self._lock:
            return list(self._downloads)

    # ----------------------------------------------------------------------------------------------- internals
    @staticmethod
    def _is_lfs(path: str, size: int) -> bool:
        return size > LFS_THRESHOLD or path.endswith(LFS_SUFFIXES)

    def _entry_for(self, path: str, content: Content) -> _Entry:
        blob = _Blob(content)
        return _Entry(blob, self._is_lfs(path, blob.size))

    def _get_repo(self, repo_id: str) -> _Repo:
        repo = self._repos.get(repo_id)
        if repo is None:
            raise KeyError(f"unknown repo {repo_id}")
        return repo

    def _snapshot(self, repo_id: str, revision: str) -> dict[str, _Entry]:
        with self._lock:
            repo = self._get_repo(repo_id)
            sha = repo.resolve(revision)
            if sha is None:
                raise KeyError(f"unknown revision {revision} of {repo_id}")
            return dict(repo.commits[sha].files)

    def _commit(self, repo: _Repo, branch: str, parent: str | None, message: str, files: dict[str, _Entry]) -> str:
        """Record a commit and move `branch` to it. Caller holds the lock."""
        self._counter += 1
        seed = f"{repo.repo_id}\n{branch}\n{parent}\n{message}\n{self._counter}\n{time.time_ns()}\n"
        seed += "".join(f"{path}\0{entry.oid}\n" for path, entry in sorted(files.items()))
        sha = hashlib.sha1(seed.encode()).hexdigest()
        repo.commits[sha] = _Commit(sha, [parent] if parent else [], message, files)
        repo.branches[branch] = sha
        for entry in files.values():
            if entry.lfs:
                repo.lfs_objects.setdefault(entry.blob.sha256, entry.blob)
        return sha

    def _sign(self, text: str) -> str:
        return hmac.new(self._secret, text.encode(), hashlib.sha256).hexdigest()[:32]

    def _tmpdir(self) -> Path:
        """Where uploaded LFS objects are kept; removed when this server object is garbage collected."""
        with self._lock:
            if self._tmp is None:
                self._tmp = Path(tempfile.mkdtemp(prefix="hub-server-"))
                weakref.finalize(self, shutil.rmtree, str(self._tmp), ignore_errors=True)
            return self._tmp


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "TestHub/1.0"

    # ----------------------------------------------------------------------------------------------- plumbing
    @property
    def hub(self) -> HubServer:
        return cast(_Listener, self.server).hub

    @property
    def is_cdn(self) -> bool:
        return cast(_Listener, self.server).is_cdn

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def setup(self) -> None:
        super().setup()
        with self.hub._lock:
            self.hub._connections.add(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            with self.hub._lock:
                self.hub._connections.discard(self.connection)

    def do_GET(self) -> None:
        self._dispatch()

    def do_HEAD(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        self._body_done = False
        self._headers_sent = False
        split = urlsplit(self.path)
        self.raw_path = split.path
        self.query = {k: v[-1] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
        with self.hub._lock:
            self.hub.requests.append((self.command, self.raw_path))
        try:
            self._route()
        except _HttpError as err:
            self._send_error(err)
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
            self.close_connection = True
        except Exception:  # noqa: BLE001 - a server answers every request; the traceback is kept in `errors`
            with self.hub._lock:
                self.hub.errors.append(traceback.format_exc())
            if self._headers_sent:
                self.close_connection = True
            else:
                self._send_error(_HttpError(500, "Internal error of the test hub server"))
        finally:
            if not self._body_done:
                try:
                    for _ in self._body_chunks():
                        pass
                except (OSError, ValueError):
                    self.close_connection = True

    def _body_chunks(self) -> Iterator[bytes]:
        """The request body, chunk by chunk (Content-Length or chunked transfer encoding)."""
        if self._body_done:
            return
        self._body_done = True
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            while True:
                size = int(self.rfile.readline(65537).split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    return
                remaining = size
                while remaining:
                    data = self.rfile.read(min(remaining, CHUNK))
                    if not data:
                        raise ConnectionResetError("client went away")
                    remaining -= len(data)
                    yield data
                self.rfile.readline()
        remaining = int(self.headers.get("Content-Length") or 0)
        while remaining > 0:
            data = self.rfile.read(min(remaining, CHUNK))
            if not data:
                raise ConnectionResetError("client went away")
            remaining -= len(data)
            yield data

    def _body(self) -> bytes:
        return b"".join(self._body_chunks())

    def _json_body(self) -> Any:
        raw = self._body()
        if not raw:
            return {}
        try:
            return json.loads(raw)
        except ValueError:
            raise _HttpError(400, "Invalid JSON body") from None

    def _start(self, status: int, headers: Mapping[str, str], length: int) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(length))
        self.send_header("X-Request-Id", f"Root=test-{id(self):x}-{time.time_ns()}")
        self.end_headers()
        self._headers_sent = True

    def _send(self, status: int, body: bytes = b"", headers: Mapping[str, str] | None = None) -> None:
        self._start(status, headers or {}, len(body))
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    def _json(self, status: int, obj: Any, headers: Mapping[str, str] | None = None) -> None:
        all_headers = {"Content-Type": "application/json; charset=utf-8", **(headers or {})}
        self._send(status, json.dumps(obj).encode(), all_headers)

    def _send_error(self, err: _HttpError) -> None:
        headers = dict(err.headers)
        if err.code:
            headers["X-Error-Code"] = err.code
        headers["X-Error-Message"] = err.message
        self._json(err.status, {"error": err.message, **err.body}, headers)

    # ----------------------------------------------------------------------------------------------- auth
    def _token(self) -> str | None:
        auth = self.headers.get("Authorization", "")
        if auth.lower().startswith("bearer "):
            return auth[7:].strip() or None
        return None

    def _valid_token(self) -> bool:
        token = self._token()
        return token is not None and token in self.hub.tokens

    def _repo_not_found(self, repo_id: str) -> _HttpError:
        message = "Repository not found"
        if self._token() is None:
            return _HttpError(401, message, "RepoNotFound")
        return _HttpError(404, message, "RepoNotFound")

    def _read_repo(self, repo_id: str, *, files: bool) -> _Repo:
        """The repo if this request may read it (`files`: file contents, which gated repos restrict)."""
        repo = self.hub._repos.get(repo_id)
        if repo is None or (repo.private and not self._valid_token()):
            raise self._repo_not_found(repo_id)
        if files and repo.gated and not self._valid_token():
            message = (
                f"Access to model {repo_id} is restricted. You must have access to it and be authenticated to "
                "access it. Please log in."
            )
            if self._token() is None:
                raise _HttpError(401, message, "GatedRepo")
            raise _HttpError(403, message, "GatedRepo")
        return repo

    def _write_repo(self, repo_id: str) -> _Repo:
        self._require_write_token()
        repo = self.hub._repos.get(repo_id)
        if repo is None:
            raise self._repo_not_found(repo_id)
        return repo

    def _require_write_token(self) -> None:
        if self.hub.write_requires_token and not self._valid_token():
            raise _HttpError(401, "Invalid credentials in Authorization header")

    def _revision(self, repo: _Repo, revision: str) -> str:
        sha = repo.resolve(revision)
        if sha is None:
            raise _HttpError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return sha

    # ----------------------------------------------------------------------------------------------- routing
    def _split_repo(self, segments: list[str], two_part: bool) -> tuple[str, int]:
        """(repo_id, index of the segment after it); `two_part`: the shape to assume for an unknown repo."""
        if len(segments) >= 2 and "/".join(segments[:2]) in self.hub._repos:
            return "/".join(segments[:2]), 2
        if segments and segments[0] in self.hub._repos:
            return segments[0], 1
        if two_part and len(segments) >= 2:
            return "/".join(segments[:2]), 2
        return (segments[0] if segments else ""), 1

    def _route(self) -> None:
        raw = self.raw_path
        segments = [unquote(s) for s in raw.strip("/").split("/")] if raw.strip("/") else []
        raw_segments = raw.strip("/").split("/")
        method = self.command
        if self.is_cdn:
            if method in ("GET", "HEAD") and "resolve" in segments:
                return self._cdn_resolve(segments, raw_segments)
            raise _HttpError(404, "Not found")
        if segments[:2] == ["api", "whoami-v2"] and method == "GET":
            return self._whoami()
        if segments[:3] == ["api", "repos", "create"] and method == "POST":
            return self._create_repo()
        if segments[:2] == ["api", "agent-harnesses"] and method == "GET":  # the client's agent detection registry
            return self._json(200, {"standardEnvVars": [], "harnesses": {}})
        if segments[:2] == ["api", "validate-yaml"] and method == "POST":
            self._body()
            return self._json(200, {"errors": [], "warnings": []})
        if segments[:2] == ["api", "models"] and len(segments) >= 3:
            return self._api_models(segments[2:], raw_segments[2:])
        if len(segments) >= 2 and segments[0] == "lfs-upload" and method == "PUT":
            return self._lfs_put(segments[1])
        if raw.endswith(".git/info/lfs/objects/batch") and method == "POST":
            return self._lfs_batch(unquote(raw.strip("/")[: -len(".git/info/lfs/objects/batch")]))
        if method in ("GET", "HEAD"):
            repo_id, i = self._split_repo(segments, len(segments) >= 3 and segments[1] != "resolve")
            if len(segments) > i + 2 and segments[i] == "resolve":
                revision = segments[i + 1]
                path = unquote("/".join(raw_segments[i + 2 :]))
                return self._resolve(repo_id, revision, path)
        raise _HttpError(404, "Not found")

    def _api_models(self, segments: list[str], raw_segments: list[str]) -> None:
        repo_id, i = self._split_repo(segments, len(segments) >= 2 and segments[1] not in _API_SUBROUTES)
        rest, raw_rest = segments[i:], raw_segments[i:]
        method = self.command
        if not rest and method == "GET":
            return self._repo_info(repo_id, "main")
        sub = rest[0] if rest else ""
        if sub == "revision" and len(rest) >= 2 and method == "GET":
            return self._repo_info(repo_id, unquote("/".join(raw_rest[1:])))
        if sub == "tree" and len(rest) >= 2 and method == "GET":
            return self._tree(repo_id, rest[1], unquote("/".join(raw_rest[2:])))
        if sub == "paths-info" and len(rest) >= 2 and method == "POST":
            return self._paths_info(repo_id, unquote("/".join(raw_rest[1:])))
        if sub == "refs" and method == "GET":
            return self._refs(repo_id)
        if sub == "commits" and len(rest) >= 2 and method == "GET":
            return self._commits(repo_id, unquote("/".join(raw_rest[1:])))
        if sub == "preupload" and len(rest) >= 2 and method == "POST":
            return self._preupload(repo_id, unquote("/".join(raw_rest[1:])))
        if sub == "commit" and len(rest) >= 2 and method == "POST":
            return self._create_commit(repo_id, unquote("/".join(raw_rest[1:])))
        if sub == "branch" and len(rest) >= 2 and method == "POST":
            return self._create_branch(repo_id, unquote("/".join(raw_rest[1:])))
        if sub == "tag" and len(rest) >= 2 and method == "POST":
            return self._create_tag(repo_id, unquote("/".join(raw_rest[1:])))
        if sub in ("xet-write-token", "xet-read-token"):
            raise _HttpError(404, "This test hub does not speak Xet: set HF_HUB_DISABLE_XET=1 before the client starts")
        raise _HttpError(404, "Not found")

    # ----------------------------------------------------------------------------------------------- read API
    def _whoami(self) -> None:
        if not self._valid_token():
            raise _HttpError(401, "Invalid credentials in Authorization header")
        self._json(
            200,
            {
                "type": "user",
                "id": "0" * 24,
                "name": USER_NAME,
                "fullname": "Test User",
                "email": f"{USER_NAME}@example.com",
                "emailVerified": True,
                "canPay": False,
                "isPro": False,
                "orgs": [],
                "auth": {"type": "access_token", "accessToken": {"displayName": "test", "role": "write"}},
            },
        )

    def _repo_info(self, repo_id: str, revision: str) -> None:
        with self.hub._lock:
            repo = self._read_repo(repo_id, files=False)
            sha = self._revision(repo, revision)
            commit = repo.commits[sha]
        blobs = self.query.get("blobs", "").lower() in ("1", "true")
        siblings = []
        for path in sorted(commit.files):
            entry = commit.files[path]
            sibling: dict[str, Any] = {"rfilename": path}
            if blobs:
                sibling["size"] = entry.blob.size
                sibling["blobId"] = entry.oid
                if entry.lfs:
                    sibling["lfs"] = {
                        "sha256": entry.blob.sha256,
                        "size": entry.blob.size,
                        "pointerSize": len(entry.pointer),
                    }
            siblings.append(sibling)
        author = repo_id.split("/")[0] if "/" in repo_id else None
        self._json(
            200,
            {
                "_id": hashlib.sha1(repo_id.encode()).hexdigest()[:24],
                "id": repo_id,
                "modelId": repo_id,
                "author": author,
                "sha": sha,
                "lastModified": commit.date,
                "createdAt": repo.created_at,
                "private": repo.private,
                "gated": "manual" if repo.gated else False,
                "disabled": False,
                "downloads": 0,
                "likes": 0,
                "tags": [],
                "siblings": siblings,
                "spaces": [],
                "usedStorage": sum(e.blob.size for e in commit.files.values()),
            },
        )

    @staticmethod
    def _tree_oid(files: Mapping[str, _Entry], directory: str) -> str:
        prefix = directory + "/"
        seed = "".join(f"{p}\0{e.oid}\n" for p, e in sorted(files.items()) if p.startswith(prefix))
        return hashlib.sha1(f"tree {directory}\n{seed}".encode()).hexdigest()

    def _tree_entries(self, files: Mapping[str, _Entry], base: str, recursive: bool) -> list[dict[str, Any]]:
        prefix = base + "/" if base else ""
        dirs: set[str] = set()
        out_files: list[dict[str, Any]] = []
        for path in sorted(files):
            if not path.startswith(prefix):
                continue
            rel = path[len(prefix) :]
            parts = rel.split("/")
            for depth in range(1, len(parts)):
                if depth > 1 and not recursive:
                    break
                dirs.add(prefix + "/".join(parts[:depth]))
            if recursive or len(parts) == 1:
                out_files.append(files[path].tree_json(path))
        out_dirs = [{"type": "directory", "oid": self._tree_oid(files, d), "size": 0, "path": d} for d in sorted(dirs)]
        return out_dirs + out_files

    def _tree(self, repo_id: str, revision: str, path: str) -> None:
        with self.hub._lock:
            repo = self._read_repo(repo_id, files=False)
            sha = self._revision(repo, revision)
            files = repo.commits[sha].files
        path = path.strip("/")
        if path and not any(p.startswith(path + "/") for p in files):
            raise _HttpError(404, f'{path} does not exist on "{revision}"', "EntryNotFound", {"X-Repo-Commit": sha})
        recursive = self.query.get("recursive", "").lower() in ("1", "true")
        self._json(200, self._tree_entries(files, path, recursive), {"X-Repo-Commit": sha})

    def _paths_info(self, repo_id: str, revision: str) -> None:
        raw = self._body()
        paths: list[str] = []
        if "json" in self.headers.get("Content-Type", ""):
            try:
                value = json.loads(raw or b"{}").get("paths", [])
            except ValueError:
                raise _HttpError(400, "Invalid JSON body") from None
            paths = [value] if isinstance(value, str) else list(value)
        else:
            paths = parse_qs(raw.decode(), keep_blank_values=True).get("paths", [])
        with self.hub._lock:
            repo = self._read_repo(repo_id, files=False)
            sha = self._revision(repo, revision)
            files = repo.commits[sha].files
        out: list[dict[str, Any]] = []
        for path in paths:
            path = path.strip("/")
            if path in files:
                out.append(files[path].tree_json(path))
            elif any(p.startswith(path + "/") for p in files):
                out.append({"type": "directory", "oid": self._tree_oid(files, path), "size": 0, "path": path})
        self._json(200, out)

    def _refs(self, repo_id: str) -> None:
        with self.hub._lock:
            repo = self._read_repo(repo_id, files=False)
            branches = dict(repo.branches)
            tags = dict(repo.tags)
        out: dict[str, Any] = {
            "branches": [
                {"name": n, "ref": f"refs/heads/{n}", "targetCommit": s}
                for n, s in sorted(branches.items())
                if not n.startswith("refs/pr/")
            ],
            "tags": [{"name": n, "ref": f"refs/tags/{n}", "targetCommit": s} for n, s in sorted(tags.items())],
            "converts": [],
        }
        if self.query.get("include_prs"):
            out["pullRequests"] = [
                {"name": n, "ref": n, "targetCommit": s}
                for n, s in sorted(branches.items())
                if n.startswith("refs/pr/")
            ]
        self._json(200, out)

    def _commits(self, repo_id: str, revision: str) -> None:
        with self.hub._lock:
            repo = self._read_repo(repo_id, files=False)
            sha = self._revision(repo, revision)
            commits = [repo.commits[s] for s in repo.history(sha)]
        self._json(
            200,
            [
                {
                    "id": c.sha,
                    "title": c.message.split("\n")[0],
                    "message": c.message,
                    "authors": [{"user": USER_NAME, "avatar": ""}],
                    "date": c.date,
                }
                for c in commits
            ],
        )

    # ----------------------------------------------------------------------------------------------- files
    def _resolve(self, repo_id: str, revision: str, path: str) -> None:
        with self.hub._lock:
            repo = self._read_repo(repo_id, files=True)
            sha = self._revision(repo, revision)
            entry = repo.commits[sha].files.get(path)
        if entry is None:
            raise _HttpError(404, "Entry not found", "EntryNotFound", {"X-Repo-Commit": sha})
        if entry.lfs:
            logical = f"/{quote(repo_id)}/resolve/{sha}/{quote(path)}"
            with self.hub._lock:
                generation = self.hub._generations.get(path, 0)
            sig = self.hub._sign(f"{repo_id}\n{sha}\n{path}\n{generation}")
            self._send(
                302,
                b"",
                {
                    "Location": f"{self.hub.cdn_url}{logical}?sig={sig}&gen={generation}",
                    "X-Repo-Commit": sha,
                    "X-Linked-Etag": f'"{entry.blob.sha256}"',
                    "X-Linked-Size": str(entry.blob.size),
                    "ETag": f'"{entry.oid}"',
                    "Accept-Ranges": "bytes",
                },
            )
            return
        self._serve(entry, path, {"X-Repo-Commit": sha, "ETag": f'"{entry.etag}"'})

    def _cdn_resolve(self, segments: list[str], raw_segments: list[str]) -> None:
        if self.headers.get("Authorization"):
            with self.hub._lock:
                self.hub.cdn_authorized.append(self.raw_path.split("?")[0])
        i = segments.index("resolve")
        repo_id = "/".join(segments[:i])
        if len(segments) < i + 3:
            raise _HttpError(404, "Not found")
        sha = segments[i + 1]
        path = unquote("/".join(raw_segments[i + 2 :]))
        generation = self.query.get("gen", "")
        with self.hub._lock:
            current = str(self.hub._generations.get(path, 0))
        signed = self.hub._sign(f"{repo_id}\n{sha}\n{path}\n{generation}")
        if not hmac.compare_digest(self.query.get("sig", ""), signed) or generation != current:
            raise _HttpError(403, "Request has expired or signature is invalid")
        with self.hub._lock:
            repo = self.hub._repos.get(repo_id)
            commit = repo.commits.get(sha) if repo else None
            entry = commit.files.get(path) if commit else None
        if entry is None:
            raise _HttpError(404, "Not found")
        self._serve(entry, path, {"ETag": f'"{entry.blob.sha256}"'})

    def _serve(self, entry: _Entry, path: str, headers: dict[str, str]) -> None:
        blob = entry.blob
        size = blob.size
        start, end, status = 0, size, 200
        headers = {**headers, "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
        range_header = self.headers.get("Range")
        if range_header:
            with self.hub._lock:
                self.hub.ranges.append((self.raw_path, range_header))
            match = _RANGE_RE.match(range_header)
            if match and (match.group(1) or match.group(2)):
                first, last = match.group(1), match.group(2)
                if first:
                    start = int(first)
                    end = min(int(last) + 1, size) if last else size
                else:
                    start = max(size - int(last), 0)
                if (first and start >= size) or (not first and int(last) == 0) or end <= start:
                    self._send(416, b"", {**headers, "Content-Range": f"bytes */{size}"})
                    return
                status = 206
                headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
        fault = None
        if range_header and status == 206 and self.command == "GET":
            with self.hub._lock:
                queue = self.hub.range_faults.get(path)
                fault = queue.pop(0) if queue else None
            if time.monotonic() < self.hub.outage_until:
                fault = "503"
        if fault == "whole":
            start, end, status = 0, size, 200
            del headers["Content-Range"]
        elif fault == "shifted" and end - start > 1:
            start += 1
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
        elif fault == "expire":
            with self.hub._lock:  # this file's locations signed so far are refused from now on
                self.hub._generations[path] = self.hub._generations.get(path, 0) + 1
            raise _HttpError(403, "Request has expired or signature is invalid")
        elif fault not in (None, "cut", "pass", "trickle"):
            status_text, _, wait = fault.partition(":")  # "429:4": a 429 with Retry-After: 4
            self._send(int(status_text), b"", {**headers, "Retry-After": wait} if wait else headers)
            return
        drop: int | None = (end - start) // 2 if fault == "cut" else None
        flip: int | None = None
        if self.command == "GET":
            with self.hub._lock:
                self.hub._downloads.append(self.raw_path)
                if path in self.hub.drop_after:
                    drop = self.hub.drop_after.pop(path)
                flip = self.hub.tamper.get(path)
        self._start(status, headers, end - start)
        if self.command == "HEAD":
            return
        sent = 0
        budget = end - start if drop is None else min(drop, end - start)
        rate = self.hub.slow_bytes_per_s
        chunk_size = CHUNK if not rate else max(1, min(CHUNK, rate // 20))
        ranged = range_header is not None  # the stream's transfers (huggingface_hub fetches whole files)
        with self.hub._lock:
            self.hub.open_bodies += ranged
            self.hub.max_open_bodies = max(self.hub.max_open_bodies, self.hub.open_bodies)
        try:
            for chunk in blob.chunks(start, start + budget, 1 if fault == "trickle" else chunk_size):
                if self.hub._stopping:
                    break
                if flip is not None and start + sent <= flip < start + sent + len(chunk):
                    at = flip - start - sent
                    chunk = chunk[:at] + bytes([chunk[at] ^ 0x01]) + chunk[at + 1 :]
                self.wfile.write(chunk)
                sent += len(chunk)
                with self.hub._lock:
                    self.hub.body_bytes[path] = self.hub.body_bytes.get(path, 0) + len(chunk)
                rate = self.hub.slow_bytes_per_s
                if sent == budget:
                    break  # no wait after the last byte: the body is complete
                if fault == "trickle" and sent >= TRICKLE_AFTER:
                    self.wfile.flush()
                    time.sleep(TRICKLE_SECONDS)
                elif rate:
                    self.wfile.flush()
                    time.sleep(len(chunk) / rate)
        except OSError:  # the client hung up (a trickle dropped): nothing more to send
            self.close_connection = True
            return
        finally:
            with self.hub._lock:
                self.hub.open_bodies -= ranged
        if sent < end - start:  # dropped on purpose (or stopping): the client sees a short body
            self.wfile.flush()
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    # ----------------------------------------------------------------------------------------------- write API
    def _create_repo(self) -> None:
        self._require_write_token()
        payload = self._json_body()
        name = payload.get("name")
        organization = payload.get("organization")
        repo_type = payload.get("type") or "model"
        if not isinstance(name, str) or not name:
            raise _HttpError(400, "Missing repo name")
        if repo_type != "model":
            raise _HttpError(400, f"This test hub only serves model repos, not {repo_type}")
        repo_id = f"{organization or USER_NAME}/{name}"  # no organization: the token owner's namespace
        private = payload.get("visibility") == "private" or bool(payload.get("private"))
        url = f"{self.hub.url}/{repo_id}"
        with self.hub._lock:
            if repo_id in self.hub._repos:
                raise _HttpError(409, "You already created this model repo", body={"url": url})
            repo = _Repo(repo_id, private=private, gated=False)
            self.hub._repos[repo_id] = repo
            gitattributes = _Entry(_Blob(DEFAULT_GITATTRIBUTES), lfs=False)
            self.hub._commit(repo, "main", None, "initial commit", {".gitattributes": gitattributes})
        self._json(200, {"url": url, "name": repo_id, "id": hashlib.sha1(repo_id.encode()).hexdigest()[:24]})

    def _create_branch(self, repo_id: str, branch: str) -> None:
        payload = self._json_body()
        with self.hub._lock:
            repo = self._write_repo(repo_id)
            if branch in repo.branches:
                raise _HttpError(409, f"Reference refs/heads/{branch} already exists")
            start = payload.get("startingPoint") or "main"
            repo.branches[branch] = self._revision(repo, start)
        self._json(200, {})

    def _create_tag(self, repo_id: str, revision: str) -> None:
        payload = self._json_body()
        tag = payload.get("tag")
        if not isinstance(tag, str) or not tag:
            raise _HttpError(400, "Missing tag name")
        with self.hub._lock:
            repo = self._write_repo(repo_id)
            if tag in repo.tags:
                raise _HttpError(409, f"Tag {tag} already exists")
            repo.tags[tag] = self._revision(repo, revision)
        self._json(200, {})

    def _preupload(self, repo_id: str, revision: str) -> None:
        payload = self._json_body()
        files = payload.get("files")
        if not isinstance(files, list):
            raise _HttpError(400, "Missing files")
        with self.hub._lock:
            repo = self._write_repo(repo_id)
            sha = repo.resolve(revision)
            if sha is None and not self.query.get("create_pr"):
                raise _HttpError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
            existing = repo.commits[sha].files if sha else {}
            out = []
            for item in files:
                path, size = str(item.get("path", "")), int(item.get("size", 0))
                try:
                    sample = base64.b64decode(item.get("sample", ""))
                except (binascii.Error, ValueError):
                    raise _HttpError(400, f"Invalid sample for {path}") from None
                mode = "lfs" if self.hub._is_lfs(path, size) and size > 0 else "regular"
                current = existing.get(path)
                oid = None if current is None else (current.blob.sha256 if current.lfs else current.blob.git_sha1)
                out.append({"path": path, "uploadMode": mode, "shouldIgnore": False, "oid": oid})
                if mode == "lfs":
                    repo.preuploads.append((path, size, sample[:512]))
        self._json(200, {"files": out, "commitOid": sha})

    def _lfs_batch(self, repo_id: str) -> None:
        payload = self._json_body()
        with self.hub._lock:
            repo = self._write_repo(repo_id)
        if payload.get("operation") != "upload":
            raise _HttpError(422, "This test hub only supports the upload operation of the LFS batch API")
        objects = []
        for obj in payload.get("objects") or []:
            oid, size = str(obj.get("oid", "")), int(obj.get("size", -1))
            item: dict[str, Any] = {"oid": oid, "size": size, "authenticated": True}
            if not re.match(r"^[0-9a-f]{64}$", oid) or size < 0:
                item["error"] = {"code": 422, "message": "Invalid oid or size"}
            else:
                with self.hub._lock:
                    present = oid in repo.lfs_objects and repo.lfs_objects[oid].size == size
                    repo.expected_sizes[oid] = size
                if not present:
                    sig = self.hub._sign(f"{repo_id}\n{oid}")
                    href = f"{self.hub.url}/lfs-upload/{oid}?repo={quote(repo_id, safe='')}&sig={sig}"
                    item["actions"] = {"upload": {"href": href, "expires_in": 3600}}
            objects.append(item)
        body = json.dumps({"transfer": "basic", "objects": objects, "hash_algo": "sha256"}).encode()
        self._send(200, body, {"Content-Type": "application/vnd.git-lfs+json"})

    def _lfs_put(self, oid: str) -> None:
        repo_id = self.query.get("repo", "")
        if not hmac.compare_digest(self.query.get("sig", ""), self.hub._sign(f"{repo_id}\n{oid}")):
            raise _HttpError(403, "Request has expired or signature is invalid")
        with self.hub._lock:
            repo = self.hub._repos.get(repo_id)
            expected = repo.expected_sizes.get(oid) if repo else None
            preuploads = list(repo.preuploads) if repo else []
        if repo is None or expected is None:
            raise _HttpError(404, "Unknown upload")
        tmpdir = self.hub._tmpdir()
        target = tmpdir / f"{oid}.{secrets.token_hex(4)}"
        h256, h1 = hashlib.sha256(), hashlib.sha1(b"blob %d\0" % expected)
        size, head = 0, b""
        with open(target, "wb") as out:
            for chunk in self._body_chunks():
                if len(head) < 512:
                    head += chunk[: 512 - len(head)]
                h256.update(chunk)
                h1.update(chunk)
                out.write(chunk)
                size += len(chunk)
        paths = {p for p, s, sample in preuploads if s == size and sample == head}
        failing = paths & self.hub.fail_lfs_upload
        if failing:
            target.unlink()
            raise _HttpError(403, f"Injected LFS upload failure for {min(failing)}")
        if size != expected or h256.hexdigest() != oid:
            target.unlink()
            raise _HttpError(400, f"Uploaded object does not match oid {oid} / size {expected}")
        blob = _Blob(target, sha256=oid, git_sha1=h1.hexdigest())
        with self.hub._lock:
            repo.lfs_objects.setdefault(oid, blob)
        self._send(200, b"", {"ETag": f'"{oid}"'})

    def _create_commit(self, repo_id: str, revision: str) -> None:
        raw = self._body()
        lines = [line for line in raw.split(b"\n") if line.strip()]
        try:
            items = [json.loads(line) for line in lines]
        except ValueError:
            raise _HttpError(400, "Invalid NDJSON body") from None
        if not items or items[0].get("key") != "header":
            raise _HttpError(400, "The first line of the commit payload must be its header")
        header = items[0].get("value") or {}
        summary = str(header.get("summary") or "")
        description = str(header.get("description") or "")
        if not summary:
            raise _HttpError(400, "Missing commit summary")
        parent_commit = header.get("parentCommit")
        create_pr = self.query.get("create_pr") in ("1", "true")
        with self.hub._lock:
            repo = self._write_repo(repo_id)
            if create_pr:
                base = self._revision(repo, parent_commit or revision)
            else:
                revision = revision.removeprefix("refs/heads/")
                if revision not in repo.branches:
                    raise _HttpError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
                base = repo.branches[revision]
                if parent_commit and repo.resolve(parent_commit) != base:
                    raise _HttpError(412, "A commit has happened since. Please refresh and try again.")
            files = dict(repo.commits[base].files)
            for item in items[1:]:
                self._apply_operation(repo, files, item, base)
            message = summary + ("\n\n" + description if description else "")
            if create_pr:
                repo.pr_count += 1
                branch = f"refs/pr/{repo.pr_count}"
            else:
                branch = revision
            sha = self.hub._commit(repo, branch, base, message, files)
        out: dict[str, Any] = {
            "success": True,
            "commitOid": sha,
            "commitUrl": f"{self.hub.url}/{repo_id}/commit/{sha}",
            "hookOutput": "",
        }
        if create_pr:
            out["pullRequestUrl"] = f"{self.hub.url}/{repo_id}/discussions/{repo.pr_count}"
            out["pullRequestRevision"] = branch
        self._json(200, out)

    def _apply_operation(self, repo: _Repo, files: dict[str, _Entry], item: Any, base: str) -> None:
        key = item.get("key") if isinstance(item, dict) else None
        value = item.get("value") if isinstance(item, dict) else None
        if not isinstance(value, dict) or not isinstance(value.get("path"), str) or not value["path"]:
            raise _HttpError(400, f"Malformed commit operation: {item!r}"[:300])
        path = value["path"].strip("/")
        if key == "file":
            content = value.get("content", "")
            if value.get("encoding") == "base64":
                try:
                    data = base64.b64decode(content, validate=True)
                except (binascii.Error, ValueError):
                    raise _HttpError(400, f"Invalid base64 content for {path}") from None
            else:
                data = str(content).encode()
            files[path] = _Entry(_Blob(data), lfs=False)
        elif key == "lfsFile":
            oid = value.get("oid")
            blob = repo.lfs_objects.get(oid) if isinstance(oid, str) else None
            if value.get("algo", "sha256") != "sha256" or blob is None:
                raise _HttpError(400, f"LFS object {oid} for {path} was not uploaded to {repo.repo_id}")
            if value.get("size") is not None and int(value["size"]) != blob.size:
                raise _HttpError(400, f"LFS object {oid} for {path} has size {blob.size}, not {value['size']}")
            files[path] = _Entry(blob, lfs=True)
        elif key == "deletedFile":
            if path not in files:
                raise _HttpError(
                    404, f"A file with this name doesn't exist: {path}", "EntryNotFound", {"X-Repo-Commit": base}
                )
            del files[path]
        elif key == "deletedFolder":
            doomed = [p for p in files if p.startswith(path + "/")]
            if not doomed:
                raise _HttpError(
                    404, f"A folder with this name doesn't exist: {path}", "EntryNotFound", {"X-Repo-Commit": base}
                )
            for p in doomed:
                del files[p]
        else:
            raise _HttpError(400, f"Unknown commit operation {key!r}")


__all__ = ["DEFAULT_TOKEN", "LFS_THRESHOLD", "HubServer"]
