"""Bad input battery: every case ends with exit 1 (2 for usage), one line naming the file (and the
tensor, where there is one), no traceback, the destination exactly as it was, no temporary file."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import cbor2
import numpy as np
import pytest
from conftest import assert_clean_failure, big_sparse_checkpoint, run_cli, run_process
from safetensors.numpy import save_file

PREVIOUS = b"the previous pack, which must survive"


def raw_shard(path: Path, header, data: bytes = b"", header_len=None) -> Path:
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    n = len(text) if header_len is None else header_len
    path.write_bytes(struct.pack("<Q", n) + text + data)
    return path


def ok_header(**overrides):
    h = {
        "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
        "b": {"dtype": "F32", "shape": [1], "data_offsets": [8, 12]},
    }
    h.update(overrides)
    return h


SHARD_CASES = {
    "truncated": (lambda p: raw_shard(p, ok_header(), b"\0" * 11), ["truncated"]),
    "header length past the end": (
        lambda p: raw_shard(p, ok_header(), b"\0" * 12, header_len=10**6),
        ["header length"],
    ),
    "header not JSON": (lambda p: raw_shard(p, b"{not json at all}   ", b""), ["JSON"]),
    "offsets out of range": (
        lambda p: raw_shard(p, ok_header(b={"dtype": "F32", "shape": [1], "data_offsets": [8, 99]}), b"\0" * 12),
        ["'b'"],
    ),
    "offsets overlapping": (
        lambda p: raw_shard(p, ok_header(b={"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}), b"\0" * 8),
        ["'b'"],
    ),
    "size not shape x dtype": (
        lambda p: raw_shard(p, ok_header(b={"dtype": "F32", "shape": [2], "data_offsets": [8, 12]}), b"\0" * 12),
        ["shape x dtype"],
    ),
    "unknown dtype": (
        lambda p: raw_shard(p, ok_header(b={"dtype": "Q7", "shape": [1], "data_offsets": [8, 12]}), b"\0" * 12),
        ["Q7"],
    ),
    "dtype Burn cannot hold": (
        lambda p: raw_shard(p, ok_header(b={"dtype": "F8_E4M3", "shape": [4], "data_offsets": [8, 12]}), b"\0" * 12),
        ["'b'", "F8_E4M3"],
    ),
}


@pytest.fixture
def out(tmp_path):
    """An output folder holding a previous pack that no failure may touch."""
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "heartmula.bpk").write_bytes(PREVIOUS)
    return folder


def assert_untouched(folder: Path):
    assert sorted(p.name for p in folder.iterdir()) == ["heartmula.bpk"], "no temporary file may be left"
    assert (folder / "heartmula.bpk").read_bytes() == PREVIOUS


@pytest.mark.parametrize("case", sorted(SHARD_CASES))
def test_broken_shard(tmp_path, out, case):
    make, needles = SHARD_CASES[case]
    src = tmp_path / "src"
    src.mkdir()
    make(src / "model.safetensors")
    proc = run_cli("pack", src, "--any-model", "-o", out / "heartmula.bpk", "--force", "--no-extras")
    assert_clean_failure(proc, "model.safetensors", *needles)
    assert_untouched(out)


def copy_ckpt(ckpt: Path, tmp_path: Path) -> tuple[Path, Path, dict]:
    root = tmp_path / "ckpt"
    shutil.copytree(ckpt, root)
    model = root / "HeartMuLa-oss-3B"
    return root, model, json.loads((model / "model.safetensors.index.json").read_text())


def write_index(model: Path, index: dict):
    (model / "model.safetensors.index.json").write_text(json.dumps(index))


def test_checkpoint_cases(tiny_ckpt, tmp_path, out):
    from safetensors.numpy import load_file

    def attempt(root, *needles):
        assert_clean_failure(run_cli("pack", root, "-o", out / "heartmula.bpk", "--force"), *needles)
        assert_untouched(out)

    # A tensor the index lists is missing from its shard.
    root, model, index = copy_ckpt(tiny_ckpt, tmp_path / "1")
    shard = index["weight_map"]["muq_linear.bias"]
    tensors = load_file(model / shard)
    del tensors["muq_linear.bias"]
    save_file(tensors, model / shard)
    attempt(root, shard, "'muq_linear.bias'", "missing from the shard")

    # The same tensor in two shards (the index names one of them).
    root, model, index = copy_ckpt(tiny_ckpt, tmp_path / "2")
    owner = index["weight_map"]["audio_head"]
    other = next(s for s in sorted(set(index["weight_map"].values())) if s != owner)
    tensors = load_file(model / other)
    tensors["audio_head"] = np.zeros(3, np.float32)
    save_file(tensors, model / other)
    attempt(root, other, "'audio_head'", owner)

    # config.json missing, then invalid.
    root, model, _ = copy_ckpt(tiny_ckpt, tmp_path / "3")
    (model / "config.json").unlink()
    attempt(root, "config.json", "not found")
    (model / "config.json").write_text('{"backbone_flavor": "llama-9000B"}')
    attempt(root, "config.json", "llama-9000B")

    # Index names a shard that does not exist.
    root, model, index = copy_ckpt(tiny_ckpt, tmp_path / "4")
    index["weight_map"]["audio_head"] = "model-00007-of-00004.safetensors"
    write_index(model, index)
    attempt(root, "model-00007-of-00004.safetensors", "'audio_head'")


def test_output_cases(tiny_ckpt, tmp_path, out):
    # Output folder missing.
    proc = run_cli("pack", tiny_ckpt, "-o", tmp_path / "nowhere" / "p.bpk")
    assert_clean_failure(proc, "nowhere", "does not exist")
    # Output is one of the input shards.
    root, model, _ = copy_ckpt(tiny_ckpt, tmp_path / "c")
    shard = min(model.glob("*.safetensors"))
    before = shard.read_bytes()
    proc = run_cli("pack", root, "-o", shard, "--force", "--no-extras")
    assert_clean_failure(proc, shard.name, "input")
    assert shard.read_bytes() == before
    # Output exists without --force.
    assert_clean_failure(run_cli("pack", tiny_ckpt, "-o", out / "heartmula.bpk"), "heartmula.bpk", "--force")
    assert_untouched(out)
    # An existing folder as output: the packs go inside it, under their own names.
    folder = tmp_path / "folder"
    folder.mkdir()
    run_cli("pack", tiny_ckpt, "-o", folder, "--no-extras", check_rc=0)
    assert sorted(p.name for p in folder.iterdir()) == ["heartmula.bpk"]


def _mount_tmpfs(where: Path, options: str) -> bool:
    where.mkdir()
    return (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True, check=False
        ).returncode
        == 0
    )


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("mount"), reason="needs root to mount a small tmpfs")
def test_output_not_writable_and_disk_full_on_small_filesystems(tiny_ckpt, tmp_path):
    small, readonly = tmp_path / "small", tmp_path / "ro"
    if not (_mount_tmpfs(small, "size=256k") and _mount_tmpfs(readonly, "ro,size=64m")):
        pytest.skip("mounting a tmpfs is not permitted here")
    try:
        (small / "heartmula.bpk").write_bytes(PREVIOUS)
        proc = run_cli("pack", tiny_ckpt, "-o", small / "heartmula.bpk", "--force", "--no-extras")
        assert_clean_failure(proc, "heartmula.bpk", "not enough")
        assert_untouched(small)
        proc = run_cli("pack", tiny_ckpt, "-o", readonly / "heartmula.bpk", "--no-extras")
        assert_clean_failure(proc, "heartmula.bpk", "Read-only file system")
        assert list(readonly.iterdir()) == []
    finally:
        subprocess.run(["umount", str(small)], check=False)
        subprocess.run(["umount", str(readonly)], check=False)


def test_file_size_limit_part_way(tiny_ckpt, out):
    """RLIMIT_FSIZE (ulimit -f) below the pack size: a clean error, not death by SIGXFSZ."""

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))

    proc = run_process("pack", tiny_ckpt, "-o", out / "heartmula.bpk", "--force", "--no-extras", preexec_fn=limit)
    assert_clean_failure(proc, "heartmula.bpk", "large")
    assert_untouched(out)


def test_sigkill_part_way_then_the_next_run_cleans_up(tmp_path, out):
    src = big_sparse_checkpoint(tmp_path / "src")
    cmd = [
        sys.executable,
        "-m",
        "heartmula_burn",
        "pack",
        src,
        "--any-model",
        "--dtype",
        "bf16",
        "-o",
        out / "heartmula.bpk",
        "--force",
        "-q",
    ]
    proc = subprocess.Popen(cmd, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not any(p.name.endswith(".heartmula-partial") for p in out.iterdir()):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (out / "heartmula.bpk").read_bytes() == PREVIOUS, "the old pack survives a kill"
    leftovers = [p.name for p in out.iterdir() if p.name != "heartmula.bpk"]
    assert len(leftovers) == 1 and leftovers[0] == f".heartmula.bpk.{proc.pid}.heartmula-partial"
    # The next run removes the dead run's temp file (and this one is interrupted by a file limit).
    small = tmp_path / "small"
    small.mkdir()
    save_file({"w": np.ones(4, np.float32)}, str(small / "model.safetensors"))
    run_cli("pack", small, "--any-model", "-o", out / "heartmula.bpk", "--force", check_rc=0)
    assert sorted(p.name for p in out.iterdir()) == ["heartmula.bpk"]


# ---- bad packs, for inspect / verify / open_pack ----


def pack_bytes(meta: dict[str, object] | bytes, data: bytes = b"", version: int = 1, size=None) -> bytes:
    cbor = meta if isinstance(meta, bytes) else cbor2.dumps(meta)
    head = b"NRUB" + struct.pack("<HI", version, len(cbor) if size is None else size) + cbor
    return head + b"\0" * (-len(head) % 256) + data


def one_tensor(shape, offsets):
    return {"tensors": {"w": {"dtype": "F32", "shape": shape, "data_offsets": offsets}}}


def nested(depth: int) -> bytes:
    # {"tensors": {}, "x": [[[...]]]}: a map of two entries whose second value nests `depth` arrays
    return b"\xa2" + cbor2.dumps("tensors") + b"\xa0" + cbor2.dumps("x") + b"\x81" * depth + b"\x80"


BAD_PACKS = {
    "bad magic": (b"XXXX" + pack_bytes(one_tensor([1], [0, 4]), b"\0" * 4)[4:], "bad magic", None),
    "version above 1": (pack_bytes(one_tensor([1], [0, 4]), b"\0" * 4, version=2), "version 2", None),
    "metadata past the end": (pack_bytes(one_tensor([1], [0, 4]), size=10**6), "truncated", None),
    "metadata over 100 MiB": (pack_bytes(one_tensor([1], [0, 4]), size=101 * 2**20), "exceeds the limit", None),
    "over 100,000 tensors": (
        pack_bytes(
            {"tensors": {f"t{i}": {"dtype": "U8", "shape": [0], "data_offsets": [0, 0]} for i in range(100_001)}}
        ),
        "100001 tensors",
        None,
    ),
    "tensor over 10 GiB": (pack_bytes(one_tensor([3 * 2**30], [0, 12 * 2**30])), "per-tensor limit", "w"),
    "offsets past the end": (pack_bytes(one_tensor([4], [0, 16]), b"\0" * 8), "truncated", None),
    "CBOR nested deeper than 128": (pack_bytes(nested(200)), "CBOR", None),
    "size not shape x dtype": (pack_bytes(one_tensor([3], [0, 8]), b"\0" * 8), "needs", "w"),
}


@pytest.mark.parametrize("case", sorted(BAD_PACKS))
@pytest.mark.parametrize("command", ["inspect", "verify", "open_pack"])
def test_bad_packs(tmp_path, tiny_ckpt, case, command):
    from heartmula_burn import PackFileError, open_pack

    data, needle, tensor = BAD_PACKS[case]
    bad = tmp_path / "bad.bpk"
    bad.write_bytes(data)
    needles = [str(bad), needle] + ([f"'{tensor}'"] if tensor else [])
    if command == "open_pack":
        with pytest.raises(PackFileError) as err:
            open_pack(bad)
        assert all(n in str(err.value) for n in needles), str(err.value)
        return
    args = ["inspect", bad] if command == "inspect" else ["verify", bad, "--against", tiny_ckpt]
    assert_clean_failure(run_cli(*args), *needles)
    assert bad.read_bytes() == data


def test_an_output_folder_is_created_and_removed_again_when_the_run_fails(tiny_root, tmp_path):
    """`-o DIR/` makes DIR and its missing parents; a run that fails part-way removes what it made."""
    run_cli("pack", tiny_root, "-o", f"{tmp_path}/made/deeper/", "-q", check_rc=0)
    made = tmp_path / "made" / "deeper"
    assert sorted(p.name for p in made.iterdir()) == [
        "gen_config.json",
        "heartcodec.bpk",
        "heartmula.bpk",
        "tokenizer.json",
    ]

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))

    proc = run_process("pack", tiny_root, "-o", f"{tmp_path}/failed/deeper/", preexec_fn=limit)
    assert_clean_failure(proc, "heartmula.bpk", "large")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["made"]
