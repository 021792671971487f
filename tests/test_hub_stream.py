"""`pack --hub --stream`: shards read from the test Hub in ranges straight into the packs, with the
real huggingface_hub client over real HTTP (tests/hub_server.py): the packs equal `pack --hub`'s,
no shard is stored, every byte is served once, and the faults a CDN throws are survived or refused."""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import LM, assert_clean_failure, crosscheck, repo_files, run_process
from hub_helpers import TOKEN, assert_same_packs, hub_cli, hub_env, stopped_stream
from hub_server import HubServer

crosscheck("huggingface_hub")

PACKS = ("heartmula.bpk", "heartcodec.bpk", "tokenizer.json", "gen_config.json")


def shards_of(tiny_root: Path) -> dict[str, Path]:
    """Every shard the Hub serves for the LM and the codec, by its path in the repository."""
    return {
        p.name: p
        for folder in ("HeartMuLa-oss-3B", "HeartCodec-oss")
        for p in (tiny_root / folder).glob("*.safetensors")
    }


def shard_requests(hub: HubServer, since: tuple[int, int], name: str) -> list[str]:
    """The Range headers of the GETs of a shard since `since` (`marks(hub)` earlier), in order;
    fails if a GET of it came without a Range."""
    gets = [p for m, p in hub.requests[since[0] :] if m == "GET" and p.endswith("/" + name)]
    ranges = [header for path, header in hub.ranges[since[1] :] if path.split("?")[0].endswith("/" + name)]
    assert len(ranges) == len(gets), f"{name}: {len(gets)} GETs, {len(ranges)} with a Range"
    return ranges


def marks(hub: HubServer) -> tuple[int, int]:
    return len(hub.requests), len(hub.ranges)


def served_once(headers: list[str], size: int) -> bool:
    """Whether the ranges asked cover bytes 0..size-1 exactly once, in order."""
    position = 0
    for header in headers:
        first, last = header.removeprefix("bytes=").split("-")
        if int(first) != position:
            return False
        position = int(last) + 1
    return position == size


def three_ranges(path: Path, data_from: int | None = None) -> list[str]:
    """The ranges a shard is read in: its header's length, its header, its data (from `data_from`)."""
    size, header_end = path.stat().st_size, 8 + int.from_bytes(path.read_bytes()[:8], "little")
    return ["bytes=0-7", f"bytes=8-{header_end - 1}", f"bytes={data_from or header_end}-{size - 1}"]


def hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def stream(
    hub: HubServer, tmp_path: Path, *args: Any, check_rc: int | None = 0, **env: str
) -> subprocess.CompletedProcess[str]:
    """`pack --hub --stream` into tmp_path/streamed, with its own cache."""
    command = ["pack", "--hub", "--stream", "-o", f"{tmp_path / 'streamed'}/", "-q", "--json", *args]
    return hub_cli(hub, tmp_path / "cache", *command, check_rc=check_rc, **env)


@pytest.mark.parametrize("dtype", ["f32", "q8"])
def test_streamed_packs_are_pack_hubs_byte_for_byte_and_no_shard_is_stored(
    hub, tiny_root, local_packs, tmp_path, dtype
):
    downloaded = f"{tmp_path / 'downloaded'}/"
    hub_cli(hub, tmp_path / "cached", "pack", "--hub", "-o", downloaded, "-q", "--dtype", dtype, check_rc=0)
    since = marks(hub)
    authorized = len(hub.cdn_authorized)
    report = json.loads(stream(hub, tmp_path, "--dtype", dtype, HF_TOKEN=TOKEN).stdout)
    assert hub.cdn_authorized[authorized:] == [], "the token goes to the Hub, never to the signed locations"
    for name in PACKS:
        assert (tmp_path / "streamed" / name).read_bytes() == (tmp_path / "downloaded" / name).read_bytes(), name
    if dtype == "f32":
        assert_same_packs(tmp_path / "streamed", local_packs, hub)
    # The cache holds the small files only: no shard, under any name.
    cache = tmp_path / "cache"
    shards = shards_of(tiny_root)
    digests = {hashlib.sha256(p.read_bytes()).hexdigest() for p in shards.values()}
    assert not list(cache.rglob("*.safetensors")) and not [p for p in cache.rglob("*") if p.name in digests]
    assert list(cache.rglob("config.json")) and list(cache.rglob("*.safetensors.index.json"))
    # Every shard byte served once: the header's length, the header (for the plan), then the data.
    for name, path in shards.items():
        assert shard_requests(hub, since, name) == three_ranges(path), name
    streamed = report["streamed"]
    assert streamed["fetched_bytes"] == sum(p.stat().st_size for p in shards.values())
    assert (streamed["retries"], streamed["shards"]) == (0, len(shards))
    assert streamed["slowest_shard"] in shards and 0 < streamed["slowest_shard_seconds"] <= streamed["seconds"]


def test_a_shard_whose_bytes_differ_from_its_sha256_fails_in_one_line_and_nothing_moves(hub, tiny_root, tmp_path):
    name = "model-00002-of-00004.safetensors"
    true = (tiny_root / "HeartMuLa-oss-3B" / name).read_bytes()
    at = len(true) * 2 // 3
    served = true[:at] + bytes([true[at] ^ 1]) + true[at + 1 :]
    out = tmp_path / "streamed"
    out.mkdir()
    (out / "heartmula.bpk").write_bytes(b"an earlier pack")
    hub.tamper[name] = at
    try:
        proc = stream(hub, tmp_path, "--force", check_rc=None)
    finally:
        del hub.tamper[name]
    assert_clean_failure(
        proc,
        f"{LM}@{hub.commits(LM)[0][:12]}",
        name,
        f"sha256 {hashlib.sha256(served).hexdigest()}",
        f"the Hub gave {hashlib.sha256(true).hexdigest()}",
    )
    assert [p.name for p in out.iterdir()] == ["heartmula.bpk"], "no partial file, nothing else put in place"
    assert (out / "heartmula.bpk").read_bytes() == b"an earlier pack"


def test_a_shard_too_short_for_a_header_fails_in_one_line_at_once(hub, tiny_root, tmp_path):
    """A .safetensors of 5 bytes committed by mistake (LFS stores it, with a valid sha256): one
    line naming the repository and the shard, exit 1, where the header read used to wait forever."""
    repo, name = "short/HeartMuLa-oss-3B", "model-00002-of-00004.safetensors"
    hub.add_repo(repo, {**repo_files(tiny_root / "HeartMuLa-oss-3B"), name: b"12345"})
    for connections in ("8", "1"):  # the header read with the data, and alone
        started = time.monotonic()
        proc = stream(hub, tmp_path, "--lm-repo", repo, "--connections", connections, check_rc=None)
        assert time.monotonic() - started < 60
        assert_clean_failure(proc, f"{repo}@", f"{name}: 5 bytes, too short for a safetensors file")
        assert not (tmp_path / "streamed").exists() or not list((tmp_path / "streamed").iterdir())


def test_a_log_gets_no_progress_frames(hub, tmp_path):
    """stderr not a terminal (a CI log, `2> log`): neither our bar nor huggingface_hub's draw
    carriage-return frames there (its bars are on by default: the variable that turns them off
    is not set here)."""
    env = hub_env(hub, tmp_path / "cache")
    del env["HF_HUB_DISABLE_PROGRESS_BARS"]
    command = ["pack", "--hub", "--stream", "-o", f"{tmp_path / 'streamed'}/", "--force"]
    proc = run_process(*command, env=env, check_rc=0)
    assert "\r" not in proc.stderr and "%|" not in proc.stderr, proc.stderr[-2000:]


def test_a_cut_connection_resumes_from_the_last_byte_received(hub, tiny_root, local_packs, tmp_path):
    name, path = max(shards_of(tiny_root).items(), key=lambda kv: kv[1].stat().st_size)
    since = marks(hub)
    hub.range_faults[name] = ["pass", "pass", "cut"]  # half the data, then the connection closes
    try:
        report = json.loads(stream(hub, tmp_path).stdout)
    finally:
        leftover = hub.range_faults.pop(name)
    assert leftover == []
    assert_same_packs(tmp_path / "streamed", local_packs, hub)
    size = path.stat().st_size
    *head, data = three_ranges(path)
    header_end = int(data.removeprefix("bytes=").split("-")[0])
    middle = header_end + (size - header_end) // 2
    assert shard_requests(hub, since, name) == [*head, data, f"bytes={middle}-{size - 1}"], (
        "asked again from the byte after the last one received"
    )
    assert report["streamed"]["retries"] == 1
    assert report["streamed"]["fetched_bytes"] == sum(p.stat().st_size for p in shards_of(tiny_root).values())


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        (None, 0.0),
        ("", 0.0),
        ("4", 4.0),
        (" 4 ", 4.0),
        ("0", 0.0),
        ("100000", 120.0),  # capped
        ("-3", 0.0),
        ("soon", 0.0),
        ("Wed, 21 Oct 2015 07:28:10 GMT", 10.0),  # 10 s after `now` below
        ("Wed, 21 Oct 2015 07:27:00 GMT", 0.0),  # in the past
    ],
)
def test_retry_after_is_read_as_seconds_or_an_http_date(header, seconds):
    from heartmula_burn._hub.stream import retry_after

    now = 1445412480.0  # Wed, 21 Oct 2015 07:28:00 GMT
    assert retry_after(header, now=now) == seconds


def test_the_backoff_doubles_to_its_cap_with_jitter_below():
    from heartmula_burn._hub.stream import backoff

    def highest(low: float, high: float) -> float:
        return high

    def lowest(low: float, high: float) -> float:
        return low

    assert [backoff(n, highest) for n in range(8)] == [0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert [backoff(n, lowest) for n in range(1, 8)] == [0.25, 0.5, 1.0, 2.0, 4.0, 5.0, 5.0]
    assert backoff(10_000, highest) == 10.0


def test_a_429_with_retry_after_is_asked_again_no_sooner(hub, tiny_root, local_packs, tmp_path):
    name = "model-00001-of-00002.safetensors"
    since = marks(hub)
    hub.range_faults[name] = ["429:4"]
    started = time.monotonic()
    try:
        report = json.loads(stream(hub, tmp_path).stdout)
    finally:
        leftover = hub.range_faults.pop(name)
    assert leftover == []
    assert time.monotonic() - started >= 4.0  # the backoff alone would have asked again after 0.5 s
    assert report["streamed"]["retries"] == 1
    assert len(shard_requests(hub, since, name)) == 4  # the 429, then the three ranges
    assert_same_packs(tmp_path / "streamed", local_packs, hub)


@pytest.mark.parametrize("faults", [["whole"], ["shifted"], ["416", "503"], ["cut", "cut"], ["expire"]])
def test_wrong_answers_to_a_range_are_asked_again(hub, tiny_root, local_packs, tmp_path, faults):
    name, other = "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"
    assert {name, other} <= set(shards_of(tiny_root))
    since = marks(hub)
    hub.range_faults[name] = list(faults)
    try:
        report = json.loads(stream(hub, tmp_path).stdout)
    finally:
        leftover = hub.range_faults.pop(name)
    assert leftover == [], "every fault was served"
    assert_same_packs(tmp_path / "streamed", local_packs, hub)

    def resolves(shard: str) -> int:
        return len([p for m, p in hub.requests[since[0] :] if m == "HEAD" and p.endswith("/" + shard)])

    assert report["streamed"]["retries"] == len(faults)
    expired = faults.count("expire")
    assert resolves(name) == resolves(other) + expired, "an expired location is resolved again, once; no other"


def test_connections_bound_every_transfer_header_reads_included(hub, tiny_root, tmp_path):
    """With 2 connections, never more than 2 bodies are open, while headers are read for the plan
    as while data flows (the bodies slowed so that every transfer overlaps the others)."""
    hub_cli(hub, tmp_path / "cached", "pack", "--hub", "-o", f"{tmp_path / 'downloaded'}/", "-q", check_rc=0)
    since = marks(hub)
    hub.max_open_bodies, hub.slow_bytes_per_s = 0, 4 << 20
    try:
        report = json.loads(stream(hub, tmp_path, "--connections", "2").stdout)
        most = hub.max_open_bodies
    finally:
        hub.slow_bytes_per_s = None
    for name in PACKS:
        assert (tmp_path / "streamed" / name).read_bytes() == (tmp_path / "downloaded" / name).read_bytes(), name
    for name, path in shards_of(tiny_root).items():
        assert shard_requests(hub, since, name) == three_ranges(path), name
    assert most == 2, f"{most} bodies open at once"
    assert report["streamed"]["retries"] == 0


def test_a_trickling_body_is_dropped_and_asked_again(hub, tiny_root, local_packs, tmp_path):
    """100 kB, then one byte every 5 s: no read ever times out, and the stall window drops it."""
    name, path = max(shards_of(tiny_root).items(), key=lambda kv: kv[1].stat().st_size)
    assert path.stat().st_size > 200_000
    since = marks(hub)
    hub.range_faults[name] = ["pass", "pass", "trickle"]
    started = time.monotonic()
    try:
        report = json.loads(stream(hub, tmp_path).stdout)
    finally:
        leftover = hub.range_faults.pop(name)
    assert leftover == [] and time.monotonic() - started < 240
    assert_same_packs(tmp_path / "streamed", local_packs, hub)
    requests = shard_requests(hub, since, name)
    assert len(requests) == 4 and report["streamed"]["retries"] == 1, requests


def test_a_cdn_outage_of_45_seconds_is_waited_out(hub, local_packs, tmp_path):
    hub.outage_until = time.monotonic() + 45  # every ranged GET answered 503 until then
    try:
        report = json.loads(stream(hub, tmp_path).stdout)
    finally:
        hub.outage_until = 0.0
    assert report["streamed"]["retries"] > 0
    assert_same_packs(tmp_path / "streamed", local_packs, hub)


def test_when_one_shard_fails_for_good_the_run_ends_at_once(hub, tiny_root, tmp_path):
    """A 404 for one shard while the others crawl (a minute and more at this rate): the run
    ends in one line within seconds, not when the others are done or next hear from the server."""
    name = max(shards_of(tiny_root), key=lambda n: shards_of(tiny_root)[n].stat().st_size)
    hub.slow_bytes_per_s, hub.range_faults[name] = 20_000, ["pass", "pass", "404"]
    started = time.monotonic()
    try:
        proc = stream(hub, tmp_path, check_rc=None)
    finally:
        hub.slow_bytes_per_s = None
        hub.range_faults.pop(name)
    assert time.monotonic() - started < 15
    assert_clean_failure(proc, name, "404")


def test_a_shard_without_progress_for_the_retry_window_fails_and_everything_stops(hub, tmp_path):
    """Past `--retry-window` without progress the run ends in one line, the other transfers
    stopped with it, and what was fetched is kept for the next run."""
    hub.outage_until = time.monotonic() + 600
    started = time.monotonic()
    try:
        proc = stream(hub, tmp_path, "--retry-window", "3", check_rc=None)
    finally:
        hub.outage_until = 0.0
    assert time.monotonic() - started < 30
    assert_clean_failure(proc, "no progress for 3 s", "answered 503")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_ends_the_stream_at_once_and_leaves_the_folder_as_it_was(hub, tmp_path, signum):
    out = tmp_path / "streamed"
    out.mkdir()
    (out / "tokenizer.json").write_text("an earlier file")
    hub.slow_bytes_per_s = 256 << 10
    try:
        with subprocess.Popen(
            [sys.executable, "-m", "heartmula_burn", "pack", "--hub", "--stream", "-o", f"{out}/", "-f"],
            env=hub_env(hub, tmp_path / "cache"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        ) as proc:
            deadline = time.monotonic() + 60
            while not list(out.glob(".*partial")) and time.monotonic() < deadline:  # the packs are being written
                time.sleep(0.05)
            assert list(out.glob(".*partial")), "the stream never started"
            time.sleep(0.3)
            started = time.monotonic()
            proc.send_signal(signum)
            _, err = proc.communicate(timeout=30)
            waited = time.monotonic() - started
    finally:
        hub.slow_bytes_per_s = None
    assert proc.returncode == 128 + signum, err
    assert waited < 5, f"ended {waited:.1f} s after the signal"
    assert "Traceback" not in err
    assert "run the same command again to continue, or add --fresh to start over" in err
    assert [p.name for p in out.iterdir() if not p.name.startswith(".")] == ["tokenizer.json"]
    assert (out / "tokenizer.json").read_text() == "an earlier file"
    assert hidden(out) == [
        ".heartcodec.bpk.resume.heartmula-partial",
        ".heartmula.bpk.resume.heartmula-journal",
        ".heartmula.bpk.resume.heartmula-partial",
    ]


def shard_bytes_served(hub: HubServer, tiny_root: Path) -> int:
    names = shards_of(tiny_root)
    return sum(n for path, n in hub.body_bytes.items() if path in names)


def killed_at(hub: HubServer, tiny_root: Path, out: Path, signum: int, fraction: float = 0.35) -> str:
    """Starts `pack --hub --stream` into `out` with the bodies slowed (about 5 s for 40% of the
    shard bytes), sends `signum` once its journal (every 2 s) covers `fraction` of them; returns
    its stderr."""
    total = sum(p.stat().st_size for p in shards_of(tiny_root).values())
    returncode, err = stopped_stream(
        hub,
        out.parent / "cache",
        out,
        ["pack", "--hub", "--stream", "-o", f"{out}/"],
        covered=fraction * total,
        signum=signum,
        bytes_per_s=max(total // 60, 1),  # per connection, 6 at once
    )
    assert returncode == (-signum if signum == signal.SIGKILL else 128 + signum), err
    return err


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGINT])
def test_a_stream_killed_at_40_percent_continues_where_it_was(hub, tiny_root, local_packs, tmp_path, signum):
    """Killed outright, or stopped by Ctrl-C, at about 40% of the shard bytes (once its journal
    covers 35%): the hidden partial stays, the same command fetches at most 75% of them again and
    writes the very packs, and leaves nothing behind."""
    out = tmp_path / "streamed"
    err = killed_at(hub, tiny_root, out, signum)
    if signum == signal.SIGINT:
        assert err.splitlines()[-1] == "heartmula-burn: error: interrupted (SIGINT); nothing was put in place", err
        assert "run the same command again to continue, or add --fresh to start over" in err
    assert ".heartmula.bpk.resume.heartmula-journal" in hidden(out)
    assert not [p for p in out.iterdir() if not p.name.startswith(".")], "nothing under a final name"
    total = sum(p.stat().st_size for p in shards_of(tiny_root).values())
    before = shard_bytes_served(hub, tiny_root)
    proc = hub_cli(hub, tmp_path / "cache", "pack", "--hub", "--stream", "-o", f"{out}/", check_rc=0)
    fetched = shard_bytes_served(hub, tiny_root) - before
    assert fetched <= 0.75 * total, f"the rerun fetched {fetched} of {total} shard bytes: {proc.stderr}"
    assert "continuing an interrupted run" in proc.stderr, proc.stderr
    assert_same_packs(out, local_packs, hub)
    assert hidden(out) == []


def test_a_shard_altered_on_the_hub_between_runs_fails_its_sha256_and_nothing_moves(hub, tiny_root, tmp_path):
    out = tmp_path / "streamed"
    killed_at(hub, tiny_root, out, signal.SIGKILL)
    name, path = max(shards_of(tiny_root).items(), key=lambda kv: kv[1].stat().st_size)
    hub.tamper[name] = path.stat().st_size - 1  # its last byte, which the first run never reached
    try:
        proc = stream(hub, tmp_path, check_rc=None)
    finally:
        del hub.tamper[name]
    assert_clean_failure(proc, name, "the bytes received have sha256", "the Hub gave")
    assert not out.exists() or [p.name for p in out.iterdir()] == [], "no pack, no partial left"


def test_fresh_discards_the_partial_and_fetches_everything(hub, tiny_root, local_packs, tmp_path):
    out = tmp_path / "streamed"
    killed_at(hub, tiny_root, out, signal.SIGKILL)
    total = sum(p.stat().st_size for p in shards_of(tiny_root).values())
    before = shard_bytes_served(hub, tiny_root)
    proc = hub_cli(hub, tmp_path / "cache", "pack", "--hub", "--stream", "--fresh", "-o", f"{out}/", check_rc=0)
    assert shard_bytes_served(hub, tiny_root) - before == total
    assert "--fresh: an earlier run's partial packs are discarded" in proc.stderr, proc.stderr
    assert_same_packs(out, local_packs, hub)
    assert hidden(out) == []


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--stream"], "--stream goes with --hub"),
        (["--hub", "--stream", "--ckpt-root", "ckpt"], "leaves the shards on the Hub"),
    ],
)
def test_stream_without_the_hub_or_with_a_ckpt_root_is_a_usage_error(hub, tmp_path, args, needle):
    proc = hub_cli(hub, tmp_path / "cache", "pack", *args, "-o", f"{tmp_path / 'out'}/")
    assert proc.returncode == 2 and needle in proc.stderr.splitlines()[-1], proc.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()


def test_pack_hub_streams_from_python(hub, local_packs, tmp_path):
    out = tmp_path / "runtime"
    code = (
        "import json, sys; from heartmula_burn import pack_hub; "
        f"r = pack_hub({str(out) + '/'!r}, stream=True); print(json.dumps(r.streamed))"
    )
    env = hub_env(hub, tmp_path / "cache")
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["retries"] == 0
    assert_same_packs(out, local_packs, hub)
    # And through convert.sh.
    converted = tmp_path / "converted"
    converted.mkdir()
    env = hub_env(hub, tmp_path / "cache", HEARTMULA_OUT_DIR=str(converted), PYTHON=sys.executable)
    script = Path(__file__).resolve().parent.parent / "convert.sh"
    subprocess.run(["bash", script, "--hub", "--stream", "-q"], env=env, check=True, timeout=300)
    assert_same_packs(converted, local_packs, hub)
