"""`silence_latent.pt` read without running a line of its pickle.

The file is what `torch.save` writes: a zip archive holding `data.pkl` (a pickle describing the
tensor) and the raw storage bytes (`data/0`). A pickle can name any function to call, so the
pickle is read by a `pickle.Unpickler` whose `find_class` hands out only inert stand-ins for the
three names a saved tensor uses (`torch._utils._rebuild_tensor_v2`, a float storage class,
`collections.OrderedDict`); any other name, or anything but one float tensor, is refused. The
storage bytes are then read from the archive as plain data, within fixed bounds."""

from __future__ import annotations

import io
import math
import os
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

from ..._errors import CheckpointError
from ..._fields import open_regular

TENSOR = "silence_latent"
MAX_ARCHIVE_BYTES = 256 * 1024**2  # the real file is 3.8 MB
MAX_PICKLE_BYTES = 1024**2
# torch's storage classes for float tensors -> the little-endian dtype of their bytes.
_STORAGES = {
    "FloatStorage": np.dtype("<f4"),
    "HalfStorage": np.dtype("<f2"),
    "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
}


@dataclass(frozen=True)
class _Storage:
    dtype: np.dtype[Any]
    key: str
    numel: int


@dataclass(frozen=True)
class _Tensor:
    storage: _Storage
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor(storage: object, offset: object, size: object, stride: object, *_rest: object) -> _Tensor:
    """Stands in for torch._utils._rebuild_tensor_v2: records the arguments, builds nothing."""
    if not isinstance(storage, _Storage) or not _ints(offset) or not _int_tuple(size) or not _int_tuple(stride):
        raise ValueError("a tensor record that is not (storage, offset, size, stride, ...)")
    assert isinstance(offset, int) and isinstance(size, tuple) and isinstance(stride, tuple)
    return _Tensor(storage, offset, size, stride)


def _empty_dict(*args: object) -> dict[str, object]:
    """Stands in for collections.OrderedDict (a tensor's empty backward hooks)."""
    if args:
        raise ValueError("an OrderedDict with contents")
    return {}


def _ints(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**48


def _int_tuple(value: object) -> bool:
    return isinstance(value, tuple) and len(value) <= 8 and all(_ints(v) for v in value)


class _Unpickler(pickle.Unpickler):
    """Resolves only the names a saved float tensor uses, to the stand-ins above."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if (module, name) == ("collections", "OrderedDict"):
            return _empty_dict
        if module == "torch" and name in _STORAGES:
            return _STORAGES[name]
        raise pickle.UnpicklingError(f"refers to {module}.{name}, which a saved float tensor never does")

    def persistent_load(self, pid: Any) -> _Storage:
        # ('storage', storage class, key of its bytes in the archive, location, number of elements)
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError("refers to an object that is not a tensor storage")
        _, dtype, key, _location, numel = pid
        if not isinstance(dtype, np.dtype) or not isinstance(key, str) or not key.isdigit() or not _ints(numel):
            raise pickle.UnpicklingError("has a storage record that is not (class, key, location, size)")
        return _Storage(dtype, key, numel)


def read_silence_latent(path: Path, channels: int = 64) -> np.ndarray[Any, Any]:
    """The one float tensor of a `silence_latent.pt`, as F32 [1, channels, S] (widened exactly where
    it is stored narrower; `channels`: the DiT's latent width). A CheckpointError naming the file
    for anything else: another archive, a pickle naming any other function, several tensors,
    another shape, bytes that do not fit."""
    try:
        fd = open_regular(path, CheckpointError, "silence_latent.pt")
    except FileNotFoundError:
        raise CheckpointError.at(path, "not found", tensor=TENSOR) from None
    except OSError as e:
        raise CheckpointError.at(path, f"cannot read: {e.strerror or e}", tensor=TENSOR) from None
    with os.fdopen(fd, "rb") as f:
        data = f.read(MAX_ARCHIVE_BYTES + 1)
    if len(data) > MAX_ARCHIVE_BYTES:
        raise CheckpointError.at(path, f"larger than {MAX_ARCHIVE_BYTES // 1024**2} MiB: refused", tensor=TENSOR)
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            return _read(archive, path, channels)
    except zipfile.BadZipFile as e:
        raise CheckpointError.at(path, f"not a PyTorch archive (torch.save's zip format): {e}", tensor=TENSOR) from None


def _member(archive: zipfile.ZipFile, name: str, limit: int, path: Path) -> bytes:
    try:
        info = archive.getinfo(name)
    except KeyError:
        raise CheckpointError.at(path, f"the archive has no {name}", tensor=TENSOR) from None
    with archive.open(info) as f:  # read with a cap: the sizes in a zip's directory are only claims
        raw = f.read(limit + 1)
    if len(raw) > limit:
        raise CheckpointError.at(path, f"{name} is larger than {limit:,} bytes: refused", tensor=TENSOR)
    return raw


def _read(archive: zipfile.ZipFile, path: Path, channels: int) -> np.ndarray[Any, Any]:
    pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(pickles) != 1:
        raise CheckpointError.at(path, "not a PyTorch archive: no single <name>/data.pkl", tensor=TENSOR)
    prefix = pickles[0][: -len("data.pkl")]
    byteorder = prefix + "byteorder"
    if byteorder in archive.namelist() and _member(archive, byteorder, 16, path) != b"little":
        raise CheckpointError.at(path, "stores big-endian tensors, which this reader does not take", tensor=TENSOR)
    try:
        found = _Unpickler(io.BytesIO(_member(archive, pickles[0], MAX_PICKLE_BYTES, path))).load()
    except Exception as e:  # noqa: BLE001 (whatever a hostile pickle does wrong is refused, never run)
        raise CheckpointError.at(path, f"refused: its pickle {e}", tensor=TENSOR) from None
    if isinstance(found, dict) and len(found) == 1:
        (found,) = found.values()  # {"silence_latent": tensor} holds the same one tensor
    if not isinstance(found, _Tensor):
        raise CheckpointError.at(path, f"holds {type(found).__name__}, not one float tensor", tensor=TENSOR)
    return _values(archive, prefix, found, path, channels)


def _values(archive: zipfile.ZipFile, prefix: str, t: _Tensor, path: Path, channels: int) -> np.ndarray[Any, Any]:
    if len(t.size) != 3 or t.size[0] != 1 or t.size[1] != channels or t.size[2] == 0:
        raise CheckpointError.at(
            path, f"holds a tensor of shape {list(t.size)}, not [1, {channels}, frames]", tensor=TENSOR
        )
    contiguous = (t.size[1] * t.size[2], t.size[2], 1)
    n = math.prod(t.size)
    if t.stride != contiguous or t.offset + n > t.storage.numel:
        raise CheckpointError.at(path, "holds a tensor that is not a contiguous run of its storage", tensor=TENSOR)
    itemsize = t.storage.dtype.itemsize
    raw = _member(archive, f"{prefix}data/{t.storage.key}", MAX_ARCHIVE_BYTES, path)
    if len(raw) != t.storage.numel * itemsize:
        raise CheckpointError.at(
            path, f"storage {t.storage.key} holds {len(raw):,} bytes, not {t.storage.numel:,} values", tensor=TENSOR
        )
    values = np.frombuffer(raw, t.storage.dtype, count=n, offset=t.offset * itemsize)
    return values.astype(np.float32).reshape(t.size)


def runtime_layout(latent: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """[1, 64, S] as upstream saves it -> [1, S, 64], the runtime's `silence_latent`."""
    return np.ascontiguousarray(latent.transpose(0, 2, 1))
