"""Stopping a pack part-way (Ctrl-C, or an error raised by the progress callback) leaves the
destination exactly as it was and no temporary file behind."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import assert_clean_failure
from heartmula_burn import build_manifest, load_checkpoint, pack_manifest


def listing(folder):
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
    summary = pack_manifest(
        build_manifest(load_checkpoint(tiny_ckpt)), tmp_path / "p.bpk", progress=lambda d, t: seen.append((d, t))
    )
    assert seen[-1] == (summary["data_bytes"], summary["data_bytes"])
    assert all(a[0] <= b[0] for a, b in zip(seen, seen[1:]))


def write_big_sparse_shard(path, nbytes):
    """A safetensors file holding one F32 tensor of `nbytes`, sparse on disk (reads as zeros)."""
    header = json.dumps({"big": {"dtype": "F32", "shape": [nbytes // 4], "data_offsets": [0, nbytes]}}).encode()
    header += b" " * (-len(header) % 8)
    with open(path, "wb") as f:
        f.write(len(header).to_bytes(8, "little") + header)
        f.truncate(8 + len(header) + nbytes)


def test_sigint_stops_the_cli_within_a_second(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    write_big_sparse_shard(src / "model.safetensors", 4 << 30)  # 4 GiB: converting it takes seconds
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-m", "heartmula_burn", "pack", src, "--any-model", "--dtype", "bf16", "-o", out / "p.bpk"],
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while not any(n.endswith(".heartmula-partial") for n in os.listdir(out)):
        assert proc.poll() is None and time.monotonic() < deadline, "the pack never started"
        time.sleep(0.01)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    sent = time.monotonic()
    _, stderr = proc.communicate(timeout=30)
    latency = time.monotonic() - sent
    assert latency < 1.0, f"took {latency:.2f} s to stop"
    assert_clean_failure(subprocess.CompletedProcess(proc.args, proc.returncode, "", stderr), "interrupted")
    assert listing(out) == []
