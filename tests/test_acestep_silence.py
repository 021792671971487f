"""`silence_latent.pt` read without running its pickle: what torch.save writes is read back exactly
(torch itself writes the files here), and anything else is refused in one error naming the file,
without a line of the pickle running."""

from __future__ import annotations

import io
import os
import pickle
import struct
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from heartmula_burn._errors import CheckpointError
from heartmula_burn._presets.acestep.silence import read_silence_latent, runtime_layout
from heartmula_burn._presets.acestep.synthetic import torch_save_bytes

torch = pytest.importorskip("torch")


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_what_torch_saves_is_read_back_widened(tmp_path: Path, dtype: str) -> None:
    t = torch.randn(1, 64, 37).to(getattr(torch, dtype))
    torch.save(t, tmp_path / "s.pt")
    assert np.array_equal(read_silence_latent(tmp_path / "s.pt"), t.float().numpy())


def test_a_dict_of_one_tensor_is_that_tensor(tmp_path: Path) -> None:
    t = torch.randn(1, 64, 5)
    torch.save({"latent": t}, tmp_path / "s.pt")
    assert np.array_equal(read_silence_latent(tmp_path / "s.pt"), t.numpy())


def test_the_runtime_layout_is_frames_by_channels() -> None:
    t = torch.randn(1, 64, 9)
    assert np.array_equal(runtime_layout(t.numpy()), t.transpose(1, 2).contiguous().numpy())


def test_the_synthetic_writer_writes_what_torch_reads() -> None:
    values = np.random.default_rng(3).standard_normal((1, 64, 11)).astype(np.float32)
    loaded = torch.load(io.BytesIO(torch_save_bytes(values)), weights_only=True)
    assert loaded.dtype == torch.float32 and np.array_equal(loaded.numpy(), values)


class _Payload:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (self.command,))


def _archive(path: Path, pickled: bytes, storages: dict[str, bytes] | None = None) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", pickled)
        archive.writestr("archive/byteorder", "little")
        for key, data in (storages or {}).items():
            archive.writestr(f"archive/data/{key}", data)
    return path


def refused(path: Path, *needles: str) -> str:
    with pytest.raises(CheckpointError) as caught:
        read_silence_latent(path)
    message = str(caught.value)
    assert str(path) in message and "\n" not in message
    for needle in needles:
        assert needle in message, message
    return message


def test_a_pickle_that_runs_a_command_is_refused_unrun(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    payload = pickle.dumps(_Payload(f"touch {marker}"), protocol=2)
    refused(_archive(tmp_path / "s.pt", payload), "posix.system")
    assert not marker.exists()
    pickle.loads(payload)  # the control: plain pickle runs it
    assert marker.exists()


def test_a_tensor_inside_another_object_is_refused(tmp_path: Path) -> None:
    torch.save([torch.zeros(1, 64, 2), torch.zeros(1, 64, 2)], tmp_path / "s.pt")
    refused(tmp_path / "s.pt", "not one float tensor")
    torch.save({"a": torch.zeros(1, 64, 2), "b": torch.zeros(1, 64, 2)}, tmp_path / "d.pt")
    refused(tmp_path / "d.pt", "not one float tensor")


@pytest.mark.parametrize(
    ("tensor", "needle"),
    [
        (torch.zeros(1, 32, 4), "[1, 32, 4]"),
        (torch.zeros(64, 4), "[64, 4]"),
        (torch.zeros(1, 64, 0), "[1, 64, 0]"),
        (torch.zeros(1, 64, 8)[:, :, ::2], "contiguous"),
        (torch.zeros(1, 64, 4, dtype=torch.int32), "IntStorage"),
    ],
)
def test_other_tensors_are_refused(tmp_path: Path, tensor: Any, needle: str) -> None:
    torch.save(tensor, tmp_path / "s.pt")
    refused(tmp_path / "s.pt", needle)


def test_storage_bytes_that_do_not_fit_are_refused(tmp_path: Path) -> None:
    good = torch_save_bytes(np.zeros((1, 64, 4), np.float32))
    with zipfile.ZipFile(io.BytesIO(good)) as archive:
        pickled = archive.read("archive/data.pkl")
    refused(_archive(tmp_path / "short.pt", pickled, {"0": b"\0" * 100}), "not 256 values")
    refused(_archive(tmp_path / "none.pt", pickled), "no archive/data/0")


def test_not_an_archive_is_refused(tmp_path: Path) -> None:
    torch.save(torch.zeros(1, 64, 2), tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    refused(tmp_path / "legacy.pt", "not a PyTorch archive")
    (tmp_path / "empty.pt").write_bytes(b"")
    refused(tmp_path / "empty.pt", "not a PyTorch archive")


def test_a_fifo_in_its_place_does_not_block(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "s.pt")
    refused(tmp_path / "s.pt", "FIFO")


def test_a_pickle_over_the_cap_is_refused_unread(tmp_path: Path) -> None:
    refused(_archive(tmp_path / "s.pt", b"\x80\x02" + b"N" * (1024**2 + 10) + b"."), "larger than")


# --- hand-made archives: what torch.save never writes, built opcode by opcode ----------------------


def _text(s: str) -> bytes:
    raw = s.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw  # BINUNICODE


def _ints(xs: tuple[int, ...]) -> bytes:
    return b"(" + b"".join(b"\x8a\x08" + struct.pack("<q", x) for x in xs) + b"t"  # MARK, LONG1 each, TUPLE


def tensor_pickle(
    shape: tuple[int, ...],
    stride: tuple[int, ...],
    *,
    offset: int = 0,
    numel: int | None = None,
    storage: str = "FloatStorage",
    key: str = "0",
    tag: str = "storage",
    rebuild: str = "torch._utils\n_rebuild_tensor_v2",
) -> bytes:
    """The pickle torch.save writes for one tensor (protocol 2), with every field chosen."""
    count = numel if numel is not None else int(np.prod(shape))
    pid = b"(" + _text(tag) + b"ctorch\n" + storage.encode() + b"\n" + _text(key) + _text("cpu")
    pid += b"\x8a\x08" + struct.pack("<q", count) + b"tQ"  # TUPLE, BINPERSID
    return (
        b"\x80\x02c" + rebuild.encode() + b"\n("
        + pid + b"\x8a\x08" + struct.pack("<q", offset) + _ints(shape) + _ints(stride)
        + b"\x89ccollections\nOrderedDict\n)Rt" + b"R."
    )  # fmt: skip


def hand_made(path: Path, pickled: bytes, values: int, *, byteorder: bytes = b"little") -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", pickled)
        archive.writestr("archive/byteorder", byteorder)
        archive.writestr("archive/data/0", np.arange(values, dtype="<f4").tobytes())
        archive.writestr("archive/version", "3\n")
    return path


def test_the_hand_made_archive_reads_as_torch_does(tmp_path: Path) -> None:
    """The control of the tests below: the builder's archive is one torch itself loads the same."""
    path = hand_made(tmp_path / "s.pt", tensor_pickle((1, 64, 2), (128, 2, 1), offset=3, numel=131), 131)
    ours = read_silence_latent(path)
    theirs = torch.load(path, weights_only=True)
    assert np.array_equal(ours, theirs.numpy()) and ours[0, 0, 0] == 3.0


def test_a_run_ending_past_its_storage_is_refused(tmp_path: Path) -> None:
    refused(
        hand_made(tmp_path / "s.pt", tensor_pickle((1, 64, 2), (128, 2, 1), offset=4, numel=131), 131), "contiguous"
    )


def test_a_storage_offset_within_the_storage_is_read(tmp_path: Path) -> None:
    base = torch.arange(64 * 4 + 2, dtype=torch.float32)
    view = base[2:].view(1, 64, 4)
    torch.save(view, tmp_path / "s.pt")
    assert np.array_equal(read_silence_latent(tmp_path / "s.pt"), view.numpy())


@pytest.mark.parametrize(
    ("pickled", "needle"),
    [
        (
            tensor_pickle((1, 64, 2), (128, 2, 1), rebuild="torch._utils\n_rebuild_wrapper_subclass"),
            "torch._utils._rebuild_wrapper_subclass",
        ),
        (b"\x80\x02cbuiltins\neval\n" + _text("1") + b"\x85R.", "builtins.eval"),
        (b"\x80\x02ctorch\nload\n" + _text("x") + b"\x85R.", "torch.load"),
        (tensor_pickle((1, 64, 2), (128, 2, 1), tag="module"), "not a tensor storage"),
        (tensor_pickle((1, 64, 2), (128, 2, 1), tag="a"), "not a tensor storage"),
        (tensor_pickle((1, 64, 2), (128, 2, 1), tag="zzz"), "not a tensor storage"),
        (
            tensor_pickle((1, 64, 2), (128, 2, 1)).replace(b"ctorch\nFloatStorage\n", _text("FloatStorage")),
            "not (class, key, location, size)",
        ),
        (tensor_pickle((1, 64, 2), (128, 2, 1), key="x"), "not (class, key, location, size)"),
        (tensor_pickle((1, 64, 2), (128, 2, 1), numel=-1), "not (class, key, location, size)"),
        (tensor_pickle((1, 64, 2), (128, 2, 1), numel=2**48), "not (class, key, location, size)"),
        (tensor_pickle((1, 64, 2**48), (2**54, 2**48, 1), numel=128), "not (storage, offset, size, stride"),
    ],
    ids=[
        "another-rebuild",
        "eval",
        "torch-load",
        "pid-module",
        "pid-a",
        "pid-zzz",
        "class-as-text",
        "key",
        "numel-negative",
        "numel-2^48",
        "size-2^48",
    ],
)
def test_records_a_tensor_never_has_are_refused_by_name(tmp_path: Path, pickled: bytes, needle: str) -> None:
    refused(hand_made(tmp_path / "s.pt", pickled, 128), needle)


def test_the_largest_int_is_just_below_2_to_the_48(tmp_path: Path) -> None:
    path = hand_made(tmp_path / "s.pt", tensor_pickle((1, 64, 2), (128, 2, 1), numel=2**48 - 1), 128)
    refused(path, "not 281,474,976,710,655 values")  # past the record check, refused for its bytes


def test_a_big_endian_archive_is_refused(tmp_path: Path) -> None:
    refused(hand_made(tmp_path / "s.pt", tensor_pickle((1, 64, 2), (128, 2, 1)), 128, byteorder=b"big"), "big-endian")


def test_a_byteorder_record_past_its_cap_is_refused_unread(tmp_path: Path) -> None:
    path = hand_made(tmp_path / "s.pt", tensor_pickle((1, 64, 2), (128, 2, 1)), 128, byteorder=b"little" + b" " * 11)
    refused(path, "archive/byteorder is larger than 16 bytes")


def test_two_pickles_are_refused(tmp_path: Path) -> None:
    path = hand_made(tmp_path / "s.pt", tensor_pickle((1, 64, 2), (128, 2, 1)), 128)
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr("other/data.pkl", tensor_pickle((1, 64, 2), (128, 2, 1)))
    refused(path, "no single <name>/data.pkl")


def test_an_empty_dict_and_a_two_dimensional_tensor_are_refused(tmp_path: Path) -> None:
    torch.save({}, tmp_path / "empty.pt")
    refused(tmp_path / "empty.pt", "holds dict")
    torch.save(torch.zeros(1, 64), tmp_path / "flat.pt")
    refused(tmp_path / "flat.pt", "[1, 64]")


def test_the_size_caps_at_their_edges(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from heartmula_burn._presets.acestep import silence

    path = tmp_path / "s.pt"
    torch.save(torch.zeros(1, 64, 2), path)
    size = path.stat().st_size
    monkeypatch.setattr(silence, "MAX_ARCHIVE_BYTES", size)
    assert read_silence_latent(path).shape == (1, 64, 2)  # exactly at the cap: read
    monkeypatch.setattr(silence, "MAX_ARCHIVE_BYTES", size - 1)
    refused(path, "larger than 0 MiB")
    monkeypatch.undo()
    with zipfile.ZipFile(path) as archive:
        pickled = next(archive.read(n) for n in archive.namelist() if n.endswith("data.pkl"))
    monkeypatch.setattr(silence, "MAX_PICKLE_BYTES", len(pickled))
    assert read_silence_latent(path).shape == (1, 64, 2)
    monkeypatch.setattr(silence, "MAX_PICKLE_BYTES", len(pickled) - 1)
    refused(path, f"larger than {len(pickled) - 1:,} bytes")
