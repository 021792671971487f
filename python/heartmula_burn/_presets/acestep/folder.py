"""Planning and writing an ACE-Step 1.5 runtime folder (see the package's docstring for its files).

Every upstream file is opened and checked before a byte is written: its tensors and shapes
against its config.json, its dtypes (floats only, widened to F32 exactly), `silence_latent.pt`
read without running its pickle. The packs and the JSON files are then written together through
`pack_manifests`: the output folder gets all of them or none."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ... import _core
from ..._checkpoint import Checkpoint, RemoteHeaders, linked_hub_source, load_model_folders
from ..._errors import CheckpointError, OutputError
from ..._fields import Fields
from ..._manifest import Manifest, ManifestTensor, package_version
from ..._packfile import Pack, dtype_info, open_pack
from ..._packing import Conversion, Job, ProgressFn, StagePacks, make_folders, output_folder, pack_manifests
from .. import config_of_pack, shape_problems
from ..named import Problem
from . import (
    MODEL,
    REPOSITORIES,
    SILENCE_SOURCE,
    TITLE,
    VARIANTS,
    Part,
    Variant,
    chosen_planners,
    expected_tensors,
    parts,
)
from .silence import TENSOR as SILENCE_TENSOR
from .silence import read_silence_latent, runtime_layout

SILENCE_PACK = "silence_latent.bpk"
# Where the folders of CKPT_ROOT are found: the folder's name -> where it is (CKPT_ROOT/<name>, or
# the Hub cache's snapshot of that repository).
Folders = Mapping[str, Path]


@dataclass
class FolderPlan:
    """What one run writes: a job per pack, the silence latent (decoded, in the runtime's layout),
    and notes for people."""

    variant: Variant
    folder: Path
    jobs: list[Job]
    silence: np.ndarray[Any, Any]
    silence_metadata: dict[str, str]
    notes: list[str] = field(default_factory=list)


def local_folders(root: str | Path) -> dict[str, Path]:
    """CKPT_ROOT's folders, as `download --model acestep-*` lays them out."""
    root = Path(root)
    if not root.is_dir():
        raise CheckpointError.at(root, "checkpoint folder does not exist")
    return {name: root / name for name in REPOSITORIES}


def resolve(folders: Folders, relative: str) -> Path:
    """CKPT_ROOT-relative `relative` ("Ace-Step1.5/vae") in `folders`."""
    top, _, rest = relative.partition("/")
    base = folders.get(top)
    if base is None:
        raise CheckpointError.at(relative, f"not a folder of an {TITLE} checkpoint")
    return base / rest if rest else base


def plan_folder(
    folders: Folders,
    output: str | Path | None,
    *,
    model: str = "acestep-turbo",
    planner: str | None = None,
    remote: RemoteHeaders | None = None,
) -> FolderPlan:
    """The runtime folder of `model` ("acestep-turbo" or "acestep-sft") with `planner` ("0.6B",
    "1.7B", "4B", "all"; default the variant's own), written to the folder `output` (default the
    current one); `remote`: the shards' headers where they are streamed from the Hub. Raises
    CheckpointError, naming the file and tensor, for anything upstream's files do not hold as
    their configs say, and ValueError for options that do not fit together. Packs made from a
    Hugging Face cache snapshot (or links into one) record its repository and commit."""
    variant = VARIANTS[model]
    planners = chosen_planners(variant, planner)
    folder, name = output_folder(output)
    if name is not None:
        folder = folder / name  # a runtime folder, whether or not the path ends in '/'
    if folder.exists() and not folder.is_dir():
        raise OutputError.at(folder, f"{TITLE} is written to a folder, and this is a file")
    loaded: dict[Path, Checkpoint] = {}
    jobs, notes = [], []
    used: dict[Path, set[str]] = {}
    for part in parts(variant, planners):
        model_dir = resolve(folders, part.folder)
        if model_dir not in loaded:
            loaded[model_dir] = _load(model_dir, part, remote)
        ckpt = loaded[model_dir]
        manifest = _manifest(part, ckpt)
        used.setdefault(model_dir, set()).update(t.key for t in manifest.tensors)
        jobs.append(Job(manifest, folder / part.pack, "f32", make_folder=True))
    for model_dir, names in used.items():
        ckpt = loaded[model_dir]
        left = [t.name for t in ckpt.tensors if t.name not in names]
        if left:
            shown = ", ".join(left[:4]) + (f", ... ({len(left) - 4} more)" if len(left) > 4 else "")
            notes.append(
                f"{model_dir}: {len(left)} of {len(ckpt.tensors)} tensors left out, the runtime does not use them: {shown}"
            )
    # The silence latent is the DiT's latent: as many channels as the variant's DiT config says.
    dit_config = loaded[resolve(folders, variant.dit_folder)].config
    assert dit_config is not None  # checked when its packs were planned
    silence_path = resolve(folders, SILENCE_SOURCE)
    silence = runtime_layout(read_silence_latent(silence_path, _latent_channels(dit_config)))
    metadata = _metadata(
        "silence", SILENCE_SOURCE.rsplit("/", 1)[0], dit_config.doc, ["F32"], linked_hub_source(silence_path)
    )
    return FolderPlan(variant, folder, jobs, silence, metadata, notes)


def _latent_channels(config: Fields) -> int:
    return config.integer("audio_acoustic_hidden_dim", minimum=1)


def _load(model_dir: Path, part: Part, remote: RemoteHeaders | None = None) -> Checkpoint:
    if not model_dir.is_dir():
        raise CheckpointError.at(model_dir, f"model folder does not exist ({TITLE}'s {part.part})")
    (ckpt,) = load_model_folders([model_dir], model_dir, remote)
    return ckpt


def _manifest(part: Part, ckpt: Checkpoint) -> Manifest:
    """The part's pack: its upstream file checked against its config.json, then the tensors it
    keeps, renamed, widened to F32, in on-disk order (reads stay sequential)."""
    config_path = ckpt.model_dir / "config.json"
    if ckpt.config is None:
        raise CheckpointError.at(config_path, f"config.json not found ({TITLE}'s {part.part})")
    found = {t.name: t.shape for t in ckpt.tensors}
    problems = shape_problems(found, expected_tensors(part, ckpt.config, list(found)))
    if problems:
        raise CheckpointError.at(ckpt.model_dir, f"does not match its config.json ({TITLE} {part.part}): {problems}")
    tensors = []
    for t in ckpt.tensors:
        name = part.rename(t.name)
        if name is None:
            continue
        if t.dtype is None or not dtype_info(t.dtype).casts_exactly_to("F32"):
            raise CheckpointError.at(
                t.file, f"dtype {t.source_dtype} cannot become F32 exactly ({TITLE} packs are F32)", tensor=t.name
            )
        tensors.append(ManifestTensor(name, t.file, t.name, t.dtype, "F32", t.shape))
    source_dtypes = sorted({t.source_dtype for t in tensors})
    source = None
    if ckpt.source_repo is not None and ckpt.source_revision is not None:
        source = (ckpt.source_repo, ckpt.source_revision)
    metadata = _metadata(part.part, part.folder, ckpt.config.doc, source_dtypes, source)
    extras = {name: ckpt.model_dir / file for name, file in part.json_files.items()}
    return Manifest(tensors, metadata, extras)


def _metadata(
    part: str,
    folder: str,
    config: Mapping[str, Any] | None,
    source_dtypes: Sequence[str],
    source: tuple[str, str] | None,
) -> dict[str, str]:
    metadata = {
        "format": "burnpack",
        "producer": "heartmula-burn",
        "version": package_version(),
        "model": MODEL,
        "part": part,
        "source_folder": folder,
        "source_dtype": ",".join(source_dtypes),
        "dtype": "F32",
    }
    if config is not None:
        metadata["config"] = json.dumps(config, sort_keys=True, separators=(",", ":"))
    if source is not None:
        metadata["source_repo"], metadata["source_revision"] = source
    return metadata


def pack_folder(
    plan: FolderPlan,
    *,
    force: bool = False,
    progress_for: Callable[[Job], ProgressFn | None] | None = None,
    copy_extras: bool = True,
    stage_packs: StagePacks | None = None,
    burn_version: str | None = None,
) -> Conversion:
    """Writes the plan's packs and JSON files and puts them in place together. The silence
    latent goes through a hidden staged safetensors file in the output folder, gone afterwards.
    `stage_packs` writes the plan's jobs instead (a Hub stream's); the silence pack is still
    written here, from the file fetched. `burn_version`: the reader the packs target (default
    the oldest that reads them)."""
    created = make_folders([plan.folder])
    try:
        staged = _core.StagedFile(plan.folder / ".silence_latent.safetensors")
    except BaseException:
        _remove_empty(created)
        raise
    try:
        from safetensors.numpy import save_file

        save_file({SILENCE_TENSOR: plan.silence}, str(staged.temp_path))
        tensor = ManifestTensor(SILENCE_TENSOR, staged.temp_path, SILENCE_TENSOR, "F32", "F32", plan.silence.shape)
        silence = Job(Manifest([tensor], plan.silence_metadata), plan.folder / SILENCE_PACK, "f32")
        stage = None
        if stage_packs is not None:
            streamed = stage_packs

            def stage(
                jobs: Sequence[Job], burn_version: str, force: bool
            ) -> list[tuple[_core.WriteSummary, _core.StagedFile]]:
                *streamed_jobs, last = jobs
                written = list(streamed(streamed_jobs, burn_version, force))
                items = last.manifest.core_items()
                return [
                    *written,
                    _core.pack(items, last.manifest.metadata, last.output, overwrite=force, burn_version=burn_version),
                ]

        return pack_manifests(
            [*plan.jobs, silence],
            force=force,
            burn_version=burn_version,
            progress_for=progress_for,
            copy_extras=copy_extras,
            notes=plan.notes,
            stage_packs=stage,
        )
    except BaseException:
        _remove_empty(created)
        raise
    finally:
        staged.discard()


def _remove_empty(created: Sequence[Path]) -> None:
    """The folders this run made go again on a failure, if nothing else was put there."""
    for folder in reversed(created):
        with contextlib.suppress(OSError):
            folder.rmdir()


def pack_acestep(
    root: str | Path,
    output: str | Path | None = None,
    *,
    model: str = "acestep-turbo",
    planner: str | None = None,
    force: bool = False,
    burn_version: str | None = None,
    copy_extras: bool = True,
) -> Conversion:
    """ACE-Step 1.5's runtime folder, written to `output` (default the current folder) from
    `root` laid out as `download --model` lays it out: `model` "acestep-turbo" (with `planner`
    "0.6B", the default, "1.7B", "4B" or "all") or "acestep-sft" (the 4B planner). Every upstream
    file is checked against its config first; the folder appears whole or not at all. Raises
    `CheckpointError` naming the file and tensor, and `ValueError` for an unknown model or a
    planner the model is not written with, before anything is written."""
    if model not in VARIANTS:
        raise ValueError(f"unknown model {model!r} (choose from {', '.join(VARIANTS)})")
    plan = plan_folder(local_folders(root), output, model=model, planner=planner)
    return pack_folder(plan, force=force, burn_version=burn_version, copy_extras=copy_extras)


def verify_part(pack_path: Path, against: Path, progress: ProgressFn | None = None) -> list[Problem]:
    """Problems of an ACE-Step pack against the CKPT_ROOT it was made from: the part its metadata
    names is planned again from `against` and compared tensor by tensor (bit for bit after widening)."""
    with open_pack(pack_path) as pack:
        metadata = dict(pack.metadata)
        part_name, folder = metadata.get("part", ""), metadata.get("source_folder", "")
        if part_name == "silence":
            config = config_of_pack(metadata, pack_path)
            channels = _latent_channels(config) if config is not None else 64
            latent = read_silence_latent(resolve(local_folders(against), SILENCE_SOURCE), channels)
            return _silence_problems(pack, runtime_layout(latent))
    known = {(p.part, p.folder): p for v in VARIANTS.values() for p in parts(v, tuple(v.planners))}
    part = known.get((part_name, folder))
    if part is None:
        raise CheckpointError.at(
            pack_path, f"an {TITLE} pack of no part this tool writes ({part_name!r} from {folder!r})"
        )
    model_dir = resolve(local_folders(against), folder)
    manifest = _manifest(part, _load(model_dir, part))
    return list(_core.verify_against(pack_path, manifest.core_items(), progress=progress))


def _silence_problems(pack: Pack, expected: np.ndarray[Any, Any]) -> list[Problem]:
    if SILENCE_TENSOR not in pack:
        return [_Problem(None, f"has no tensor '{SILENCE_TENSOR}'")]
    found = pack.numpy(SILENCE_TENSOR)
    if found.dtype != np.float32 or found.shape != expected.shape:
        return [
            _Problem(SILENCE_TENSOR, f"is {found.dtype} {list(found.shape)}, expected float32 {list(expected.shape)}")
        ]
    if found.tobytes() != expected.tobytes():
        return [_Problem(SILENCE_TENSOR, "values differ from silence_latent.pt's")]
    return []


@dataclass(frozen=True)
class _Problem:
    tensor: str | None
    message: str
