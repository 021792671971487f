"""Reading Burn packs: metadata, per-tensor dtype/shape/offsets, zero-copy numpy views, and the
`safetensors.safe_open` protocol (`keys`, `get_tensor`, `get_slice`, `metadata()`) for code that
already reads safetensors files."""

from __future__ import annotations

import functools
import math
import mmap
import os
import weakref
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from . import _core
from ._core import PackTensor

# The name this package exported first; the class prints as what it is, PackTensor.
PackedTensor = PackTensor
from ._errors import HeartmulaBurnError, PackFileError
from ._fields import open_regular

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = [
    "FRAMEWORKS",
    "MappedFile",
    "Pack",
    "PackMetadata",
    "PackSlice",
    "PackTensor",
    "PackedTensor",
    "canonical_dtype",
    "dtype_info",
    "numpy_dtypes",
    "open_pack",
    "safe_open",
]
# What `get_tensor` and `get_slice` return: numpy arrays, or torch tensors ("pt", as safetensors names it).
FRAMEWORKS = ("numpy", "np", "pt", "torch")

# Burn dtype name -> numpy dtype (little-endian, as Burn stores elements), for the plain dtypes.
# Quantized tensors read back as float32, as Burn dequantizes them. BF16 is ml_dtypes' bfloat16,
# imported when first needed: ml_dtypes takes half a second to import, which every command
# (`pack --help` included) would pay otherwise.
_PLAIN_NUMPY_DTYPES = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
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


@functools.cache
def numpy_dtypes() -> dict[str, np.dtype[Any]]:
    """Burn dtype name -> numpy dtype, BF16 included (see `_PLAIN_NUMPY_DTYPES`)."""
    import ml_dtypes

    return {**_PLAIN_NUMPY_DTYPES, "BF16": np.dtype(ml_dtypes.bfloat16)}


def dtype_info(name: str) -> _core.DTypeInfo:
    """The core's dtype table row for `name` (any case); ValueError for a name it does not know."""
    return _core.dtype_info(name)


def canonical_dtype(text: str) -> str | None:
    """Our name for a dtype spelled any way ("bf16", "BOOL", "q8s_b32"), or None."""
    try:
        return dtype_info(text).name
    except ValueError:
        return None


def tensor_nbytes(dtype: str, shape: tuple[int, ...] | list[int]) -> int:
    """Bytes a tensor of `dtype` and `shape` takes in a pack (values and, if quantized, scales)."""
    return dtype_info(dtype).byte_len(list(shape))


def quantized_parts(raw: memoryview | bytes, info: _core.DTypeInfo, shape: tuple[int, ...]) -> tuple[Any, Any]:
    """A quantized tensor's stored values (int8, in `shape`) and block scales (float32, one row of
    scales per row of blocks), as views of `raw`."""
    count = math.prod(shape)
    block = info.block or 1
    values = np.frombuffer(raw, np.int8, count).reshape(shape)
    scales = np.frombuffer(raw, "<f4", count // block, offset=count).reshape((*shape[:-1], shape[-1] // block))
    return values, scales


def quantize(x: np.ndarray[Any, Any], block: int) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """Burn 0.22.1's Q8S `quantize_dynamic` (symmetric, per block along the last dimension)
    written out in numpy, apart from the core's: per block `scale = max(|min|, |max|) * 2 / 254`,
    NaN if the block holds a NaN; a zero, NaN or infinite scale becomes the smallest normal float;
    then `round(x * (1 / scale))`, ties away from zero, clamped to -127..=127, NaN to 0. Returns
    the int8 values (in `x`'s shape) and the float32 scales (one per block, in block order)."""
    blocks = np.asarray(x, np.float32).reshape(-1, block)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        alpha = np.abs(blocks).max(axis=1, initial=np.float32(0))  # a NaN propagates
        scales = alpha * np.float32(2) / np.float32(254)
        scales = np.where((scales > 0) & np.isfinite(scales), scales, np.finfo(np.float32).tiny).astype(np.float32)
        scaled = blocks * (np.float32(1) / scales)[:, None]
        # Round half away from zero in float64, where |y| + 0.5 is exact for every float32 y.
        wide = scaled.astype(np.float64)
        rounded = np.copysign(np.floor(np.abs(wide) + 0.5), wide)
        values = np.nan_to_num(np.clip(rounded, -127, 127), nan=0.0).astype(np.int8)
    return values.reshape(np.shape(x)), scales


def dequantize(values: Any, scales: Any, block: int) -> np.ndarray[Any, Any]:
    """Burn's dequantization, `scale * q` in float32, block by block along the last dimension."""
    shape = values.shape
    blocks = values.reshape(-1, block).astype(np.float32)
    return np.asarray((scales.reshape(-1, 1) * blocks).reshape(shape), dtype=np.float32)


class MappedFile:
    """A file mapped read-only for zero-copy reads, guarded against the file shrinking underneath
    (a download still running, a file replaced in place): reads past its new end give zeros instead
    of killing the process with SIGBUS, and `check` then raises `error`, naming the file and the
    tensor whose bytes were lost.

    Every view (`array`, `raw`) holds a buffer export of the map, so `close` cannot unmap under a
    live view: the mapping stays until the last view is gone, and the SIGBUS guard is unregistered
    only once the mapping is (never while a view can still read it, never left over an address
    another mapping may take)."""

    def __init__(
        self,
        path: Path,
        error: type[HeartmulaBurnError],
        tensor_at: Callable[[int], str | None],
        *,
        fd: int | None = None,
    ) -> None:
        """Maps `fd` when given (the caller keeps it open and closes it), else opens `path`."""
        self.path = path
        self._error = error
        self._tensor_at = tensor_at
        self._map: mmap.mmap | None = None
        self._guard: _core.MapGuard | None = None
        self._closed = False
        if fd is not None:
            self._map_fd(fd)
            return
        fd = open_regular(path, error, "file")
        try:
            self._map_fd(fd)
        finally:
            os.close(fd)

    def _map_fd(self, fd: int) -> None:
        self.stat = os.fstat(fd)
        self.size = self.stat.st_size
        if not self.size:
            return
        # A plain mmap, no subclass and no attributes: its deallocator unmaps the range before it
        # clears the weak references to it, so the finalizer below unguards only unmapped memory.
        self._map = mmap.mmap(fd, self.size, access=mmap.ACCESS_READ)
        with memoryview(self._map) as whole:
            address = np.frombuffer(whole, np.uint8).ctypes.data
        self._guard = _core.MapGuard(address, self.size)
        self._unguard = weakref.finalize(self._map, self._guard.close)
        # At exit, views may still be reading: leave the mapping guarded until the process ends.
        self._unguard.atexit = False

    def array(
        self, offset: int, nbytes: int, dtype: np.dtype[Any], shape: tuple[int, ...], tensor: str
    ) -> np.ndarray[Any, Any]:
        """A read-only view of `nbytes` at `offset`, after checking the file still holds them."""
        view: np.ndarray[Any, Any] = np.frombuffer(self.raw(offset, nbytes, tensor=tensor), dtype=dtype)
        return view.reshape(shape)  # read-only: the map is ACCESS_READ

    def raw(self, offset: int, nbytes: int, *, tensor: str | None = None) -> memoryview:
        """`nbytes` at `offset`, zero-copy: the view (and any slice or array made from it) holds
        the map, which stays mapped while it lives, whatever `close` is called meanwhile."""
        mapped = self._map
        if self._closed:
            raise ValueError(f"{self.path}: read after close()")
        self.check()
        current = mapped.size() if mapped is not None else 0
        if offset + nbytes > current:
            raise self._error.at(
                self.path,
                f"the file is {current} bytes now, too short for this tensor "
                "(it shrank after it was opened: was it still being written or replaced?)",
                tensor=tensor,
            )
        if mapped is None:
            return memoryview(b"")
        try:
            whole = memoryview(mapped)
        except ValueError:  # closed by another thread since
            raise ValueError(f"{self.path}: read after close()") from None
        with whole:
            return whole[offset : offset + nbytes]  # a slice outlives the view it was cut from

    def check(self) -> None:
        """Raises if a read of the map faulted because the file shrank (those bytes read as zeros)."""
        fault = self._guard.fault() if self._guard is not None else None
        if fault is not None:
            raise self._error.at(
                self.path,
                f"the file shrank while being read (byte {fault} is past its end now): was it still being "
                "written or replaced?",
                tensor=self._tensor_at(fault),
            )

    def close(self) -> None:
        """No reads from here on. Unmaps the file now when no view of it is alive; otherwise the
        last view to go unmaps it (and only then is the guard unregistered)."""
        self._closed = True
        mapped, self._map = self._map, None
        if mapped is None:
            return
        try:
            mapped.close()
        except BufferError:
            return  # views still alive hold the map: it unmaps, then unguards, when the last goes
        self._unguard()  # unmapped: the range may soon hold another mapping, which it must not claim


class PackMetadata(dict[str, str]):
    """The pack's metadata map. Also callable, `pack.metadata()`, as safetensors' `safe_open` has it."""

    def __call__(self) -> dict[str, str]:
        return dict(self)


class PackSlice:
    """A tensor read lazily, a part at a time: `pack.get_slice(name)[0:2]` copies only those rows
    (as safetensors' `get_slice`)."""

    def __init__(self, pack: Pack, name: str) -> None:
        self._pack = pack
        self._info = pack.info(name)

    def get_shape(self) -> list[int]:
        return list(self._info.shape)

    def get_dtype(self) -> str:
        return self._info.dtype if self._info.dtype in numpy_dtypes() else "F32"  # as it reads back

    def __getitem__(self, index: Any) -> Any:
        return self._pack._owned(np.array(self._pack.numpy(self._info.name)[index]))


class Pack(Mapping[str, "np.ndarray[Any, Any]"]):
    """An open Burn pack, a read-only mapping from tensor names (in file order) to numpy views
    straight over the mapped file (no copy): `pack[name]`, `pack.keys()`, `pack.items()`,
    `dict(pack)`. `pack.tensors` lists each tensor's dtype, shape and offsets. The safetensors
    `safe_open` protocol works too: `get_tensor(name)` (an owned copy, valid after close, in the
    pack's `framework`: numpy, or torch with "pt"), `get_slice(name)`, `metadata()`. Leaving a
    `with open_pack(...)` block raises `PackFileError` if the file shrank while it was read."""

    def __init__(self, path: str | Path, framework: str = "numpy", device: str = "cpu") -> None:
        if framework not in FRAMEWORKS:
            raise ValueError(f"framework {framework!r}: choose from {', '.join(FRAMEWORKS)}")
        if framework in ("numpy", "np") and device != "cpu":
            raise ValueError(f"numpy arrays live on the CPU, not on {device!r} (framework='pt' moves tensors)")
        self.framework = "pt" if framework in ("pt", "torch") else "numpy"
        self.device = device
        self.path = Path(path)
        try:
            fd = open_regular(self.path, PackFileError, "pack")
        except OSError as e:
            raise OSError(e.errno, f"cannot open pack: {e.strerror}", e.filename) from None
        try:
            self._file = MappedFile(self.path, PackFileError, self._tensor_at, fd=fd)
        finally:
            os.close(fd)
        try:
            index = _core.read_pack_index(self.path)
            # The index is read through the path, the map was made from `fd`: both must be this one
            # file, not a pack renamed over the path (or rewritten in place) in between.
            mapped = self._file.stat
            if _identity(os.stat(self.path)) != _identity(mapped) or index.file_size != mapped.st_size:
                raise PackFileError.at(
                    self.path, "the file changed while being opened (replaced or rewritten): open it again"
                )
        except BaseException:
            self._file.close()
            raise
        self.file_size = index.file_size
        self.metadata_size = index.metadata_size
        self.data_start = index.data_start
        self.layout = index.layout
        self.metadata = PackMetadata(index.metadata)
        self.tensors = index.tensors
        self._by_name = {t.name: t for t in self.tensors}

    def _tensor_at(self, offset: int) -> str | None:
        return next((t.name for t in self.tensors if t.file_offset <= offset < t.file_offset + max(t.nbytes, 1)), None)

    def __len__(self) -> int:
        return len(self.tensors)

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_name)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    # A mapping of live views compares by identity (element-wise equality has no single truth value).
    __eq__ = object.__eq__
    __hash__ = object.__hash__

    def get_tensor(self, name: str) -> Any:
        """The tensor as an owned array (a copy: valid after the pack is closed), numpy or torch."""
        return self._owned(np.array(self.numpy(name)))

    def get_slice(self, name: str) -> PackSlice:
        return PackSlice(self, name)

    def _owned(self, array: np.ndarray[Any, Any]) -> Any:
        if self.framework == "numpy":
            return array
        import torch

        if array.dtype == numpy_dtypes()["BF16"]:  # torch reads no ml_dtypes array: hand it the bits
            return torch.from_numpy(array.view(np.int16)).view(torch.bfloat16).to(self.device)
        return torch.from_numpy(array).to(self.device)

    def info(self, name: str) -> PackedTensor:
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"{self.path}: no tensor '{name}'") from None

    def __getitem__(self, name: str) -> np.ndarray[Any, Any]:
        return self.numpy(name)

    def numpy(self, name: str) -> np.ndarray[Any, Any]:
        """A view of the tensor over the mapped file; a quantized tensor is dequantized to a new
        float32 array, as Burn reads it (`quantized` gives its stored values and scales)."""
        t = self.info(name)
        if t.dtype in numpy_dtypes():
            return self._file.array(t.file_offset, t.nbytes, numpy_dtypes()[t.dtype], t.shape, t.name)
        values, scales = self.quantized(name)
        dequantized = dequantize(values, scales, dtype_info(t.dtype).block or 1)
        self._file.check()
        return dequantized

    def quantized(self, name: str) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
        """A quantized tensor's stored int8 values (in its shape) and float32 block scales (its
        shape with the last dimension divided by the block), as views over the mapped file."""
        t = self.info(name)
        info = dtype_info(t.dtype)
        if not info.is_quantized:
            raise ValueError(f"{self.path}: tensor '{name}' is {t.dtype}, not quantized")
        return quantized_parts(self._file.raw(t.file_offset, t.nbytes, tensor=name), info, t.shape)

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


def _identity(st: os.stat_result) -> tuple[int, int, int, int]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def open_pack(path: str | Path) -> Pack:
    """Opens a Burn pack for reading (see `Pack`): `with open_pack("heartmula.bpk") as pack: ...`.
    Raises `PackFileError` for a file that is not a pack Burn would read."""
    return Pack(path)


def safe_open(path: str | Path, framework: str = "numpy", device: str = "cpu") -> Pack:
    """A pack opened as `safetensors.safe_open` opens a safetensors file: `keys()`,
    `get_tensor(name)`, `get_slice(name)`, `metadata()`; `framework` "numpy" (default) or "pt"
    (torch tensors, moved to `device`)."""
    return Pack(path, framework, device)
