"""The weights `sanity` runs a model on: a checkpoint or a pack as read-only numpy views over the
mapped files (a file that shrinks while read fails naming the file and tensor), loaded into torch
tensor by tensor, in their stored dtype or cast as the packer casts. Quantized tensors stay
quantized in memory and are dequantized each time the forward reads them, so that a q8 model is
never held in float32 whole."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ._checkpoint import load_checkpoint
from ._errors import CheckpointError, HeartmulaBurnError, SourceError
from ._packfile import MappedFile, dtype_info, numpy_dtypes, open_pack, quantize
from ._presets import config_of_pack

if TYPE_CHECKING:
    import torch

INSTALL_HINT = "pip install 'heartmula-burn[sanity]' (or: pip install torch)"


class CheckpointArrays:
    """A safetensors checkpoint as read-only numpy views over its mapped shards."""

    def __init__(self, root: str | Path, subdir: str | None = None, model: str | None = None):
        self.checkpoint = load_checkpoint(root, subdir, model=model)
        self.path = self.checkpoint.model_dir
        self.config = self.checkpoint.config
        self._tensors = {t.name: t for t in self.checkpoint.tensors}
        self._files = {shard: MappedFile(shard, SourceError, self._locator(shard)) for shard in self.checkpoint.shards}

    def _locator(self, shard: Path) -> Callable[[int], str | None]:
        return lambda offset: self._tensor_at(shard, offset)

    def _tensor_at(self, shard: Path, offset: int) -> str | None:
        return next(
            (
                t.name
                for t in self._tensors.values()
                if t.file == shard and t.file_offset <= offset < t.file_offset + t.byte_len
            ),
            None,
        )

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {n: t.shape for n, t in self._tensors.items()}

    def dtype(self, name: str) -> str:
        t = self._tensors[name]
        if t.dtype not in numpy_dtypes():
            raise CheckpointError.at(t.file, f"dtype {t.source_dtype} is not supported here", tensor=name)
        return t.dtype

    def numpy(self, name: str) -> np.ndarray[Any, Any]:
        t = self._tensors[name]
        return self._files[t.file].array(t.file_offset, t.byte_len, numpy_dtypes()[self.dtype(name)], t.shape, name)

    def check(self) -> None:
        for f in self._files.values():
            f.check()

    def close(self) -> None:
        for f in self._files.values():
            f.close()


class PackArrays:
    def __init__(self, path: str | Path):
        self.pack = open_pack(path)
        self.path = self.pack.path
        self.config = config_of_pack(self.pack.metadata, self.path)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {t.name: t.shape for t in self.pack.tensors}

    def dtype(self, name: str) -> str:
        return self.pack.info(name).dtype

    def numpy(self, name: str) -> np.ndarray[Any, Any]:
        return self.pack.numpy(name)

    def quantized(self, name: str) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
        return self.pack.quantized(name)

    def check(self) -> None:
        self.pack.check()

    def close(self) -> None:
        self.pack.close()


def open_weights(
    path: str | Path, subdir: str | None = None, model: str | None = None
) -> CheckpointArrays | PackArrays:
    path = Path(path)
    if path.is_file() and path.suffix != ".safetensors":
        return PackArrays(path)
    return CheckpointArrays(path, subdir, model)


def import_torch() -> Any:
    try:
        import torch
    except ImportError:
        raise HeartmulaBurnError(f"the sanity check needs PyTorch, which is not installed: {INSTALL_HINT}") from None
    return torch


def _as_torch(array: np.ndarray[Any, Any]) -> torch.Tensor:
    torch = import_torch()
    with warnings.catch_warnings():
        # The views are read-only (the file is mapped read-only); nothing here writes to them.
        warnings.simplefilter("ignore", UserWarning)
        if array.dtype == numpy_dtypes()["BF16"]:
            return torch.from_numpy(array.view(np.uint16)).view(torch.bfloat16)  # type: ignore[no-any-return]
        return torch.from_numpy(array)  # type: ignore[no-any-return]


class Weights(Mapping[str, "torch.Tensor"]):
    """name -> tensor on the device. A quantized tensor is held as stored (int8 values and float32
    block scales, about a quarter of its float32 size) and dequantized on each read, as Burn reads
    it (`scale * q` in float32, which is what `_packfile.dequantize` computes)."""

    def __init__(self) -> None:
        self._tensors: dict[str, torch.Tensor | tuple[torch.Tensor, torch.Tensor, int]] = {}

    def add(self, name: str, tensor: torch.Tensor) -> None:
        self._tensors[name] = tensor

    def add_quantized(self, name: str, values: torch.Tensor, scales: torch.Tensor, block: int) -> None:
        self._tensors[name] = (values, scales, block)

    def __getitem__(self, name: str) -> torch.Tensor:
        held = self._tensors[name]
        if not isinstance(held, tuple):
            return held
        values, scales, block = held
        blocks = values.reshape(-1, block).float() * scales.reshape(-1, 1)
        return blocks.reshape(values.shape)

    def __iter__(self) -> Iterator[str]:
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)


def load_weights(
    source: CheckpointArrays | PackArrays,
    names: list[str],
    device: torch.device,
    cast_to: Mapping[str, str] | None = None,
) -> Weights:
    """The named tensors on `device`, in the stored dtype or, for names in `cast_to`, cast to that
    Burn dtype (round to nearest even, as the packer casts; quantized as Burn quantizes)."""
    torch = import_torch()
    torch_dtypes = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
    weights = Weights()
    for name in names:
        stored = source.dtype(name)
        target = (cast_to or {}).get(name, stored)
        block = dtype_info(target).block
        if block is not None:
            if target == stored:
                assert isinstance(source, PackArrays)  # only packs hold quantized tensors
                values, scales = source.quantized(name)
            else:
                # Quantized as Burn quantizes (after an exact widening to f32).
                values, scales = quantize(np.asarray(source.numpy(name), np.float32), block)
            weights.add_quantized(name, _as_torch(values).to(device), _as_torch(scales).to(device), block)
            continue
        tensor = _as_torch(source.numpy(name)).to(device)
        if target != stored:
            tensor = tensor.to(torch_dtypes[target])
        weights.add(name, tensor)
    return weights
