"""The manifest: the single description of a pack (ordered tensors, their sources and dtypes,
plus the pack's metadata map). Paths inside are relative to the manifest's folder and must lie
inside it: a manifest that came with a download cannot pull other files of this disk into a pack."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from importlib import metadata as _metadata
from pathlib import Path
from typing import Any

from . import _core
from ._atomic import write_text
from ._checkpoint import Checkpoint
from ._errors import CheckpointError, HeartmulaBurnError, OutputError
from ._fields import Fields, inside, read_json
from ._packfile import canonical_dtype, dtype_info, tensor_nbytes
from ._presets import Preset, preset_for

MANIFEST_FORMAT = "heartmula-burn-manifest"
MANIFEST_VERSION = 1
FLOAT_DTYPES = tuple(d.name for d in _core.plain_dtypes() if d.is_float)
# --dtype: a float dtype for every float tensor, each tensor's own ("source"), or "q8": the tensors
# the model's preset names quantized to Burn's Q8S in blocks of --q-block values, the rest F32.
# "q8" stores them `PackedU32(0)` (what Burn's quantizer writes on wgpu; every backend runs it),
# "q8-native" `Native` (what it writes on Flex; wgpu's shaders cannot compile it). Same bytes.
DTYPE_CHOICES = ("f32", "bf16", "f16", "source", "q8", "q8-native")
QUANTIZED_CHOICES = {"q8": "Q8S_B{block}", "q8-native": "Q8S_B{block}_NATIVE"}
PLAIN_DTYPE_CHOICES = tuple(d for d in DTYPE_CHOICES if d not in QUANTIZED_CHOICES)
DEFAULT_Q_BLOCK = 32  # as llama.cpp's q8_0 and Burn's own tests
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

    def to_json(self, base: Path, manifest_path: Path) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "name": self.name,
            "source": {"file": _relative(self.file, base, manifest_path), "key": self.key},
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

    # For people, not saved: what building the manifest decided that they may not expect.
    notes: list[str] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        return sum(tensor_nbytes(t.dtype, t.shape) for t in self.tensors)

    @property
    def quantized(self) -> bool:
        return any(dtype_info(t.dtype).is_quantized for t in self.tensors)

    def core_items(self) -> list[_core.TensorRequest]:
        """What `_core.pack` takes: the Rust core re-checks each source against its file."""
        return [
            _core.TensorRequest(
                t.name, t.file, t.key, t.dtype, param_id=t.param_id, source_dtype=t.source_dtype, shape=t.shape
            )
            for t in self.tensors
        ]

    def to_json(self, path: Path) -> dict[str, Any]:
        base = _folder_of(path)
        doc: dict[str, Any] = {
            "format": MANIFEST_FORMAT,
            "format_version": MANIFEST_VERSION,
            "metadata": dict(self.metadata),
            "tensors": [t.to_json(base, path) for t in self.tensors],
        }
        if self.extras:
            doc["extras"] = {name: _relative(p, base, path) for name, p in self.extras.items()}
        return doc

    @classmethod
    def from_json(cls, doc: Fields) -> Manifest:
        path = doc.path
        base = _folder_of(path)
        if doc.doc.get("format") != MANIFEST_FORMAT:
            raise CheckpointError.at(path, f"not a heartmula-burn manifest ('format' must be '{MANIFEST_FORMAT}')")
        version = doc.integer("format_version")
        if version != MANIFEST_VERSION:
            raise doc.error("format_version", f"is {version}; this version reads {MANIFEST_VERSION}")
        metadata = doc.string_map("metadata", default={})
        tensors = []
        names: dict[str, int] = {}  # name -> index in "tensors"
        param_ids: dict[int, int] = {}
        for i, entry in enumerate(doc.objects("tensors")):
            name = entry.string("name")
            if not name:
                raise entry.error("name", "is empty: every tensor needs a name")
            if name in names:
                raise entry.error("name", f"is {name!r}, already the name of tensors[{names[name]}]")
            names[name] = i
            param_id = _param_id(entry)
            if param_id is not None:
                if param_id in param_ids:
                    raise entry.error(
                        "param_id", f"is {param_id}, already the param_id of tensors[{param_ids[param_id]}]"
                    )
                param_ids[param_id] = i
            source = entry.obj("source")
            tensors.append(
                ManifestTensor(
                    name=name,
                    file=inside(source.string("file"), base, path, "source file", tensor=name),
                    key=source.string("key"),
                    source_dtype=_dtype(entry, "source_dtype"),
                    dtype=_dtype(entry, "dtype"),
                    shape=tuple(entry.integers("shape", minimum=0)),
                    param_id=param_id,
                )
            )
        extras = {}
        for name, file in doc.string_map("extras", default={}).items():
            # The key is the file written beside the pack: a name, never a path out of that folder.
            if name in ("", ".", "..") or "/" in name or "\0" in name:
                raise doc.error("extras", f"has the destination {name!r}, which is not a plain file name")
            extras[name] = inside(file, base, path, f"extras entry '{name}' names")
        return cls(tensors, metadata, extras)

    def save(self, path: Path, *, overwrite: bool = True) -> None:
        write_text(path, json.dumps(self.to_json(path), indent=2) + "\n", overwrite=overwrite)

    @classmethod
    def load(cls, path: str | Path) -> Manifest:
        return cls.from_json(read_json(Path(path), "manifest"))


def _dtype(entry: Fields, key: str) -> str:
    text = entry.string(key)
    dtype = canonical_dtype(text)
    if dtype is None:
        raise entry.error(key, f"is {text!r}, not a dtype a Burn pack holds")
    return dtype


def _param_id(entry: Fields) -> int | None:
    if "param_id" not in entry:
        return None
    value = entry.integer("param_id", minimum=0)
    if value >= 2**64:
        raise entry.error("param_id", "must fit in 64 bits")
    return value


def _folder_of(path: Path) -> Path:
    # Lexically absolute, symbolic links kept: a Hugging Face cache's shards link outside.
    return Path(os.path.abspath(path)).parent


def _relative(p: Path, base: Path, manifest_path: Path) -> str:
    relative = os.path.relpath(os.path.abspath(p), base)
    if relative.split(os.sep)[0] == os.pardir:
        raise OutputError.at(
            manifest_path,
            f"cannot refer to {p}, which lies outside the manifest's folder (manifests may only refer to files "
            "inside their folder): save it in a folder that holds the checkpoint, e.g. CKPT_ROOT/manifest.json",
        )
    return relative


def output_dtype(source_dtype: str, requested: str) -> str:
    """The pack dtype for a source dtype: floats follow --dtype, everything else stays as it is."""
    if requested == "source" or source_dtype not in FLOAT_DTYPES:
        return source_dtype
    return requested.upper()


def quantized_dtype(dtype: str, q_block: int) -> str | None:
    """Our name for the dtype `--dtype` quantizes to ("Q8S_B32", "Q8S_B32_NATIVE"), None for a plain --dtype;
    ValueError for a block the scheme cannot have (Burn stores a block length in one byte)."""
    scheme = QUANTIZED_CHOICES.get(dtype)
    if scheme is None:
        return None
    if isinstance(q_block, bool) or not isinstance(q_block, int) or not 1 <= q_block <= _core.MAX_Q_BLOCK:
        raise ValueError(
            f"q_block {q_block!r}: a block is 1 to {_core.MAX_Q_BLOCK} values (Burn stores it in one byte)"
        )
    return dtype_info(scheme.format(block=q_block)).name


def build_manifest(
    ckpt: Checkpoint, dtype: str = "f32", any_model: bool = False, q_block: int = DEFAULT_Q_BLOCK
) -> Manifest:
    """The default manifest: every tensor under its upstream name, in on-disk order (so reads are
    sequential), converted to `dtype`. Unless `any_model`, the model's preset (recognised from its
    config.json) checks every tensor and shape first and decides which dtypes it may be packed in.
    With "q8", the tensors the preset names quantized (`Preset.quantizable`) are quantized in
    blocks of `q_block` where their last dimension allows it, every other float tensor is F32."""
    if dtype not in DTYPE_CHOICES:
        raise ValueError(f"unknown dtype '{dtype}' (choose from {', '.join(DTYPE_CHOICES)})")
    quantized = quantized_dtype(dtype, q_block)
    if quantized is not None and any_model:
        raise HeartmulaBurnError.at(
            ckpt.model_dir,
            f"--dtype {dtype} refused with --any-model: a model's preset says which tensors are quantized "
            "(write a manifest to choose them yourself)",
        )
    sources: dict[str, str] = {}
    for t in ckpt.tensors:
        if t.dtype is None:
            raise CheckpointError.at(t.file, f"dtype {t.source_dtype} cannot be stored in a Burn pack", tensor=t.name)
        sources[t.name] = t.dtype
    metadata = {
        "format": "burnpack",
        "producer": "heartmula-burn",
        "version": package_version(),
        "source_model": Path(os.path.abspath(ckpt.model_dir)).name,
        "source_dtype": ",".join(sorted(set(sources.values()))),
    }
    if ckpt.source_repo is not None and ckpt.source_revision is not None:
        metadata["source_repo"] = ckpt.source_repo
        metadata["source_revision"] = ckpt.source_revision
        if ckpt.model_dir.parent.name == "snapshots":  # packed from the cache: the folder is a commit
            metadata["source_model"] = ckpt.source_repo.split("/")[-1]
    extras = dict(ckpt.extras)
    if not any_model:
        preset, config = preset_of(ckpt)
        if dtype not in preset.dtypes:
            raise HeartmulaBurnError.at(ckpt.model_dir, f"--dtype {dtype} refused: {preset.dtype_reason}")
        preset.check_tensors({t.name: t.shape for t in ckpt.tensors}, config, ckpt.model_dir)
        _check_dtypes(ckpt, preset)
        metadata.update(preset.metadata(config))
        extras = {name: p for name, p in extras.items() if name in preset.runtime_files}
    floats = "f32" if quantized is not None else dtype
    tensors = [
        ManifestTensor(t.name, t.file, t.name, sources[t.name], output_dtype(sources[t.name], floats), t.shape)
        for t in ckpt.tensors
    ]
    notes = []
    if quantized is not None:
        notes = _quantize(tensors, quantized, preset_of(ckpt)[0])
    metadata["dtype"] = ",".join(sorted({t.dtype for t in tensors}))
    restored = _unpacked_pack_state(ckpt)
    if restored is not None:
        # An unpacked pack: give back its own metadata and param_ids, so repacking is lossless.
        metadata, param_ids = restored
        for entry in tensors:
            entry.param_id = param_ids.get(entry.name)
    return Manifest(tensors, metadata, extras, notes)


def _quantize(tensors: list[ManifestTensor], quantized: str, preset: Preset) -> list[str]:
    """Sets `quantized` on the float tensors the preset names, where the core's dtype table says
    their shape can hold it (whole blocks along the last dimension, and for a packed store whole
    u32 words); the others stay F32, and the note returned names them."""
    info = dtype_info(quantized)
    uneven = []
    for t in tensors:
        if preset.quantizable is None or not preset.quantizable.fullmatch(t.name) or t.dtype not in FLOAT_DTYPES:
            continue
        try:
            info.byte_len(list(t.shape))
        except ValueError:
            uneven.append(f"{t.name} {list(t.shape)}")
        else:
            t.dtype = quantized
    if not uneven:
        return []
    shown = ", ".join(uneven[:3]) + (f" and {len(uneven) - 3} more" if len(uneven) > 3 else "")
    packed = " and of 4 (four values to a u32)" if info.store == "PackedU32(0)" else ""
    note = (
        f"{len(uneven)} tensor(s) stay F32, their last dimension not a multiple of the block {info.block}{packed} "
        f"(Burn quantizes whole blocks only): {shown}"
    )
    return [note]


def preset_of(ckpt: Checkpoint) -> tuple[Preset, Fields]:
    """The preset the checkpoint's config.json describes, and that config; an error naming the
    file when there is none."""
    if ckpt.config is None:
        raise CheckpointError.at(
            ckpt.model_dir / "config.json", "config.json not found (--any-model packs without a preset)"
        )
    return preset_for(ckpt.config), ckpt.config


def _check_dtypes(ckpt: Checkpoint, preset: Preset) -> None:
    """A preset whose packs hold only `dtype` gets only tensors that convert to it exactly."""
    if len(preset.dtypes) != 1:
        return
    target = preset.dtypes[0].upper()
    for t in ckpt.tensors:
        if t.dtype is None or not dtype_info(t.dtype).casts_exactly_to(target):
            raise CheckpointError.at(
                t.file,
                f"dtype {t.dtype or t.source_dtype} cannot become {target} exactly; {preset.dtype_reason}",
                tensor=t.name,
            )


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
    except (json.JSONDecodeError, RecursionError):
        return None
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        return None
    if not isinstance(param_ids, dict) or not all(
        isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**64 for v in param_ids.values()
    ):
        return None
    return metadata, param_ids
