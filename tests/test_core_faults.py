"""The Rust core under faults a user or another program brings: shards that change or shrink while
they are read (on every copy path), SIGBUS from `kill` or with another handler installed, partials
and aside folders of other runs, file modes, and packs whose metadata lists a tensor twice. Each ends
in one line naming the file (and tensor), never in a signal death or a removed output."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import cbor2
import heartmula_burn as hb
import pytest
from conftest import assert_clean_failure, big_sparse_checkpoint, run_cli
from heartmula_burn import _core

MODEL = "HeartMuLa-oss-3B"
DEAD_PID = 0x7FFF_FFF0  # above pid_max: no such process here


def aged(shard: Path) -> None:
    """An hour-old modification time, so that any write now changes it."""
    st = shard.stat()
    os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns - 3600 * 10**9))


@pytest.mark.parametrize("dtype", ["bf16", "f32"])
def test_a_shard_rewritten_in_place_while_packing_fails_and_commits_nothing(tmp_path, dtype):
    src = big_sparse_checkpoint(tmp_path / "src", 2 << 30)
    shard = src / "model.safetensors"
    aged(shard)
    out = tmp_path / "out"
    out.mkdir()
    rewritten = []

    def rewrite(done: int, total: int) -> None:
        if not rewritten and done < total:
            with open(shard, "r+b") as f:  # same size, other bytes
                f.seek(shard.stat().st_size - (1 << 20))
                f.write(b"\x3f" * 4096)
            rewritten.append(done)

    with pytest.raises(hb.SourceError) as err:
        hb.pack_checkpoint(src, out / "p.bpk", any_model=True, dtype=dtype, progress=rewrite)
    assert rewritten
    assert str(err.value).startswith(f"{shard}: changed while being read (mtime "), str(err.value)
    assert os.listdir(out) == []


def test_a_shard_in_dev_shm_that_shrinks_names_the_shard_not_the_output(tmp_path):
    if not Path("/dev/shm").is_dir():
        pytest.skip("no /dev/shm")
    with tempfile.TemporaryDirectory(dir="/dev/shm") as shm:
        # tmpfs to another filesystem type: no kernel copy, the bytes are written from the mapping.
        src = big_sparse_checkpoint(Path(shm) / "src", 1 << 30)
        shard = src / "model.safetensors"
        out = tmp_path / "out"
        out.mkdir()

        def shrink(done: int, total: int) -> None:
            if done < total and shard.stat().st_size > 4096:
                os.truncate(shard, 4096)

        with pytest.raises(hb.SourceError) as err:
            hb.pack_checkpoint(src, out / "p.bpk", any_model=True, dtype="f32", progress=shrink)
        message = str(err.value)
        assert message.startswith(f"{shard}: tensor 'big': the file shrank while being read"), message
        assert "Bad address" not in message
        assert os.listdir(out) == []


def run_python(code: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(Path(hb.__file__).parent.parent)}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        check=False,
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_sigbus_sent_by_kill_is_not_swallowed(tmp_path):
    done = run_python(
        """
        import os, signal
        from heartmula_burn import _core
        guard = _core.MapGuard(1 << 20, 4096)  # installs the SIGBUS handler
        os.kill(os.getpid(), signal.SIGBUS)
        print("survived")
        """,
        tmp_path,
    )
    assert done.returncode == -signal.SIGBUS, (done.returncode, done.stdout, done.stderr)
    assert "survived" not in done.stdout


def test_faulthandler_enabled_after_the_first_open_does_not_defeat_the_guard(tmp_path):
    src = big_sparse_checkpoint(tmp_path / "src", 1 << 30)
    done = run_python(
        f"""
        import faulthandler, os
        import heartmula_burn as hb
        from heartmula_burn import _core
        shard = {str(src / "model.safetensors")!r}
        _core.read_safetensors_header(shard)  # the guard's handler is installed
        faulthandler.enable()  # ... and replaced
        def shrink(done, total):
            if done < total and os.stat(shard).st_size > 4096:
                os.truncate(shard, 4096)
        try:
            hb.pack_checkpoint({str(src)!r}, "p.bpk", any_model=True, dtype="bf16", progress=shrink)
        except hb.SourceError as e:
            print("refused:", e)
        """,
        tmp_path,
    )
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert "refused:" in done.stdout and "tensor 'big'" in done.stdout and "shrank" in done.stdout, done.stdout
    assert not (tmp_path / "p.bpk").exists()


def test_a_locked_partial_is_left_alone_whatever_its_pid_says(tmp_path):
    dest = tmp_path / "p.bpk"
    # A live run in another PID namespace, or on another machine sharing the folder.
    theirs = tmp_path / f".p.bpk.{DEAD_PID}.heartmula-partial"
    theirs.write_bytes(b"half a pack")
    with open(theirs, "rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        _core.partial_path(dest)  # sweeps what killed runs left
        assert theirs.read_bytes() == b"half a pack"
    _core.partial_path(dest)
    assert not theirs.exists()


def test_an_output_being_written_holds_the_lock_of_its_partial(tmp_path):
    staged = _core.StagedFile(tmp_path / "p.bpk")
    with open(staged.temp_path, "rb") as other, pytest.raises(BlockingIOError):
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    staged.discard()


def test_a_folder_moved_aside_by_a_killed_run_is_restored_not_deleted(tmp_path):
    dest = tmp_path / "export"
    aside = tmp_path / f".export.{DEAD_PID}.heartmula-aside"
    aside.mkdir()
    (aside / "README.md").write_text("the previous output")
    _core.partial_path(dest)
    assert (dest / "README.md").read_text() == "the previous output"
    assert not aside.exists()


def test_a_replaced_folder_leaves_nothing_beside_it(tmp_path):
    dest = tmp_path / "export"
    for text in ("one", "two"):
        partial = _core.partial_path(dest)
        (partial / "sub").mkdir(parents=True)
        (partial / "sub" / "f").write_text(text)
        _core.commit_dir(partial, dest, overwrite=True)
    assert (dest / "sub" / "f").read_text() == "two"
    assert os.listdir(tmp_path) == ["export"]


def test_outputs_follow_the_umask_and_a_replaced_pack_keeps_its_mode(tiny_ckpt, tmp_path):
    out = tmp_path / "p.bpk"
    previous = os.umask(0o002)
    try:
        hb.pack_checkpoint(tiny_ckpt, out, subdir=MODEL, copy_extras=False)
    finally:
        os.umask(previous)
    assert out.stat().st_mode & 0o777 == 0o664
    out.chmod(0o600)
    hb.pack_checkpoint(tiny_ckpt, out, subdir=MODEL, copy_extras=False, force=True)
    assert out.stat().st_mode & 0o777 == 0o600


def pack_with_cbor(path: Path, cbor: bytes, data: int) -> Path:
    head = b"NRUB" + (1).to_bytes(2, "little") + len(cbor).to_bytes(4, "little") + cbor
    head += b"\0" * (-len(head) % 256)
    path.write_bytes(head + b"\0" * data)
    return path


def test_a_pack_listing_a_tensor_twice_is_refused_and_verify_says_so(tmp_path):
    def descriptor(start: int) -> bytes:
        return cbor2.dumps({"dtype": "F32", "shape": [1], "data_offsets": [start, start + 4]})

    # A CBOR map with the key 'a' twice (a dict cannot hold that: the map is written by hand).
    cbor = b"\xa1" + cbor2.dumps("tensors") + b"\xa2" + cbor2.dumps("a") + descriptor(0)
    cbor += cbor2.dumps("a") + descriptor(256)
    pack = pack_with_cbor(tmp_path / "twice.bpk", cbor, 260)
    with pytest.raises(hb.PackFileError) as err:
        _core.read_pack_index(pack)
    assert str(err.value) == f"{pack}: tensor 'a': appears twice in the metadata"
    proc = run_cli("verify", pack)
    assert proc.returncode == 1 and "appears twice" in proc.stderr, (proc.returncode, proc.stdout, proc.stderr)


def test_reader_messages_carry_no_rust_debug_text(tmp_path):
    wrong = cbor2.dumps({"tensors": {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}})
    with pytest.raises(hb.PackFileError) as err:
        _core.read_pack_index(pack_with_cbor(tmp_path / "sizes.bpk", wrong, 4))
    assert str(err.value).endswith("tensor 'a': holds 4 bytes but F32 [2] needs 8"), str(err.value)
    missing = cbor2.dumps({"tensors": {"a": {"dtype": "F32", "data_offsets": [0, 4]}}})
    with pytest.raises(hb.PackFileError) as err:
        _core.read_pack_index(pack_with_cbor(tmp_path / "missing.bpk", missing, 4))
    assert "missing field `shape`" in str(err.value) and "Semantic" not in str(err.value), str(err.value)


def test_a_pack_asked_to_hold_a_name_twice_names_the_output(tmp_path):
    src = big_sparse_checkpoint(tmp_path / "src", 4096)
    item = _core.TensorRequest("w", src / "model.safetensors", "big", "F32")
    out = tmp_path / "p.bpk"
    with pytest.raises(hb.OutputError) as err:
        _core.pack([item, item], {}, out)
    assert str(err.value) == f"{out}: tensor 'w' appears twice in the pack"
    assert_clean_failure(subprocess.CompletedProcess([], 1, "", f"{err.value}\n"), str(out))


def test_a_pack_rewritten_while_it_is_verified_is_the_packs_fault(tmp_path):
    # The pack is what verify reads as "the file under test": its change is a PackFileError
    # naming it, not a SourceError (which would blame the checkpoint).
    src = big_sparse_checkpoint(tmp_path / "src", 256 << 20)
    pack = tmp_path / "p.bpk"
    hb.pack_checkpoint(src, pack, any_model=True)
    aged(pack)
    rewritten = []

    def rewrite(done: int, total: int) -> None:
        # At the first report, which may be the last (reports come at most ten times a second):
        # the pack is checked for changes after it.
        if not rewritten:
            with open(pack, "r+b") as f:  # same size, other bytes
                f.seek(pack.stat().st_size - 4096)
                f.write(b"\x3f" * 4096)
            rewritten.append(done)

    with pytest.raises(hb.PackFileError) as err:
        hb.verify(pack, src, progress=rewrite)
    assert rewritten
    assert str(err.value).startswith(f"{pack}: changed while being read (mtime "), str(err.value)
