"""`pack --hub --stream`: the shards read from the Hub straight into the packs, never stored.

Each shard is resolved once through huggingface_hub (`get_hf_file_metadata`: its size, commit,
LFS sha256 and the signed location it redirects to), its header fetched with two range requests
(the 8-byte length, then the header), and the packs planned from the headers exactly as from files.
Then every shard streams in its own thread, in ranges of `RANGE_BYTES` sent to the location through
huggingface_hub's own HTTP session, each piece written at its final offsets by the core (cast or
quantized on the way) and hashed in order. Nothing is committed before every shard's sha256 matches
the Hub's. Memory is the pieces in flight: one per shard.

Faults: a connection cut or stalled, a 5xx or 429, a 200 (the whole file) or a wrong
`Content-Range` in answer to a range, a 416, a short body: the range is asked again from the last
byte received, after a backoff, up to `ATTEMPTS` times in a row without progress. A 401/403 from
the location (signed URLs expire) resolves the file again for a fresh location. The revision is
pinned to the commit it resolved to when the run started."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

from .. import _core
from .._errors import HubError
from ._client import _hf, hub_errors, is_transport_error
from .download import Fetched

if TYPE_CHECKING:
    from .._packing import Job

T = TypeVar("T")

# Bytes asked per range request: large, so that requests are few (a 5 GB shard in 20), and small
# enough that a range asked again after an expired location is cheap.
RANGE_BYTES = 256 << 20
# Bytes handed to the core and the hash at a time: the memory each shard holds.
PIECE_BYTES = 4 << 20
# Shards streamed at once (one connection each).
STREAMS = 8
# Attempts in a row without a byte of progress before a shard is given up, and the waits between.
ATTEMPTS = 6
BACKOFF_SECONDS = (0.5, 1.0, 2.0, 4.0, 8.0)
# Seconds to wait for a connection or for the next bytes of a body.
TIMEOUT_SECONDS = 60.0
# The safetensors crate's bound on a header: a larger length is refused before it is fetched.
MAX_HEADER_BYTES = 100_000_000


class _Retry(Exception):
    """An answer or a transfer to try again (from the last byte received)."""


class _Expired(_Retry):
    """The location refused the request: resolve the file again for a fresh one."""


@dataclass
class RemoteShard:
    """A shard as the Hub serves it: where, how big, what its bytes hash to, and its header."""

    label: str  # repository@commit, for errors
    name: str
    path: Path  # where the shard would lie in the cache's snapshot: names it in the plan
    url: str  # the Hub URL, pinned to the commit (resolved again when the location expires)
    size: int
    sha256: str
    location: str
    head: bytes = b""

    @property
    def data_start(self) -> int:
        return len(self.head)


@dataclass
class StreamStats:
    """What streaming took: bytes received (retried bytes included), retries, wall seconds, and
    the shard that took longest."""

    shards: int = 0
    fetched_bytes: int = 0
    retries: int = 0
    seconds: float = 0.0
    slowest_shard: str = ""
    slowest_shard_seconds: float = 0.0
    shard_seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "shards": self.shards,
            "fetched_bytes": self.fetched_bytes,
            "retries": self.retries,
            "seconds": round(self.seconds, 3),
            "slowest_shard": self.slowest_shard,
            "slowest_shard_seconds": round(self.slowest_shard_seconds, 3),
        }


class StreamClient:
    """huggingface_hub's session, headers and metadata call, and the counters of one run."""

    def __init__(self) -> None:
        self.hf = _hf()
        self.session = self.hf.utils.get_session()
        self.lock = threading.Lock()
        self.stats = StreamStats()

    def resolve(self, shard: RemoteShard) -> None:
        """Asks the Hub where the shard is (its redirect location), and checks it is still the
        file the run started with."""
        with hub_errors(shard.label, shard.label.split("@")[0]):
            meta = self.hf.get_hf_file_metadata(shard.url, retry_on_errors=True)
        sha256 = (meta.etag or "").lower()
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise HubError.at(shard.label, f"{shard.name}: not an LFS file (no sha256 to check it against)")
        if shard.sha256 and (sha256, meta.size) != (shard.sha256, shard.size):
            raise HubError.at(shard.label, f"{shard.name}: changed on the Hub while it was being read")
        shard.sha256, shard.size, shard.location = sha256, meta.size or 0, meta.location

    def headers(self, location: str) -> dict[str, str]:
        headers: dict[str, str] = self.hf.utils.build_hf_headers()
        headers["Accept-Encoding"] = "identity"
        # A signed location elsewhere (the CDN) gets no token, as huggingface_hub's own downloads.
        if _origin(location) != _origin(self.hf.constants.ENDPOINT):
            headers.pop("authorization", None)
            headers.pop("Authorization", None)
        return headers

    @contextmanager
    def get_range(self, shard: RemoteShard, start: int, end: int) -> Iterator[Any]:
        """The response to a request for bytes start..end-1 of the shard, checked to be exactly
        that range (anything else raises _Retry or _Expired)."""
        headers = {**self.headers(shard.location), "Range": f"bytes={start}-{end - 1}"}
        with self.session.stream(
            "GET", shard.location, headers=headers, timeout=TIMEOUT_SECONDS, follow_redirects=True
        ) as response:
            status = response.status_code
            if status in (401, 403):
                raise _Expired(f"the location answered {status}")
            if status == 200:
                raise _Retry("a range request was answered with the whole file (200)")
            if status != 206:
                if status == 416 or status == 429 or status >= 500:
                    raise _Retry(f"answered {status}")
                with hub_errors(shard.label, shard.label.split("@")[0]):
                    self.hf.utils.hf_raise_for_status(response)
                raise _Retry(f"answered {status}")
            expected = f"bytes {start}-{end - 1}/{shard.size}"
            got = response.headers.get("Content-Range", "")
            if got.strip() != expected:
                raise _Retry(f"answered Content-Range {got!r} to a request for {expected!r}")
            yield response

    def count(self, fetched: int = 0, retries: int = 0) -> None:
        with self.lock:
            self.stats.fetched_bytes += fetched
            self.stats.retries += retries


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme, parts.netloc


def remote_shards(fetched: Sequence[Fetched], client: StreamClient) -> list[RemoteShard]:
    """Resolves every shard the repositories leave on the Hub and fetches its header, several at
    once (each is three round trips: the resolve, the header's length, the header)."""
    shards = [
        RemoteShard(
            f"{f.spec.repo}@{f.commit[:12]}",
            name,
            f.snapshot / name,
            client.hf.hf_hub_url(f.spec.repo, name, revision=f.commit),
            f.sizes.get(name, 0),
            "",
            "",
        )
        for f in fetched
        for name in f.streamed
    ]
    in_threads(shards, lambda shard, _stop: _read_head(client, shard), STREAMS, "heartmula-burn-resolve")
    return shards


def _read_head(client: StreamClient, shard: RemoteShard) -> None:
    client.resolve(shard)
    if shard.size < 8:
        raise HubError.at(
            shard.label, f"{shard.name}: only {shard.size} bytes, shorter than a safetensors header length"
        )
    length_bytes = _fetch_exact(client, shard, 0, 8)
    length = int.from_bytes(length_bytes, "little")
    if length > MAX_HEADER_BYTES or 8 + length > shard.size:
        raise HubError.at(
            shard.label, f"{shard.name}: header length {length} does not fit in the file of {shard.size} bytes"
        )
    shard.head = length_bytes + _fetch_exact(client, shard, 8, 8 + length)


def in_threads(items: Sequence[T], work: Callable[[T, threading.Event], object], count: int, name: str) -> None:
    """Runs `work(item, stop)` for every item in up to `count` daemon threads, waiting in short
    slices so that Ctrl-C and SIGTERM stop it at once; the first failure sets `stop` (the others
    end at their next piece) and is raised here."""
    todo = list(items)
    stop = threading.Event()
    lock = threading.Lock()
    failures: list[BaseException] = []

    def run() -> None:
        while not stop.is_set():
            with lock:
                if not todo:
                    return
                item = todo.pop(0)
            try:
                work(item, stop)
            except BaseException as e:  # noqa: BLE001 (raised again in the waiting thread)
                with lock:
                    failures.append(e)
                stop.set()
                return

    threads = [threading.Thread(target=run, name=name, daemon=True) for _ in range(max(1, min(count, len(todo))))]
    try:
        for t in threads:
            t.start()
        for t in threads:
            while t.is_alive():
                t.join(0.1)
    finally:
        stop.set()  # a signal in the wait: the workers stop at their next piece
    real = [e for e in failures if not isinstance(e, InterruptedError)]
    if real:
        raise real[0]


def _fetch_exact(client: StreamClient, shard: RemoteShard, start: int, end: int) -> bytes:
    """Bytes start..end-1 of a shard, with the retries of a streamed range (for headers)."""
    pieces: list[bytes] = []
    _with_retries(client, shard, start, end, lambda _offset, piece: pieces.append(piece), threading.Event())
    return b"".join(pieces)


def _with_retries(
    client: StreamClient,
    shard: RemoteShard,
    start: int,
    end: int,
    take: Callable[[int, bytes], object],
    stop: threading.Event,
) -> None:
    """Hands `take(offset, piece)` every byte of start..end-1 in order, asking again from the last
    byte received after a fault; gives up after ATTEMPTS faults in a row without progress."""
    position, failures = start, 0
    received = bytearray()  # what arrived since the last piece was handed on

    def hand_on() -> None:
        nonlocal position
        if received:
            take(position, bytes(received))
            position += len(received)
            client.count(fetched=len(received))
            received.clear()

    while True:
        before = position
        fault: Exception
        try:
            with client.get_range(shard, position, end) as response:
                for data in response.iter_bytes():
                    if stop.is_set():
                        raise InterruptedError
                    received += data[: end - position - len(received)]
                    if len(received) >= PIECE_BYTES or position + len(received) == end:
                        hand_on()
                    if position == end:
                        return
            fault = _Retry(f"the body ended at byte {position}, before byte {end}")
        except _Retry as e:
            fault = e
        except Exception as e:
            if not is_transport_error(e):
                raise
            fault = _Retry(f"{type(e).__name__}: {e}")
        hand_on()  # the bytes that came before the fault are good: asked again from the next one
        failures = 0 if position > before else failures + 1
        if failures >= ATTEMPTS:
            raise HubError.at(shard.label, f"{shard.name}: gave up after {ATTEMPTS} attempts in a row: {fault}")
        client.count(retries=1)
        if failures and stop.wait(BACKOFF_SECONDS[min(failures, len(BACKOFF_SECONDS)) - 1]):
            raise InterruptedError
        if isinstance(fault, _Expired):
            client.resolve(shard)


class Streamer:
    """Streams the shards into the packs: `stage` is `pack_manifests`' StagePacks."""

    def __init__(self, client: StreamClient, shards: Sequence[RemoteShard], *, quiet: bool) -> None:
        self.client = client
        self.shards = list(shards)
        self.quiet = quiet

    @property
    def stats(self) -> StreamStats:
        return self.client.stats

    def stage(
        self, jobs: Sequence[Job], burn_version: str, force: bool
    ) -> list[tuple[_core.WriteSummary, _core.StagedFile]]:
        packs = _core.StreamedPacks(
            [(job.manifest.core_items(), job.manifest.metadata, job.output) for job in jobs],
            [(s.path, s.head, s.size) for s in self.shards],
            overwrite=force,
            burn_version=burn_version,
        )
        try:
            self._stream(packs)
            return packs.finish()
        finally:
            packs.discard()  # after finish: nothing left to discard

    def _stream(self, packs: _core.StreamedPacks) -> None:
        stats = self.client.stats
        stats.shards = len(self.shards)
        lock = threading.Lock()
        started = time.perf_counter()
        bar = self.client.hf.utils.tqdm(
            total=sum(s.size for s in self.shards),
            initial=sum(s.data_start for s in self.shards),
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc="stream",
            disable=self.quiet or None,
        )

        def one(shard: RemoteShard, stop: threading.Event) -> None:
            digest = hashlib.sha256(shard.head)
            shard_started = time.perf_counter()

            def take(offset: int, piece: bytes) -> None:
                packs.feed(shard.path, offset, piece)
                digest.update(piece)
                with lock:
                    bar.update(len(piece))

            _with_retries(self.client, shard, shard.data_start, shard.size, take, stop)
            got = digest.hexdigest()
            if got != shard.sha256:
                raise HubError.at(
                    shard.label,
                    f"{shard.name}: the bytes received have sha256 {got}, the Hub gave {shard.sha256}; "
                    "nothing was written",
                )
            with lock:
                stats.shard_seconds[shard.name] = time.perf_counter() - shard_started

        # The largest first: the slowest shard sets the wall time.
        try:
            in_threads(sorted(self.shards, key=lambda s: -s.size), one, STREAMS, "heartmula-burn-stream")
        finally:
            bar.close()
        stats.seconds = time.perf_counter() - started
        if stats.shard_seconds:
            stats.slowest_shard, stats.slowest_shard_seconds = max(stats.shard_seconds.items(), key=lambda kv: kv[1])
