"""The manifest: the single description of a pack (ordered tensors, their sources and dtypes,
plus the pack's metadata map). Paths inside are relative to the manifest's folder."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from importlib import metadata as _metadata
from pathlib import Path

from . import _core, heartmula
from .atomic import write_text
from .checkpoint import Checkpoint, read_json
from .errors import CheckpointError
from .packfile import dtype_size

MANIFEST_FORMAT = "heartmula-burn-manifest"
MANIFEST_VERSION = 1
FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")
DTYPE_CHOICES = ("f32", "bf16", "f16", "source")
# Keys under which `unpack` keeps, in each shard's __metadata__, what safetensors cannot otherwise
# hold, so that packing the unpacked folder gives back the identical pack.
PACK_METADATA_KEY = "heartmula_burn.pack_metadata"
PARAM_IDS_KEY = "heartmula_burn.param_ids"


def package_version() -> str:
    try:
        return _metadata.version("heartmula-burn")
    except _metadata.PackageNotFoundError:
        return "0+unknown"


@dataclass
class ManifestTensor:
    name: str
    file: Path  # absolute once loaded
    key: str
    source_dtype: str
    dtype: str
    shape: tuple[int, ...]
    param_id: int | None = None

    def to_json(self, base: Path) -> dict:
        entry = {
            "name": self.name,
            "source": {"file": _relative(self.file, base), "key": self.key},
            "source_dtype": self.source_dtype,
            "dtype": self.dtype,
            "shape": list(self.shape),
        }
        if self.param_id is not None:
            entry["param_id"] = self.param_id
        return entry


@dataclass
class Manifest:
    tensors: list[ManifestTensor]
    metadata: dict[str, str] = field(default_factory=dict)
    # Runtime files copied beside the pack (tokenizer.json, gen_config.json); not part of the pack.
    extras: dict[str, Path] = field(default_factory=dict)

    @property
    def total_bytes(self) -> int:
        return sum(math.prod(t.shape) * dtype_size(t.dtype) for t in self.tensors)

    def core_items(self) -> list[_core.PackItem]:
        """What `_core.pack` takes: the Rust core re-checks each source against its file."""
        return [
            _core.PackItem(
                t.name, t.file, t.key, t.dtype, param_id=t.param_id, source_dtype=t.source_dtype, shape=t.shape
            )
            for t in self.tensors
        ]

    def to_json(self, path: Path) -> dict:
        base = path.resolve().parent
        doc = {
            "format": MANIFEST_FORMAT,
            "format_version": MANIFEST_VERSION,
            "metadata": dict(self.metadata),
            "tensors": [t.to_json(base) for t in self.tensors],
        }
        if self.extras:
            doc["extras"] = {name: _relative(p, base) for name, p in self.extras.items()}
        return doc

    @classmethod
    def from_json(cls, doc: dict, path: Path) -> Manifest:
        base = path.resolve().parent

        def fail(message: str) -> CheckpointError:
            return CheckpointError.at(path, f"{message}")

        if doc.get("format") != MANIFEST_FORMAT:
            raise fail(f"not a heartmula-burn manifest (format must be '{MANIFEST_FORMAT}')")
        if doc.get("format_version") != MANIFEST_VERSION:
            raise fail(f"unsupported manifest format_version {doc.get('format_version')!r}")
        metadata = doc.get("metadata", {})
        if not isinstance(metadata, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
        ):
            raise fail("'metadata' must map strings to strings")
        entries = doc.get("tensors")
        if not isinstance(entries, list):
            raise fail("'tensors' must be a list")
        tensors = []
        for i, e in enumerate(entries):
            label = f"tensor #{i}" if not isinstance(e, dict) else f"tensor '{e.get('name', f'#{i}')}'"
            try:
                source = e["source"]
                shape = tuple(e["shape"])
                param_id = e.get("param_id")
                t = ManifestTensor(
                    name=e["name"],
                    file=(base / source["file"]),
                    key=source["key"],
                    source_dtype=str(e["source_dtype"]).upper(),
                    dtype=str(e["dtype"]).upper(),
                    shape=shape,
                    param_id=param_id,
                )
            except (KeyError, TypeError) as err:
                raise fail(f"{label}: missing or malformed field {err}") from None
            if t.dtype == "BOOL":
                t.dtype = "Bool"
            if t.source_dtype == "BOOL":
                t.source_dtype = "Bool"
            if not isinstance(t.name, str) or not isinstance(t.key, str):
                raise fail(f"{label}: 'name' and 'source.key' must be strings")
            if not all(isinstance(d, int) and d >= 0 for d in shape):
                raise fail(f"{label}: 'shape' must be a list of non-negative integers")
            if param_id is not None and not (isinstance(param_id, int) and 0 <= param_id < 2**64):
                raise fail(f"{label}: 'param_id' must be an unsigned 64-bit integer")
            tensors.append(t)
        extras = {name: base / p for name, p in (doc.get("extras") or {}).items()}
        return cls(tensors, metadata, extras)

    def save(self, path: Path, *, overwrite: bool = True) -> None:
        write_text(path, json.dumps(self.to_json(path), indent=2) + "\n", overwrite=overwrite)

    @classmethod
    def load(cls, path: str | Path) -> Manifest:
        path = Path(path)
        return cls.from_json(read_json(path, "manifest"), path)


def _relative(p: Path, base: Path) -> str:
    return os.path.relpath(Path(p).resolve(), base)


def output_dtype(source_dtype: str | None, requested: str) -> str:
    """The pack dtype for a source dtype: floats follow --dtype, everything else stays as it is."""
    if requested == "source" or source_dtype not in FLOAT_DTYPES:
        return source_dtype
    return requested.upper()


def build_manifest(ckpt: Checkpoint, dtype: str = "f32", any_model: bool = False) -> Manifest:
    """The default manifest: every tensor under its upstream name, in on-disk order (so reads are
    sequential), converted to `dtype`. Unless `any_model`, the HeartMuLa preset checks it first."""
    if dtype not in DTYPE_CHOICES:
        raise ValueError(f"unknown dtype '{dtype}' (choose from {', '.join(DTYPE_CHOICES)})")
    for t in ckpt.tensors:
        if t.dtype is None:
            raise CheckpointError.at(t.file, f"dtype {t.source_dtype} cannot be stored in a Burn pack", tensor=t.name)
    metadata = {
        "format": "burnpack",
        "producer": "heartmula-burn",
        "version": package_version(),
        "source_model": ckpt.model_dir.resolve().name,
        "source_dtype": ",".join(sorted({t.dtype for t in ckpt.tensors})),
    }
    if not any_model:
        if ckpt.config is None:
            raise CheckpointError.at(
                ckpt.model_dir / "config.json", "config.json not found (--any-model packs without the HeartMuLa check)"
            )
        cfg = heartmula.parse_config(ckpt.config, ckpt.config_path)
        heartmula.check_tensors({t.name: t.shape for t in ckpt.tensors}, cfg, ckpt.model_dir)
        metadata["model"] = "heartmula"
        metadata["backbone_flavor"] = cfg.backbone_flavor
        metadata["decoder_flavor"] = cfg.decoder_flavor
        # The model's sizes travel with the pack (runtimes and `sanity` need them; custom flavours
        # cannot be looked up by name).
        metadata["config"] = json.dumps(ckpt.config, sort_keys=True, separators=(",", ":"))
    tensors = [
        ManifestTensor(t.name, t.file, t.name, t.dtype, output_dtype(t.dtype, dtype), t.shape) for t in ckpt.tensors
    ]
    metadata["dtype"] = ",".join(sorted({t.dtype for t in tensors}))
    restored = _unpacked_pack_state(ckpt)
    if restored is not None:
        # An unpacked pack: give back its own metadata and param_ids, so repacking is lossless.
        metadata, param_ids = restored
        for t in tensors:
            t.param_id = param_ids.get(t.name)
    return Manifest(tensors, metadata, dict(ckpt.extras))


def _unpacked_pack_state(ckpt: Checkpoint) -> tuple[dict[str, str], dict[str, int]] | None:
    """The original metadata and param_ids `unpack` kept in every shard's __metadata__, if it did."""
    states = {(m.get(PACK_METADATA_KEY), m.get(PARAM_IDS_KEY)) for m in ckpt.shard_metadata.values()}
    if len(states) != 1:
        return None
    ((metadata_text, param_ids_text),) = states
    if metadata_text is None:
        return None
    try:
        metadata = json.loads(metadata_text)
        param_ids = json.loads(param_ids_text or "{}")
    except json.JSONDecodeError:
        return None
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        return None
    return metadata, param_ids
