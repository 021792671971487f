"""Finding a checkpoint's models, shards and tensors, with the index (when present) as the only truth
about which shard holds which tensor.

A CKPT_ROOT is laid out as upstream ships it: one folder per model (`HeartMuLa-oss-3B`,
`HeartCodec-oss` or `HeartCodec-oss-20260123`) beside the runtime files (`tokenizer.json`,
`gen_config.json`). A folder of any other name is a model folder too when a preset recognises its
config.json (`HeartMuLa-oss-7B/`). A folder that holds the shards itself, or a single
`.safetensors` file, is a checkpoint of one model."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from . import _core
from ._core import SourceTensor
from ._errors import CheckpointError
from ._fields import Fields, inside, read_json
from ._presets import PRESETS, RUNTIME_FILES, Preset, preset_named, recognized

INDEX_SUFFIX = ".safetensors.index.json"

__all__ = [
    "Checkpoint",
    "SourceTensor",
    "hub_source",
    "load_checkpoint",
    "load_checkpoints",
    "load_model_folders",
    "model_dirs",
    "runtime_file_origin",
]
# Shards known by their headers alone (streamed from the Hub): path -> (tensors, __metadata__).
RemoteHeaders = Mapping[Path, tuple[list[SourceTensor], dict[str, str]]]
# A Hugging Face cache snapshot: CACHE/models--ORG--NAME/snapshots/COMMIT/ (repository ids cannot
# hold "--", so the split is unambiguous).
_SNAPSHOT = re.compile(r"(?:^|/)models--(?:([\w.-]+?)--)?([\w.-]+)/snapshots/([0-9a-f]{40})(?:/|$)")


@dataclass
class Checkpoint:
    model_dir: Path
    shards: list[Path]
    tensors: list[SourceTensor]  # on-disk order: shard by shard, by offset within a shard
    config: Fields | None = None  # the model folder's config.json
    extras: dict[str, Path] = field(default_factory=dict)
    # Each shard's __metadata__ (where `unpack` keeps the original pack's metadata and param_ids).
    shard_metadata: dict[Path, dict[str, str]] = field(default_factory=dict)
    # The Hub repository and commit the files came from, when they are (links into) a cache snapshot.
    source_repo: str | None = None
    source_revision: str | None = None


def model_dirs(root: str | Path, subdir: str | None = None) -> list[Path]:
    """The model folders of a CKPT_ROOT: ROOT/<subdir> when given; else every folder a known model
    ships in, or whose config.json a preset recognises; else ROOT itself (or the folder of a
    single .safetensors file)."""
    return list(_models(Path(root), subdir))


def _models(root: Path, subdir: str | None) -> dict[Path, Preset | None]:
    """`model_dirs` with the preset each folder was recognised by (None where it was not looked at:
    a subdir, ROOT itself)."""
    if not root.exists():
        raise CheckpointError.at(root, "checkpoint folder does not exist")
    if root.is_file():
        if root.suffix != ".safetensors":
            raise CheckpointError.at(root, "not a .safetensors file or a checkpoint folder")
        return {root.parent: None}
    if subdir is not None:
        model_dir = root / subdir
        if not model_dir.is_dir():
            present = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
            near = [name for name in present if name.lower() == subdir.lower()]
            hint = f"; did you mean {near[0]}?" if near else ""
            raise CheckpointError.at(
                model_dir, f"model folder does not exist (folders in {root}: {', '.join(present) or 'none'}){hint}"
            )
        return {model_dir: None}
    found: dict[Path, Preset | None] = dict(_model_folders(root))
    if found:
        return found
    if any(root.glob("*.safetensors")) or any(root.glob("*" + INDEX_SUFFIX)):
        return {root: None}
    folders = ", ".join(name + "/" for preset in PRESETS for name in preset.folder_names)
    raise CheckpointError.at(root, f"no checkpoint found (expected {folders} a *{INDEX_SUFFIX} or *.safetensors files)")


def _model_folders(root: Path) -> dict[Path, Preset]:
    """The folders of ROOT that hold a model, with the preset that knows it: those named as upstream
    ships a model (whatever their config says: a broken one is reported when loaded), and any other
    whose config.json a preset recognises. Two folders of one model are refused: both would be
    written to the same pack."""
    found: dict[Path, Preset] = {}
    for folder in sorted(p for p in root.iterdir() if not p.name.startswith(".")):
        named = next((q for q in PRESETS if folder.name in q.folder_names), None)
        if folder.is_dir() and (named is not None or (folder / "config.json").is_file()):
            preset = _recognized_in(folder) or named
            if preset is not None:
                found[folder] = preset
    for preset in PRESETS:
        same = [f.name + "/" for f, p in found.items() if p is preset]
        if len(same) > 1:
            raise CheckpointError.at(
                root,
                f"holds {len(same)} {preset.title} checkpoints ({', '.join(same)}): pack one at a time (--subdir NAME)",
            )
    # In the presets' order, whatever the names: the first pack is the LM's (`-o FILE` names it).
    return dict(sorted(found.items(), key=lambda item: PRESETS.index(item[1])))


def _recognized_in(folder: Path) -> Preset | None:
    """The preset that recognises `folder/config.json`; None when it is missing or unreadable (a
    folder upstream's name marks as a model's reports that when loaded)."""
    try:
        return recognized(read_json(folder / "config.json", "config.json"))
    except CheckpointError:
        return None


def load_checkpoints(root: str | Path, subdir: str | None = None) -> list[Checkpoint]:
    """Every model of a CKPT_ROOT (see `model_dirs`)."""
    return [_load(Path(root), model_dir) for model_dir in model_dirs(root, subdir)]


def load_model_folders(
    model_folders: Sequence[Path], runtime_dir: Path, remote: RemoteHeaders | None = None
) -> list[Checkpoint]:
    """Models whose folders lie apart (the Hub cache's snapshots: one per repository), with the
    runtime files in `runtime_dir`. With `remote`, the shards are not in the folders: these are
    their headers, by the path each would have there."""
    return [_load(runtime_dir, Path(folder), remote) for folder in model_folders]


def hub_source(path: Path) -> tuple[str, str] | None:
    """(repository, commit) when `path` is, or lies in, a Hugging Face cache snapshot."""
    m = _SNAPSHOT.search(Path(os.path.abspath(path)).as_posix())
    if m is None:
        return None
    org, name, commit = m.groups()
    return (f"{org}/{name}" if org else name), commit


def _cache_snapshot(path: str) -> Path | None:
    """The cache snapshot folder (CACHE/models--ORG--NAME/snapshots/COMMIT) `path` lies in, judged on the text."""
    if hub_source(Path(path)) is None:
        return None
    return next(
        (
            p
            for p in (Path(path), *Path(path).parents)
            if p.parent.name == "snapshots" and re.fullmatch(r"[0-9a-f]{40}", p.name)
        ),
        None,
    )


def runtime_file_origin(path: Path) -> Path | None:
    """Where a runtime file found at `path` really is, when that lies outside the folder `path` is
    in (a link to a file elsewhere, say a planted one to ~/.ssh/id_rsa); None when it lies inside,
    or when it is a Hugging Face cache blob reached through its own snapshot's link (a snapshot's
    files link into ../../blobs/, and a CKPT_ROOT laid out by `download` links into snapshots)."""
    real = Path(os.path.realpath(path))
    folder = Path(os.path.realpath(path.parent))
    if real == folder or folder in real.parents:
        return None
    hop = os.path.abspath(path)
    for _ in range(40):  # the kernel's own limit on links followed
        snapshot = _cache_snapshot(hop)
        if snapshot is not None and real.parent == Path(os.path.realpath(snapshot.parent.parent / "blobs")):
            return None
        if not os.path.islink(hop):
            break
        hop = os.path.normpath(os.path.join(os.path.dirname(hop), os.readlink(hop)))
    return real


def _hub_source_of(model_dir: Path) -> tuple[str, str] | None:
    """Where a model folder's files come from: the folder itself is a snapshot, or its config.json
    links into one (a CKPT_ROOT laid out by `download`)."""
    return linked_hub_source(model_dir / "config.json") or hub_source(model_dir)


def linked_hub_source(path: Path) -> tuple[str, str] | None:
    """(repository, commit) of a file that is, or links into, a cache snapshot (`download`'s links)."""
    if path.is_symlink():
        target = Path(os.readlink(path))
        found = hub_source(target if target.is_absolute() else path.parent / target)
        if found is not None:
            return found
    return hub_source(path)


def load_checkpoint(root: str | Path, subdir: str | None = None, *, model: str | None = None) -> Checkpoint:
    """One model of a CKPT_ROOT: the only one there, or the one `model` (a preset name) names."""
    root = Path(root)
    found = _models(root, subdir)
    dirs = list(found)
    if len(dirs) > 1 and model is not None:
        preset = preset_named(model)
        dirs = [d for d in dirs if preset is not None and found[d] is preset] or dirs
    if len(dirs) > 1:
        names = ", ".join(d.name for d in dirs)
        raise CheckpointError.at(root, f"holds several models ({names}): give the one to use as subdir")
    return _load(root, dirs[0])


def _header(path: Path, shard_metadata: dict[Path, dict[str, str]], remote: RemoteHeaders | None) -> list[SourceTensor]:
    tensors, metadata = remote[path] if remote is not None else _core.read_safetensors_header(path)
    shard_metadata[path] = metadata
    return tensors


def _shards_from_index(
    model_dir: Path, index_path: Path, shard_metadata: dict[Path, dict[str, str]], remote: RemoteHeaders | None
) -> tuple[list[Path], list[SourceTensor]]:
    index = read_json(index_path, "index")
    weight_map = index.string_map("weight_map")
    shard_names = sorted(set(weight_map.values()))
    shards = {}
    for shard_name in shard_names:
        wanted = next(k for k, v in weight_map.items() if v == shard_name)
        # The index comes with the download: it must not pull bytes from elsewhere on this disk.
        shard = inside(shard_name, model_dir, index_path, "index names shard", tensor=wanted)
        if not (shard in remote if remote is not None else shard.exists()):  # a FIFO, a folder: refused when opened
            raise CheckpointError.at(
                index_path, f"index names shard '{shard_name}', which does not exist", tensor=wanted
            )
        shards[shard_name] = shard
    tensors: list[SourceTensor] = []
    for shard_name, shard in shards.items():
        present = set()
        for t in _header(shard, shard_metadata, remote):
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
    return list(shards.values()), tensors


def _shards_without_index(
    paths: list[Path], shard_metadata: dict[Path, dict[str, str]], remote: RemoteHeaders | None = None
) -> list[SourceTensor]:
    seen: dict[str, Path] = {}
    tensors = []
    for shard in paths:
        for t in _header(shard, shard_metadata, remote):
            if t.name in seen:
                raise CheckpointError.at(shard, f"also in {seen[t.name].name}", tensor=t.name)
            seen[t.name] = shard
            tensors.append(t)
    return tensors


def _load(root: Path, model_dir: Path, remote: RemoteHeaders | None = None) -> Checkpoint:
    shard_metadata: dict[Path, dict[str, str]] = {}
    if root.is_file():
        shards = [root]
        tensors = _shards_without_index(shards, shard_metadata)
    else:
        indexes = sorted(model_dir.glob("*" + INDEX_SUFFIX))
        if len(indexes) > 1:
            raise CheckpointError.at(model_dir, f"more than one index ({', '.join(p.name for p in indexes)})")
        if indexes:
            shards, tensors = _shards_from_index(model_dir, indexes[0], shard_metadata, remote)
        else:
            in_folder = sorted(p for p in remote if p.parent == model_dir) if remote is not None else None
            shards = in_folder if in_folder is not None else sorted(model_dir.glob("*.safetensors"))
            if not shards:
                raise CheckpointError.at(model_dir, "no .safetensors files")
            tensors = _shards_without_index(shards, shard_metadata, remote)
    config_path = model_dir / "config.json"
    config = read_json(config_path, "config.json") if config_path.exists() else None
    # The runtime files of the model its config.json describes; of any model for a folder no
    # preset recognises (what --any-model packs), as a pack of it is judged by its tensors later.
    model = recognized(config) if config is not None else None
    extras = {}
    for name in model.runtime_files if model is not None else RUNTIME_FILES:  # CKPT_ROOT's, else the folder's
        for folder in (root if root.is_dir() else root.parent, model_dir):
            # Whatever is there under the name, even a FIFO or a broken link: copying it is what
            # checks it (and says what is wrong), rather than leaving it out silently.
            if os.path.lexists(folder / name):
                extras[name] = folder / name
                break
    repo, revision = _hub_source_of(model_dir) or (None, None)
    return Checkpoint(model_dir, shards, tensors, config, extras, shard_metadata, repo, revision)
