"""Finding a checkpoint's shards and tensors, with the index (when present) as the only truth
about which shard holds which tensor."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from . import _core
from ._core import TensorInfo as SourceTensor
from .errors import CheckpointError

HEARTMULA_SUBDIR = "HeartMuLa-oss-3B"
INDEX_SUFFIX = ".safetensors.index.json"
# Files the runtime needs beside the pack.
EXTRA_FILES = ("tokenizer.json", "gen_config.json")


@dataclass
class Checkpoint:
    root: Path
    model_dir: Path
    shards: list[Path]
    tensors: list[SourceTensor]  # on-disk order: shard by shard, by offset within a shard
    config: dict | None = None
    config_path: Path | None = None
    index_path: Path | None = None
    extras: dict[str, Path] = field(default_factory=dict)
    # Each shard's __metadata__ (where `unpack` keeps the original pack's metadata and param_ids).
    shard_metadata: dict[Path, dict[str, str]] = field(default_factory=dict)

    @property
    def total_bytes(self) -> int:
        return sum(t.byte_len for t in self.tensors)


def read_json(path: Path, what: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except FileNotFoundError:
        raise CheckpointError.at(path, f"{what} not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise CheckpointError.at(path, f"cannot read {what}: {e}") from None
    except json.JSONDecodeError as e:
        raise CheckpointError.at(path, f"{what} is not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise CheckpointError.at(path, f"{what} must be a JSON object")
    return value


def find_model_dir(root: Path, subdir: str | None = None) -> Path:
    """The folder holding the shards: ROOT/<subdir>, ROOT/HeartMuLa-oss-3B, or ROOT itself."""
    if not root.exists():
        raise CheckpointError.at(root, "checkpoint folder does not exist")
    if root.is_file():
        if root.suffix != ".safetensors":
            raise CheckpointError.at(root, "not a .safetensors file or a checkpoint folder")
        return root.parent
    if subdir is not None:
        model_dir = root / subdir
        if not model_dir.is_dir():
            raise CheckpointError.at(model_dir, "model folder does not exist")
        return model_dir
    if (root / HEARTMULA_SUBDIR).is_dir():
        return root / HEARTMULA_SUBDIR
    if any(root.glob("*.safetensors")) or any(root.glob("*" + INDEX_SUFFIX)):
        return root
    raise CheckpointError.at(
        root, f"no checkpoint found (expected {HEARTMULA_SUBDIR}/, a *{INDEX_SUFFIX} or *.safetensors files)"
    )


def _header(path: Path, shard_metadata: dict[Path, dict[str, str]]) -> list[SourceTensor]:
    tensors, metadata = _core.read_safetensors_header(path)
    shard_metadata[path] = metadata
    return tensors


def _shards_from_index(
    model_dir: Path, index_path: Path, shard_metadata: dict
) -> tuple[list[Path], list[SourceTensor]]:
    index = read_json(index_path, "index")
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise CheckpointError.at(index_path, "index has no 'weight_map' of tensor name -> shard file")
    shard_names = sorted(set(weight_map.values()))
    for shard_name in shard_names:
        if not (model_dir / shard_name).is_file():
            wanted = next(k for k, v in weight_map.items() if v == shard_name)
            raise CheckpointError.at(
                index_path, f"index names shard '{shard_name}', which does not exist", tensor=wanted
            )
    tensors: list[SourceTensor] = []
    for shard_name in shard_names:
        shard = model_dir / shard_name
        present = set()
        for t in _header(shard, shard_metadata):
            owner = weight_map.get(t.name)
            if owner is None:
                raise CheckpointError.at(shard, f"not listed in the index {index_path.name}", tensor=t.name)
            if owner != shard_name:
                raise CheckpointError.at(shard, f"the index places it in '{owner}', not in this shard", tensor=t.name)
            present.add(t.name)
            tensors.append(t)
        for name, owner in weight_map.items():
            if owner == shard_name and name not in present:
                raise CheckpointError.at(shard, "listed in the index but missing from the shard", tensor=name)
    return [model_dir / s for s in shard_names], tensors


def _shards_without_index(paths: list[Path], shard_metadata: dict) -> list[SourceTensor]:
    seen: dict[str, Path] = {}
    tensors = []
    for shard in paths:
        for t in _header(shard, shard_metadata):
            if t.name in seen:
                raise CheckpointError.at(shard, f"also in {seen[t.name].name}", tensor=t.name)
            seen[t.name] = shard
            tensors.append(t)
    return tensors


def load_checkpoint(root: str | Path, subdir: str | None = None) -> Checkpoint:
    root = Path(root)
    model_dir = find_model_dir(root, subdir)
    index_path = None
    shard_metadata: dict[Path, dict[str, str]] = {}
    if root.is_file():
        shards = [root]
        tensors = _shards_without_index(shards, shard_metadata)
    else:
        indexes = sorted(model_dir.glob("*" + INDEX_SUFFIX))
        if len(indexes) > 1:
            raise CheckpointError.at(model_dir, f"more than one index ({', '.join(p.name for p in indexes)})")
        if indexes:
            index_path = indexes[0]
            shards, tensors = _shards_from_index(model_dir, index_path, shard_metadata)
        else:
            shards = sorted(model_dir.glob("*.safetensors"))
            if not shards:
                raise CheckpointError.at(model_dir, "no .safetensors files")
            tensors = _shards_without_index(shards, shard_metadata)
    config_path = model_dir / "config.json"
    config = read_json(config_path, "config.json") if config_path.exists() else None
    extras = {}
    for name in EXTRA_FILES:
        for folder in (root if root.is_dir() else root.parent, model_dir):
            if (folder / name).is_file():
                extras[name] = folder / name
                break
    return Checkpoint(
        root, model_dir, shards, tensors, config, config_path if config else None, index_path, extras, shard_metadata
    )
