"""`silence_latent.pt` read without running its pickle: what torch.save writes is read back exactly
(torch itself writes the files here), and anything else is refused in one error naming the file,
without a line of the pickle running."""

from __future__ import annotations

import io
import os
import pickle
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
