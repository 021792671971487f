"""Stopping a run part-way (Ctrl-C, SIGTERM from `timeout`/systemd/`docker stop`, SIGHUP from a
closed terminal, or an error raised by the progress callback) leaves the destination exactly as it
was and no temporary file behind, with one line on stderr and exit 128+N."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import assert_clean_failure, big_sparse_checkpoint
from heartmula_burn import build_manifest, load_checkpoint, pack_manifest


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize("error", [KeyboardInterrupt, ValueError])
def test_callback_exception_aborts_and_cleans_up(tiny_ckpt, tmp_path, error):
    out = tmp_path / "heartmula.bpk"
    out.write_bytes(b"previous pack")
    manifest = build_manifest(load_checkpoint(tiny_ckpt))
    calls = []

    def progress(done, total):
        calls.append((done, total))
        raise error("stop")

    with pytest.raises(error):
        pack_manifest(manifest, out, force=True, progress=progress)
    assert len(calls) == 1
    assert out.read_bytes() == b"previous pack"
    assert listing(tmp_path) == ["heartmula.bpk"]


def test_progress_reaches_the_total(tiny_ckpt, tmp_path):
    seen = []
    result = pack_manifest(
        build_manifest(load_checkpoint(tiny_ckpt)), tmp_path / "p.bpk", progress=lambda d, t: seen.append((d, t))
    )
    total = result.packs[0].data_bytes
    assert seen[-1] == (total, total)
    assert all(a[0] <= b[0] for a, b in zip(seen, seen[1:]))


def bytes_written(pid: int) -> int | None:
    """What the process has written so far (Linux's per-process I/O accounting), None once gone."""
    try:
        io = Path(f"/proc/{pid}/io").read_text()
    except OSError:
        return None
    return next(int(line.split()[1]) for line in io.splitlines() if line.startswith("wchar:"))


def interrupt(cmd: list[str], watch: Path, sig: signal.Signals) -> tuple[subprocess.CompletedProcess[str], int]:
    """Starts `cmd`, waits until it has a temporary output in `watch` and has written STARTED bytes
    of it, sends `sig`; returns the finished process and how many bytes it wrote after the signal."""
    with subprocess.Popen(
        [sys.executable, "-m", "heartmula_burn", *cmd], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    ) as proc:  # on any way out: the pipe closed, the process waited for
        deadline = time.monotonic() + 120  # a hang, not a bound on how fast anything is
        while (
            not any(n.endswith(".heartmula-partial") for n in os.listdir(watch))
            or (bytes_written(proc.pid) or 0) < STARTED
        ):
            if proc.poll() is not None or time.monotonic() >= deadline:
                proc.kill()
                raise AssertionError("the run never started writing")
            time.sleep(0.01)
        at_signal = last = bytes_written(proc.pid) or 0
        proc.send_signal(sig)
        while proc.poll() is None:
            last = bytes_written(proc.pid) or last
            time.sleep(0.005)
        _, stderr = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(proc.args, proc.returncode, "", stderr), last - at_signal


STARTED = 64 << 20  # written before the signal: the conversion is under way, far from done
SIGNALS = {signal.SIGINT: ("SIGINT", 130), signal.SIGTERM: ("SIGTERM", 143), signal.SIGHUP: ("SIGHUP", 129)}


@pytest.mark.parametrize("sig", list(SIGNALS), ids=lambda s: s.name)
def test_a_signal_stops_a_pack_where_it_is_and_leaves_nothing(tmp_path, sig):
    src = big_sparse_checkpoint(tmp_path / "src")  # 4 GiB: converting it to BF16 takes seconds
    out = tmp_path / "out"
    out.mkdir()
    (out / "p.bpk").write_bytes(b"the previous pack")
    cmd = ["pack", str(src), "--any-model", "--dtype", "bf16", "-o", str(out / "p.bpk"), "--force"]
    proc, after = interrupt(cmd, out, sig)
    name, code = SIGNALS[sig]
    # Stopped where it was, not after the conversion: 2 GiB were left to write when the signal came.
    # (How fast it stops, within a second, is the benchmark's figure, not a pass/fail test's.)
    assert after < 256 << 20, f"wrote {after >> 20} MiB after the signal"
    assert_clean_failure(proc, name, "nothing was put in place", rc=code)
    assert listing(out) == ["p.bpk"] and (out / "p.bpk").read_bytes() == b"the previous pack"


def test_sigterm_stops_an_export_and_leaves_no_folder(tmp_path):
    src = big_sparse_checkpoint(tmp_path / "src")
    out = tmp_path / "export"
    out.mkdir()
    cmd = ["export-raw", "--checkpoint-root", str(src), "--output-root", str(out), "--any-model", "--dtype", "bf16"]
    proc, _ = interrupt(cmd, out, signal.SIGTERM)
    assert_clean_failure(proc, "SIGTERM", rc=143)
    assert listing(out) == []
