"""Reading Burn packs: metadata, per-tensor dtype/shape/offsets, and zero-copy numpy views."""

from __future__ import annotations

import mmap
from pathlib import Path

import ml_dtypes
import numpy as np

from . import _core
from ._core import PackTensor as PackedTensor

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
    return NUMPY_DTYPES[name].itemsize


class Pack:
    """An open Burn pack. Tensors are listed in file order; `pack[name]` is a read-only numpy view
    straight over the mapped file (no copy)."""

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
        with open(self.path, "rb") as f:
            self._mmap = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)

    def __len__(self) -> int:
        return len(self.tensors)

    def __iter__(self):
        return iter(self.tensors)

    def __contains__(self, name: str) -> bool:
        return name in self._by_name

    def info(self, name: str) -> PackedTensor:
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"{self.path}: no tensor '{name}'") from None

    def __getitem__(self, name: str) -> np.ndarray:
        return self.numpy(name)

    def numpy(self, name: str) -> np.ndarray:
        t = self.info(name)
        array = np.ndarray(t.shape, dtype=NUMPY_DTYPES[t.dtype], buffer=self._mmap, offset=t.file_offset)
        return array  # read-only: the map is ACCESS_READ

    def raw_bytes(self, name: str) -> memoryview:
        t = self.info(name)
        return memoryview(self._mmap)[t.file_offset : t.file_offset + t.nbytes]

    def close(self) -> None:
        try:
            self._mmap.close()
        except BufferError:
            pass  # views still alive keep the map; it closes when they go

    def __enter__(self) -> Pack:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_pack(path: str | Path) -> Pack:
    return Pack(path)
