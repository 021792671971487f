"""`pack --hub --stream`: the shards read from the Hub straight into the packs, never stored.

Each shard is resolved once through huggingface_hub (`get_hf_file_metadata`: its size, commit,
LFS sha256 and the signed location it redirects to), its header read (two small ranges) for the
planner, and, once the packs are planned from the headers exactly as from files, its data read in
ranges of `RANGE_BYTES` through huggingface_hub's own HTTP session and written at its final
offsets by the core (cast or quantized on the way), which hashes every byte. `connections` bounds
the transfers open at once, header reads included. Nothing is put in place before every shard's
sha256 matches the Hub's. Memory is the pieces in flight (one per connection) and the headers
(at most `MAX_HEADER_BYTES` in all).

Resume: the packs are written to partials beside the outputs that outlive the run, and every
`JOURNAL_SECONDS` the core puts their bytes on disk and then journals how far each shard reached
(with its hash state). An interrupted run (a signal, a network down past the retry window, a
crash) leaves them; the same command continues from there, fetching only what is missing. A run
whose commit, shards or options differ starts over, as `fresh` does.

Faults: a connection cut, refused or stalled (less than `STALL_BYTES` in `STALL_SECONDS`), a 5xx
or 429, a 200 (the whole file) or a wrong `Content-Range` in answer to a range, a 416, a short
body: the range is asked again from the last byte received, after a backoff with jitter (or the
server's Retry-After), for as long as the shard made progress within `retry_window` seconds. A
401/403 from the location (signed URLs expire) resolves the file again for a fresh location. The
revision is pinned to the commit it resolved to when the run started."""

from __future__ import annotations

import datetime
import email.utils
import random
import sys
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
from ._client import _hf, hub_errors, human, is_transport_error
from .download import Fetched

if TYPE_CHECKING:
    from .._packing import Job

# Bytes asked per range request: large, so that requests are few (a 5 GB shard in 20), and small
# enough that a range asked again after an expired location is cheap.
RANGE_BYTES = 256 << 20
# Bytes handed to the core at a time: the memory each transfer holds. A slow link hands on what it
# has after HAND_ON_SECONDS, so that the journal keeps up with it.
PIECE_BYTES = 4 << 20
HAND_ON_SECONDS = 0.5
# Transfers at once (one connection each), by default and at most.
STREAMS = 8
MAX_CONNECTIONS = 64
# A shard is given up when it has made no progress for this many seconds (faults retried meanwhile).
RETRY_WINDOW_SECONDS = 300.0
# The waits between attempts without progress: doubling from the first to the cap, each drawn
# between half and all of it (jitter: many clients cut at once do not come back at once).
BACKOFF_SECONDS = 0.5
MAX_BACKOFF_SECONDS = 10.0
# A server's Retry-After is obeyed up to this many seconds.
MAX_RETRY_AFTER_SECONDS = 120.0
# Seconds to wait for a connection or for the next bytes of a body.
TIMEOUT_SECONDS = 60.0
# A connection that delivers less than STALL_BYTES in STALL_SECONDS is dropped and asked again.
STALL_BYTES = 16 << 10
STALL_SECONDS = 60.0
# The safetensors crate's bound on a header, here on all the shards' headers together.
MAX_HEADER_BYTES = 100_000_000
# How often the bytes written are put on disk and journaled (what a crash can lose at most).
JOURNAL_SECONDS = 2.0
# Without a terminal (a log), a line of progress this often instead of a bar.
LOG_SECONDS = 30.0


def checked_connections(connections: int) -> int:
    """`connections` if it is within 1..MAX_CONNECTIONS; a ValueError saying so otherwise."""
    if not 1 <= connections <= MAX_CONNECTIONS:
        raise ValueError(f"connections must be 1 to {MAX_CONNECTIONS}, not {connections}")
    return connections


def checked_retry_window(seconds: float) -> float:
    """`seconds` if it is a window retries can use (1 s to a day); a ValueError saying so otherwise."""
    if not 1 <= seconds <= 86400:
        raise ValueError(f"the retry window must be 1 to 86400 seconds, not {seconds}")
    return float(seconds)


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


def backoff(failures: int, draw: Callable[[float, float], float] = random.uniform) -> float:
    """The wait before attempt `failures` + 1 of a range without progress: BACKOFF_SECONDS
    doubled per failure up to MAX_BACKOFF_SECONDS, drawn between half and all of it."""
    if failures <= 0:
        return 0.0
    ceiling = min(BACKOFF_SECONDS * 2 ** min(failures - 1, 30), MAX_BACKOFF_SECONDS)
    return draw(ceiling / 2, ceiling)


class _Stall:
    """Drops a transfer that takes more than STALL_SECONDS for any STALL_BYTES: a trickle never
    reaches the read timeout, since each byte restarts it."""

    def __init__(self) -> None:
        self.since, self.bytes = time.monotonic(), 0

    def add(self, count: int) -> None:
        self.bytes += count
        now = time.monotonic()
        if self.bytes >= STALL_BYTES:
            self.since, self.bytes = now, 0
        elif now - self.since >= STALL_SECONDS:
            raise _Retry(f"stalled: {self.bytes} bytes in {now - self.since:.0f} s")


def _with_retries(
    client: StreamClient,
    shard: RemoteShard,
    start: int,
    end: int,
    take: Callable[[int, bytes], object],
    stop: threading.Event,
    boundary: Callable[[int], int] | None = None,
    retry_window: float = RETRY_WINDOW_SECONDS,
) -> None:
    """Hands `take(offset, piece)` every byte of start..end-1 in order, in ranges of RANGE_BYTES,
    asking again from the last byte received after a fault; gives up when `retry_window` seconds
    pass without progress. A piece ends at `boundary(offset)` (default: PIECE_BYTES on) or earlier."""
    position, failures = start, 0
    progressed = handed = time.monotonic()
    received = bytearray()  # what arrived since the last piece was handed on

    def hand_on() -> None:
        nonlocal position, handed
        handed = time.monotonic()
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
                stall = _Stall()
                for data in response.iter_bytes():
                    if stop.is_set():
                        raise InterruptedError
                    received += data[: range_end - position - len(received)]
                    limit = boundary(position) if boundary else position + PIECE_BYTES
                    late = boundary is None and time.monotonic() - handed >= HAND_ON_SECONDS
                    if late or position + len(received) >= min(limit, range_end):
                        hand_on()
                    if position == range_end:
                        break
                    stall.add(len(data))
            hand_on()
            if position == range_end:
                failures, progressed = 0, time.monotonic()
                continue
            fault = _Retry(f"the body ended at byte {position}, before byte {range_end}")
        except _Retry as e:
            fault = e
        except Exception as e:
            if not is_transport_error(e):
                raise
            fault = _Retry(f"{type(e).__name__}: {e}")
        hand_on()  # the bytes that came before the fault are good: asked again from the next one
        now = time.monotonic()
        if position > before:
            failures, progressed = 0, now
        failures += 1
        if now - progressed >= retry_window:
            raise HubError.at(
                shard.label, f"{shard.name}: no progress for {now - progressed:.0f} s, the last fault: {fault}"
            )
        client.count(retries=1)
        # Never past the window: the last attempt comes before it closes.
        wait = min(max(backoff(failures - 1), fault.wait), max(progressed + retry_window - now - 0.01, 0.0))
        if wait and stop.wait(wait):
            raise InterruptedError
        if isinstance(fault, _Expired):
            client.resolve(shard)


class _HeadReader:
    """A shard's first bytes, its header's length then its header, collected for the planner."""

    def __init__(self, shard: RemoteShard, streamer: Streamer) -> None:
        self.shard, self.streamer = shard, streamer
        self.head = bytearray()
        self.data_start: int | None = None  # known once the header's length is

    def boundary(self, position: int) -> int:
        return 8 if self.data_start is None else self.data_start

    def take(self, offset: int, piece: bytes) -> None:
        self.head += piece
        if self.data_start is None and len(self.head) >= 8:
            self.data_start = 8 + self._header_length()

    def _header_length(self) -> int:
        shard = self.shard
        length = int.from_bytes(self.head[:8], "little")
        if length > MAX_HEADER_BYTES or 8 + length > shard.size:
            raise HubError.at(
                shard.label, f"{shard.name}: header length {length} does not fit in the file of {shard.size} bytes"
            )
        self.streamer.reserve_header(shard, length)
        return length


class Streamer:
    """The shards from the Hub into the packs. `start` resolves every shard and reads its header,
    `connections` at once; `heads` waits for the headers; `stage` (`pack_manifests`' StagePacks)
    plans the packs, continues an earlier run's partials when they fit (unless `fresh`), and
    streams the data into them; `close` stops everything, leaving the partials and their journal
    for the next run when the run was interrupted, and nothing otherwise."""

    def __init__(
        self,
        client: StreamClient,
        shards: Sequence[RemoteShard],
        *,
        quiet: bool,
        connections: int = STREAMS,
        fresh: bool = False,
        retry_window: float = RETRY_WINDOW_SECONDS,
        say: Callable[[str], None] | None = None,
    ) -> None:
        self.client = client
        self.shards = sorted(shards, key=lambda s: -s.size)  # the largest first: they set the wall time
        self.quiet = quiet
        self.connections = connections
        self.fresh = fresh
        self.retry_window = retry_window
        self.say = say
        self.stop = threading.Event()
        self.planned = threading.Event()
        self.slots = threading.Semaphore(connections)
        self.packs: _core.StreamedPacks | None = None
        self.lock = threading.Lock()
        self.failures: list[BaseException] = []
        self.corrupt = False  # a shard's bytes did not hash to its sha256: nothing of it is kept
        self.threads: list[threading.Thread] = []
        self.header_bytes = 0
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
            disable=self.quiet or None,  # None: no bar without a terminal
        )
        for shard in self.shards:
            thread = threading.Thread(target=self._run, args=(shard,), name="heartmula-burn-stream", daemon=True)
            self.threads.append(thread)
            thread.start()

    def place(self, snapshots: dict[str, Path]) -> None:
        """Names each shard by where it would lie in its repository's snapshot in the cache (the
        folder the other files were fetched to), as the plan names shards. Before `heads`."""
        for shard in self.shards:
            shard.path = snapshots[shard.repo] / shard.name

    def reserve_header(self, shard: RemoteShard, length: int) -> None:
        """Counts a header about to be read against MAX_HEADER_BYTES for all shards together."""
        with self.lock:
            self.header_bytes += length
            total = self.header_bytes
        if total > MAX_HEADER_BYTES:
            raise HubError.at(
                shard.label,
                f"{shard.name}: the shards' headers add up to more than {MAX_HEADER_BYTES} bytes (a safetensors "
                "header is at most that)",
            )

    def _run(self, shard: RemoteShard) -> None:
        started = time.perf_counter()
        try:
            with self._slot():
                self.client.resolve(shard)
                if shard.size < 8:  # else its header would never complete
                    raise HubError.at(
                        shard.label,
                        f"{shard.name}: {shard.size} bytes, too short for a safetensors file (8 bytes give its header's "
                        "length)",
                    )
                head = _HeadReader(shard, self)
                self._fetch(shard, 0, 8, head.take, head.boundary)
                assert head.data_start is not None  # the 8 bytes just read gave it
                self._fetch(shard, 8, head.data_start, head.take, head.boundary)
                shard.head = bytes(head.head)
            self.wait_planned()
            packs = self.packs
            assert packs is not None
            offset = packs.resume_offset(shard.path)
            with self._slot():
                self._fetch(shard, offset, shard.size, lambda at, piece: packs.feed(shard.path, at, piece))
            got = packs.sha256(shard.path)
            if got != shard.sha256:
                self.corrupt = True
                raise HubError.at(
                    shard.label,
                    f"{shard.name}: the bytes received have sha256 {got}, the Hub gave {shard.sha256}; nothing was "
                    "written",
                )
        except BaseException as e:  # noqa: BLE001 (raised again in the waiting thread)
            with self.lock:
                self.failures.append(e)
            self.stop.set()
            return
        with self.lock:
            self.client.stats.shard_seconds[shard.name] = time.perf_counter() - started

    def _fetch(
        self,
        shard: RemoteShard,
        start: int,
        end: int,
        take: Callable[[int, bytes], object],
        boundary: Callable[[int], int] | None = None,
    ) -> None:
        _with_retries(self.client, shard, start, end, take, self.stop, boundary, self.retry_window)

    @contextmanager
    def _slot(self) -> Iterator[None]:
        """One of the `connections` transfers allowed at once, for the block."""
        while not self.slots.acquire(timeout=0.1):
            if self.stop.is_set():
                raise InterruptedError
        try:
            yield
        finally:
            self.slots.release()

    def wait_planned(self) -> None:
        while not self.planned.wait(0.1):
            if self.stop.is_set():
                raise InterruptedError
        if self.stop.is_set():
            raise InterruptedError

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
            [(s.path, s.head, s.size, s.sha256) for s in self.shards],
            overwrite=force,
            burn_version=burn_version,
            resumable=True,
            fresh=self.fresh,
        )
        try:
            self.packs = packs
            note = packs.resumed()
            if note and self.say is not None:
                self.say(note)
            kept = sum(packs.resume_offset(s.path) - len(s.head) for s in self.shards)
            if kept and self.client.bar is not None:
                self.client.bar.update(kept)
            self.planned.set()
            self._wait_journaling(packs)
            self._finish_stats()
            return packs.finish()
        finally:
            self.close()

    def _wait_journaling(self, packs: _core.StreamedPacks) -> None:
        """Waits for the transfers, journaling every JOURNAL_SECONDS; returns when all are done,
        raises as soon as one failed (the others are stopped by `close`, not waited for)."""
        journaled = logged = time.monotonic()
        while any(t.is_alive() for t in self.threads):
            self._raise_failure()
            if self.stop.wait(0.1):
                self._raise_failure()
                raise InterruptedError
            now = time.monotonic()
            if now - journaled >= JOURNAL_SECONDS:
                packs.checkpoint()
                journaled = now
            if now - logged >= LOG_SECONDS and not self.quiet and self.say is not None and not sys.stderr.isatty():
                self.say(self._progress_line())
                logged = now
        self._raise_failure()

    def _progress_line(self) -> str:
        stats, total = self.client.stats, sum(s.size for s in self.shards)
        seconds = max(time.perf_counter() - self.started, 1e-9)
        return f"stream: {human(stats.fetched_bytes)} fetched of {human(total)}, {human(int(stats.fetched_bytes / seconds))}/s"

    def _finish_stats(self) -> None:
        stats = self.client.stats
        stats.seconds = time.perf_counter() - self.started
        if stats.shard_seconds:
            stats.slowest_shard, stats.slowest_shard_seconds = max(stats.shard_seconds.items(), key=lambda kv: kv[1])

    def close(self) -> None:
        """Stops every transfer and lets go of the staged packs if not finished: kept for the
        next run (said how to continue) unless a shard's bytes did not hash to its sha256.
        Does nothing the second time."""
        self.stop.set()
        packs, self.packs = self.packs, None
        if packs is not None:
            if self.corrupt:
                packs.discard()
            else:
                kept = packs.suspend()
                if kept and self.say is not None:
                    total = sum(s.size for s in self.shards)
                    self.say(
                        f"{human(kept)} of the {human(total)} of shards are kept in partial packs beside the outputs: "
                        "run the same command again to continue, or add --fresh to start over"
                    )
        if self.client.bar is not None:
            self.client.bar.close()
