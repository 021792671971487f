"""`pack --hub --stream`: the shards read from the Hub straight into the packs, never stored.

Each shard is resolved once through huggingface_hub (`get_hf_file_metadata`: its size, commit,
LFS sha256 and the signed location it redirects to) and read from its first byte, in ranges of
`RANGE_BYTES` sent to the location through huggingface_hub's own HTTP session, one connection per
shard (`connections` at once). Its header goes to the planner while the other files of the
repositories are fetched, and the connection is held until every pack is planned from the headers,
exactly as from files; then each piece of data is written at its final offsets by the core (cast
or quantized on the way). Every shard is hashed in order, and nothing is put in place before every
sha256 matches the Hub's. Memory is the pieces in flight: one per shard. Shards beyond
`connections` read their header alone (two small ranges) and their data when a connection frees.

Faults: a connection cut or stalled, a 5xx or 429, a 200 (the whole file) or a wrong
`Content-Range` in answer to a range, a 416, a short body: the range is asked again from the last
byte received, after a backoff, up to `ATTEMPTS` times in a row without progress. A 401/403 from
the location (signed URLs expire) resolves the file again for a fresh location. The revision is
pinned to the commit it resolved to when the run started."""

from __future__ import annotations

import datetime
import email.utils
import hashlib
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from .. import _core
from .._errors import HubError
from ._client import _hf, hub_errors, is_transport_error, wait_for
from .download import Fetched

if TYPE_CHECKING:
    from .._packing import Job

# Bytes asked per range request: large, so that requests are few (a 5 GB shard in 20), and small
# enough that a range asked again after an expired location is cheap.
RANGE_BYTES = 256 << 20
# Bytes handed to the core and the hash at a time: the memory each shard holds.
PIECE_BYTES = 4 << 20
# Shards streamed at once (one connection each), by default and at most.
STREAMS = 8
MAX_CONNECTIONS = 64
# Attempts in a row without a byte of progress before a shard is given up, and the waits between.
ATTEMPTS = 6
BACKOFF_SECONDS = (0.5, 1.0, 2.0, 4.0, 8.0)
# A server's Retry-After is obeyed up to this many seconds.
MAX_RETRY_AFTER_SECONDS = 120.0
# Seconds to wait for a connection or for the next bytes of a body.
TIMEOUT_SECONDS = 60.0
# The safetensors crate's bound on a header: a larger length is refused before it is fetched.
MAX_HEADER_BYTES = 100_000_000


def checked_connections(connections: int) -> int:
    """`connections` if it is within 1..MAX_CONNECTIONS; a ValueError saying so otherwise."""
    if not 1 <= connections <= MAX_CONNECTIONS:
        raise ValueError(f"connections must be 1 to {MAX_CONNECTIONS}, not {connections}")
    return connections


class _Retry(Exception):
    """An answer or a transfer to try again (from the last byte received), no sooner than `wait`
    seconds from now when the server said when (Retry-After)."""

    def __init__(self, message: str, wait: float = 0.0) -> None:
        super().__init__(message)
        self.wait = wait


class _Expired(_Retry):
    """The location refused the request: resolve the file again for a fresh one."""


@dataclass
class RemoteShard:
    """A shard as the Hub serves it: where, how big, what its bytes hash to, and its header."""

    label: str  # repository@commit, for errors
    name: str
    repo: str
    path: Path  # where the shard would lie in the cache's snapshot (`Streamer.place`): names it in the plan
    url: str  # the Hub URL, pinned to the commit (resolved again when the location expires)
    size: int
    sha256: str
    location: str
    head: bytes = b""  # the 8-byte length and the header, once read


@dataclass
class StreamStats:
    """What streaming took: bytes received (a range asked again starts after the last byte
    received, so no byte counts twice), retries, wall seconds from the first request to the last
    byte, and the shard that took longest."""

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
        self.bar: Any = None  # the progress bar of the bytes fetched, once streaming starts

    def resolve(self, shard: RemoteShard) -> None:
        """Asks the Hub where the shard is (its redirect location), and checks it is still the
        file the run started with."""
        with hub_errors(shard.label, shard.repo):
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
                    raise _Retry(f"answered {status}", retry_after(response.headers.get("Retry-After")))
                with hub_errors(shard.label, shard.repo):
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
            if self.bar is not None and fetched:
                self.bar.update(fetched)


def retry_after(value: str | None, now: float | None = None) -> float:
    """Seconds a `Retry-After` header asks to wait (a number of seconds, or an HTTP date), at most
    MAX_RETRY_AFTER_SECONDS; 0 for none, or for one that cannot be read."""
    if not value:
        return 0.0
    value = value.strip()
    if value.isdigit():
        seconds = float(value)
    else:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return 0.0
        if when.tzinfo is None:  # an HTTP date is GMT
            when = when.replace(tzinfo=datetime.timezone.utc)
        seconds = when.timestamp() - (time.time() if now is None else now)
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_SECONDS)


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme, parts.netloc


def remote_shards(fetched: Sequence[Fetched], client: StreamClient) -> list[RemoteShard]:
    """The shards the repositories leave on the Hub (`leave_shards`), still to be resolved."""
    return [
        RemoteShard(
            f"{f.spec.repo}@{f.commit[:12]}",
            name,
            f.spec.repo,
            Path(name),
            client.hf.hf_hub_url(f.spec.repo, name, revision=f.commit),
            f.sizes.get(name, 0),
            "",
            "",
        )
        for f in fetched
        for name in f.streamed
    ]


def _with_retries(
    client: StreamClient,
    shard: RemoteShard,
    start: int,
    end: int,
    take: Callable[[int, bytes], object],
    stop: threading.Event,
    boundary: Callable[[int], int] | None = None,
) -> None:
    """Hands `take(offset, piece)` every byte of start..end-1 in order, in ranges of RANGE_BYTES,
    asking again from the last byte received after a fault; gives up after ATTEMPTS faults in a
    row without progress. A piece ends at `boundary(offset)` (default: PIECE_BYTES on) or earlier."""
    position, failures = start, 0
    received = bytearray()  # what arrived since the last piece was handed on

    def hand_on() -> None:
        nonlocal position
        if received:
            take(position, bytes(received))
            position += len(received)
            client.count(fetched=len(received))
            received.clear()

    while position < end:
        before = position
        fault: _Retry
        try:
            with client.get_range(shard, position, min(position + RANGE_BYTES, end)) as response:
                range_end = min(position + RANGE_BYTES, end)
                for data in response.iter_bytes():
                    if stop.is_set():
                        raise InterruptedError
                    received += data[: range_end - position - len(received)]
                    limit = boundary(position) if boundary else position + PIECE_BYTES
                    if position + len(received) >= min(limit, range_end):
                        hand_on()
                    if position == range_end:
                        break
            hand_on()
            if position == range_end:
                failures = 0
                continue
            fault = _Retry(f"the body ended at byte {position}, before byte {range_end}")
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
        backoff = BACKOFF_SECONDS[min(failures, len(BACKOFF_SECONDS)) - 1] if failures else 0.0
        wait = max(backoff, fault.wait)
        if wait and stop.wait(wait):
            raise InterruptedError
        if isinstance(fault, _Expired):
            client.resolve(shard)


class _ShardReader:
    """One shard's bytes from its first: the header collected (and handed to the planner), then
    the data fed to the packs once they are planned; everything hashed in order."""

    def __init__(self, shard: RemoteShard, streamer: Streamer) -> None:
        self.shard, self.streamer = shard, streamer
        self.digest = hashlib.sha256()
        self.head = bytearray()
        self.data_start: int | None = None  # known once the header's length is

    def boundary(self, position: int) -> int:
        """Where the piece that starts at `position` must end: the header's length, the header,
        then PIECE_BYTES at a time."""
        if self.data_start is None:
            return 8
        if position < self.data_start:
            return self.data_start
        return position + PIECE_BYTES

    def take(self, offset: int, piece: bytes) -> None:
        self.digest.update(piece)
        while piece:
            if self.data_start is not None and offset >= self.data_start:
                self.streamer.feed(self.shard, offset, piece)
                return
            part = piece[: self.boundary(offset) - offset]
            self.head += part
            offset += len(part)
            piece = piece[len(part) :]
            if self.data_start is None and len(self.head) == 8:
                self.data_start = 8 + self._header_length()
            if len(self.head) == self.data_start:
                self.shard.head = bytes(self.head)
                self.streamer.wait_planned()  # holding the connection: the Hub waits on TCP's window

    def _header_length(self) -> int:
        shard = self.shard
        length = int.from_bytes(self.head[:8], "little")
        if length > MAX_HEADER_BYTES or 8 + length > shard.size:
            raise HubError.at(
                shard.label, f"{shard.name}: header length {length} does not fit in the file of {shard.size} bytes"
            )
        return length

    def check(self) -> None:
        got = self.digest.hexdigest()
        if got != self.shard.sha256:
            shard = self.shard
            raise HubError.at(
                shard.label,
                f"{shard.name}: the bytes received have sha256 {got}, the Hub gave {shard.sha256}; nothing was written",
            )


class Streamer:
    """The shards from the Hub into the packs. `start` resolves every shard and reads its header
    (the largest `connections` shards in the request that then goes on with their data, held until
    the packs are planned; the others by two small ranges); `heads` waits for the headers; `stage`
    (`pack_manifests`' StagePacks) plans the packs and streams the data into them; `close` stops
    everything and leaves nothing behind."""

    def __init__(
        self, client: StreamClient, shards: Sequence[RemoteShard], *, quiet: bool, connections: int = STREAMS
    ) -> None:
        self.client = client
        self.shards = sorted(shards, key=lambda s: -s.size)  # the largest first: they set the wall time
        self.quiet = quiet
        self.connections = connections
        self.stop = threading.Event()
        self.planned = threading.Event()
        self.slots = threading.Semaphore(connections)
        self.packs: _core.StreamedPacks | None = None
        self.lock = threading.Lock()
        self.failures: list[BaseException] = []
        self.threads: list[threading.Thread] = []
        self.started = 0.0

    @property
    def stats(self) -> StreamStats:
        return self.client.stats

    def start(self) -> None:
        self.started = time.perf_counter()
        self.client.stats.shards = len(self.shards)
        self.client.bar = self.client.hf.utils.tqdm(
            total=sum(s.size for s in self.shards),
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc="stream",
            disable=self.quiet or None,
        )
        for i, shard in enumerate(self.shards):
            thread = threading.Thread(
                target=self._run, args=(shard, i < self.connections), name="heartmula-burn-stream", daemon=True
            )
            self.threads.append(thread)
            thread.start()

    def place(self, snapshots: dict[str, Path]) -> None:
        """Names each shard by where it would lie in its repository's snapshot in the cache (the
        folder the other files were fetched to), as the plan names shards. Before `heads`."""
        for shard in self.shards:
            shard.path = snapshots[shard.repo] / shard.name

    def _run(self, shard: RemoteShard, eager: bool) -> None:
        started = time.perf_counter()
        reader = _ShardReader(shard, self)
        try:
            self.client.resolve(shard)
            if shard.size < 8:  # else its header would never complete, and the planner wait for it
                raise HubError.at(
                    shard.label,
                    f"{shard.name}: {shard.size} bytes, too short for a safetensors file (8 bytes give its header's length)",
                )
            if eager:  # the header, then (once planned) the data, in one request
                self._acquire()
                try:
                    _with_retries(self.client, shard, 0, shard.size, reader.take, self.stop, reader.boundary)
                finally:
                    self.slots.release()
            else:  # the header alone now; the data when a connection is free
                _with_retries(self.client, shard, 0, 8, reader.take, self.stop, reader.boundary)
                header_end = reader.data_start
                assert header_end is not None  # the 8 bytes just read gave it
                _with_retries(self.client, shard, 8, header_end, reader.take, self.stop, reader.boundary)
                self.wait_planned()
                self._acquire()
                try:
                    _with_retries(self.client, shard, header_end, shard.size, reader.take, self.stop, reader.boundary)
                finally:
                    self.slots.release()
            reader.check()
        except BaseException as e:  # noqa: BLE001 (raised again in the waiting thread)
            with self.lock:
                self.failures.append(e)
            self.stop.set()
            return
        with self.lock:
            self.client.stats.shard_seconds[shard.name] = time.perf_counter() - started

    def _acquire(self) -> None:
        while not self.slots.acquire(timeout=0.1):
            if self.stop.is_set():
                raise InterruptedError

    def wait_planned(self) -> None:
        while not self.planned.wait(0.1):
            if self.stop.is_set():
                raise InterruptedError
        if self.stop.is_set():
            raise InterruptedError

    def feed(self, shard: RemoteShard, offset: int, piece: bytes) -> None:
        assert self.packs is not None
        self.packs.feed(shard.path, offset, piece)

    def _raise_failure(self) -> None:
        with self.lock:
            real = [e for e in self.failures if not isinstance(e, InterruptedError)]
        if real:
            raise real[0]

    def heads(self) -> dict[Path, tuple[list[_core.SourceTensor], dict[str, str]]]:
        """Every shard's tensors and metadata, parsed from its header (waits for them in short
        slices, so that Ctrl-C and SIGTERM stop it at once)."""
        while True:
            self._raise_failure()
            if all(s.head for s in self.shards):
                break
            if self.stop.wait(0.02):
                self._raise_failure()
                raise InterruptedError
        return {s.path: _core.parse_safetensors_head(s.path, s.head, s.size) for s in self.shards}

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
            self.packs = packs
            self.planned.set()
            wait_for(self.threads)
            self._raise_failure()
            if self.stop.is_set():
                raise InterruptedError
            self._finish_stats()
            return packs.finish()
        finally:
            self.close()

    def _finish_stats(self) -> None:
        stats = self.client.stats
        stats.seconds = time.perf_counter() - self.started
        if stats.shard_seconds:
            stats.slowest_shard, stats.slowest_shard_seconds = max(stats.shard_seconds.items(), key=lambda kv: kv[1])

    def close(self) -> None:
        """Stops every transfer (each ends at its next piece) and deletes the staged packs, if
        not finished. Does nothing the second time."""
        self.stop.set()
        if self.packs is not None:
            self.packs.discard()
        if self.client.bar is not None:
            self.client.bar.close()
