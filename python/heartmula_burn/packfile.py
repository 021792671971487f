"""Reading Burn packs: metadata, per-tensor dtype/shape/offsets, and zero-copy numpy views."""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import ml_dtypes
import numpy as np

from . import _core
from ._core import PackTensor as PackedTensor
from .errors import HeartmulaBurnError, PackFileError

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["NUMPY_DTYPES", "MappedFile", "Pack", "PackedTensor", "canonical_dtype", "dtype_size", "open_pack"]

# Burn dtype name -> numpy dtype (little-endian, as Burn stores elements).
NUMPY_DTYPES = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U64": np.dtype("<u8"),
    "U32": np.dtype("<u4"),
    "U16": np.dtype("<u2"),
    "U8": np.dtype("u1"),
    "Bool": np.dtype("?"),
}


def dtype_size(name: str) -> int:
    return int(NUMPY_DTYPES[name].itemsize)


def canonical_dtype(text: str) -> str | None:
    """Burn's name for a dtype spelled either way ("bf16", "BOOL", "Bool"), or None."""
    return next((name for name in NUMPY_DTYPES if name.upper() == text.upper()), None)


class _GuardedMap(mmap.mmap):
    """An mmap that carries its SIGBUS guard (`guard`), so that the guard lives exactly as long as
    the map does, however long numpy views over it outlive the object that made them."""

    guard: _core.MapGuard


class MappedFile:
    """A file mapped read-only for zero-copy reads, guarded against the file shrinking underneath
    (a download still running, a file replaced in place): reads past its new end give zeros instead
    of killing the process with SIGBUS, and `check` then raises `error`, naming the file and the
    tensor whose bytes were lost."""

    def __init__(self, path: Path, error: type[HeartmulaBurnError], tensor_at: Callable[[int], str | None]) -> None:
        self.path = path
        self._error = error
        self._tensor_at = tensor_at
        with open(path, "rb") as f:
            self.size = os.fstat(f.fileno()).st_size
            self._map = _GuardedMap(f.fileno(), 0, access=mmap.ACCESS_READ) if self.size else None
        if self._map is not None:
            address = np.frombuffer(self._map, np.uint8).ctypes.data
            self._map.guard = _core.MapGuard(address, self.size)

    def array(
        self, offset: int, nbytes: int, dtype: np.dtype[Any], shape: tuple[int, ...], tensor: str
    ) -> np.ndarray[Any, Any]:
        """A read-only view of `nbytes` at `offset`, after checking the file still holds them."""
        self.check()
        if self._map is None or offset + nbytes > self._map.size():
            current = self._map.size() if self._map is not None else 0
            raise self._error.at(
                self.path,
                f"the file is {current} bytes now, too short for this tensor "
                "(it shrank after it was opened: was it still being written or replaced?)",
                tensor=tensor,
            )
        view: np.ndarray[Any, Any] = np.ndarray(shape, dtype=dtype, buffer=self._map, offset=offset)
        return view  # read-only: the map is ACCESS_READ

    def raw(self, offset: int, nbytes: int) -> memoryview:
        self.check()
        return memoryview(self._map if self._map is not None else b"")[offset : offset + nbytes]

    def check(self) -> None:
        """Raises if a read of the map faulted because the file shrank (those bytes read as zeros)."""
        fault = self._map.guard.fault() if self._map is not None else None
        if fault is not None:
            raise self._error.at(
                self.path,
                f"the file shrank while being read (byte {fault} is past its end now): was it still being "
                "written or replaced?",
                tensor=self._tensor_at(fault),
            )

    def close(self) -> None:
        if self._map is None or self._map.closed:
            return
        try:
            self._map.close()
        except BufferError:
            return  # views still alive keep the map (and its guard); both go with the last view
        # Unmapped: the range may soon hold another mapping, which this guard must not claim.
        self._map.guard.close()


class Pack:
    """An open Burn pack. Tensors are listed in file order; `pack[name]` is a read-only numpy view
    straight over the mapped file (no copy). Leaving a `with open_pack(...)` block raises
    `PackFileError` if the file shrank while it was read."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        index = _core.read_pack_index(self.path)
        self.file_size = index.file_size
        self.metadata_size = index.metadata_size
        self.data_start = index.data_start
        self.layout = index.layout
        self.metadata = index.metadata
        self.tensors = index.tensors
        self._by_name = {t.name: t for t in self.tensors}
        self._file = MappedFile(self.path, PackFileError, self._tensor_at)

    def _tensor_at(self, offset: int) -> str | None:
        return next((t.name for t in self.tensors if t.file_offset <= offset < t.file_offset + max(t.nbytes, 1)), None)

    def __len__(self) -> int:
        return len(self.tensors)

    def __iter__(self) -> Iterator[PackedTensor]:
        return iter(self.tensors)

    def __contains__(self, name: str) -> bool:
        return name in self._by_name

    def info(self, name: str) -> PackedTensor:
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"{self.path}: no tensor '{name}'") from None

    def __getitem__(self, name: str) -> np.ndarray[Any, Any]:
        return self.numpy(name)

    def numpy(self, name: str) -> np.ndarray[Any, Any]:
        t = self.info(name)
        return self._file.array(t.file_offset, t.nbytes, NUMPY_DTYPES[t.dtype], t.shape, t.name)

    def raw_bytes(self, name: str) -> memoryview:
        t = self.info(name)
        return self._file.raw(t.file_offset, t.nbytes)

    def check(self) -> None:
        """Raises `PackFileError` if the file shrank under reads made so far."""
        self._file.check()

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, *rest: object) -> None:
        try:
            if kind is None:
                self.check()
        finally:
            self.close()


def open_pack(path: str | Path) -> Pack:
    return Pack(path)
