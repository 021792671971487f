"""Packing manifests and checkpoint folders: the Rust core writes each pack to a temporary file and
flushes it; the runtime files are staged beside them; then everything is put in place together.
A failure anywhere (the second pack, a full disk, Ctrl-C, SIGTERM) leaves the output folder as it
was: no half folder, no partial file."""

from __future__ import annotations

import contextlib
import filecmp
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from . import _core
from ._atomic import check_destinations, commit_all, stage_copy
from ._checkpoint import Checkpoint, load_checkpoints
from ._errors import OutputError
from ._manifest import DEFAULT_Q_BLOCK, DTYPE_CHOICES, Manifest, build_manifest, preset_of, quantized_dtype
from ._packfile import dtype_info
from ._presets import PRESETS, preset_named
from ._runtime_files import extra_targets, runtime_notes

ProgressFn = Callable[[int, int], None]
# Writes every job's pack to a staged file (for `burn_version`, replacing outputs with `force`),
# in the jobs' order: what `pack_manifests` does itself unless given one (streaming from the Hub).
StagePacks = Callable[[Sequence["Job"], str, bool], Iterable[tuple[_core.WriteSummary, _core.StagedFile]]]
# Burn releases whose reader a pack can target (the core writes each one's layout).
BURN_VERSIONS = ("0.21", "0.22", "0.20", "0.19")
# What a pack targets unless told: the oldest reader that loads it (quantized descriptors are 0.22's).
DEFAULT_BURN_VERSION = "0.21"
QUANTIZED_BURN_VERSION = "0.22"
# The file a manifest of no known model, naming no source_model, is packed to when no output is named.
DEFAULT_PACK_NAME = "model.bpk"
NARROW_NOTE = (
    "Burn 0.22 loads them, but maolan-generate 0.0.19's forward needs F32 activations and stops on a BF16 LM "
    "(`cat: dtype mismatch`): such a pack runs in runtimes that cast on load; the F32 and q8 packs run there"
)


@dataclass(frozen=True)
class PackReport:
    """What one pack holds and how writing it went."""

    output: str
    model: str  # the preset's name, or "" for --any-model packs
    dtype: str  # the pack's dtypes, comma-separated
    tensors: int
    file_size: int
    data_bytes: int
    kernel_copied: int  # bytes copied inside the kernel (copy_file_range)
    buffer_copied: int  # unchanged bytes written from the mapping
    converted: int  # output bytes produced by dtype conversion
    plan_seconds: float
    data_seconds: float
    sync_seconds: float
    seconds: float


@dataclass(frozen=True)
class Conversion:
    """Everything one run put in place: the packs, the runtime files copied, and notes for people."""

    packs: list[PackReport]
    extras: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # `pack --hub --stream`: bytes fetched, retries, seconds, the slowest shard (see `_hub.stream`).
    streamed: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Job:
    """One pack to write: its manifest, output path, and the --dtype it was built for."""

    manifest: Manifest
    output: Path
    dtype: str = "f32"
    # The output was given as a folder (`-o DIR/`): created, with missing parents, if it is missing.
    make_folder: bool = False


def pack_manifests(
    jobs: Sequence[Job],
    *,
    force: bool = False,
    burn_version: str | None = None,
    progress: ProgressFn | None = None,
    progress_for: Callable[[Job], ProgressFn | None] | None = None,
    copy_extras: bool = True,
    notes: Sequence[str] = (),
    stage_packs: StagePacks | None = None,
) -> Conversion:
    """Writes every job's pack and copies the runtime files beside them, then puts them all in
    place together. `progress(done, total)` follows each pack in turn (or `progress_for(job)` gives
    each pack its own callback); `stage_packs` writes the packs instead (all at once)."""
    outputs = [job.output for job in jobs]
    if len({os.path.abspath(p) for p in outputs}) != len(outputs):
        raise OutputError.at(outputs[0], "two packs would be written to the same file")
    extras: dict[Path, Path] = {}
    all_notes = list(notes)
    if copy_extras:
        for job in jobs:
            model = job.manifest.metadata.get("model")
            for source, dest in extra_targets(job.manifest.extras, job.output.parent, force, model):
                earlier = extras.setdefault(dest, source)
                if earlier != source and not filecmp.cmp(earlier, source, shallow=False):
                    # Two models ship a file of one name (tokenizer.json): neither is dropped silently.
                    raise OutputError.at(
                        dest, f"two packs bring different files under this name: {earlier} and {source}"
                    )
            all_notes += [n for n in runtime_notes(job.manifest.extras) if n not in all_notes]
    # Everything this run will write, checked before a byte is: the core checks each pack again
    # as it starts it, and the commit checks them all again at the end.
    check_destinations([*outputs, *extras], force=force)
    burn_version = target_burn_version(jobs, burn_version)
    staged: list[_core.StagedFile] = []
    reports = []
    created = make_folders(job.output.parent for job in jobs if job.make_folder)
    stage = stage_packs or _stage_in_turn(progress_for or (lambda _job: progress))
    try:
        for job, (summary, pack) in zip(jobs, stage(jobs, burn_version, force)):
            staged.append(pack)
            seconds = summary.plan_seconds + summary.data_seconds + summary.sync_seconds
            reports.append(_report(job, summary, seconds))
        staged += [stage_copy(source, dest, overwrite=force) for dest, source in extras.items()]
        commit_all(staged, overwrite=force)
    except BaseException:
        for f in staged:
            f.discard()
        for folder in reversed(created):  # the run leaves no trace: folders it made go too, if empty
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    return Conversion(reports, [str(dest) for dest in extras], all_notes)


def _stage_in_turn(progress_for: Callable[[Job], ProgressFn | None]) -> StagePacks:
    """The core writes each pack in turn, each read from its shards on disk."""

    def stage(
        jobs: Sequence[Job], burn_version: str, force: bool
    ) -> Iterator[tuple[_core.WriteSummary, _core.StagedFile]]:
        for job in jobs:
            yield _core.pack(
                job.manifest.core_items(),
                job.manifest.metadata,
                job.output,
                overwrite=force,
                burn_version=burn_version,
                progress=progress_for(job),
            )

    return stage


def target_burn_version(jobs: Sequence[Job], asked: str | None) -> str:
    """The Burn release the packs are written for: `asked`, or the oldest that reads them all.
    A ValueError for a release too old for a quantized pack."""
    quantized = next((job.output for job in jobs if job.manifest.quantized), None)
    if asked is None:
        return QUANTIZED_BURN_VERSION if quantized is not None else DEFAULT_BURN_VERSION
    check_burn_version(asked)
    if quantized is not None and asked != QUANTIZED_BURN_VERSION:
        raise ValueError(
            f"{quantized}: quantized tensors are written for Burn {QUANTIZED_BURN_VERSION} "
            f"(Burn {asked} spells the scheme differently): leave out burn_version, or ask for {QUANTIZED_BURN_VERSION}"
        )
    return asked


def make_folders(folders: Iterable[Path]) -> list[Path]:
    """Creates each missing output folder and its missing parents; returns those it created, parents first."""
    created: list[Path] = []
    for folder in folders:
        missing = [p for p in (folder, *folder.parents) if not p.exists() and not p.is_symlink()]
        for p in reversed(missing):
            try:
                p.mkdir()
            except FileExistsError:
                continue
            except OSError as e:
                raise OutputError.at(p, f"cannot create the output folder: {e.strerror}") from None
            created.append(p)
    return created


def _report(job: Job, summary: _core.WriteSummary, seconds: float) -> PackReport:
    return PackReport(
        output=str(job.output),
        model=job.manifest.metadata.get("model", ""),
        dtype=job.manifest.metadata.get("dtype", ""),
        tensors=summary.tensors,
        file_size=summary.file_size,
        data_bytes=summary.data_bytes,
        kernel_copied=summary.kernel_copied,
        buffer_copied=summary.buffer_copied,
        converted=summary.converted,
        plan_seconds=summary.plan_seconds,
        data_seconds=summary.data_seconds,
        sync_seconds=summary.sync_seconds,
        seconds=seconds,
    )


def pack_manifest(
    manifest: Manifest | str | Path,
    output: str | Path,
    *,
    force: bool = False,
    burn_version: str | None = None,
    progress: ProgressFn | None = None,
    copy_extras: bool = True,
) -> Conversion:
    """Writes the pack a manifest describes (a `Manifest`, or the path of a manifest file) to
    `output` (a file, or a folder ending in '/': the pack is then named after its model), with
    its runtime files beside it. See `pack_checkpoint` for the options."""
    if burn_version is not None:
        check_burn_version(burn_version)
    if not isinstance(manifest, Manifest):
        manifest = Manifest.load(manifest)
    return pack_manifests(
        [manifest_job(manifest, output)],
        force=force,
        burn_version=burn_version,
        progress=progress,
        copy_extras=copy_extras,
    )


def manifest_job(manifest: Manifest, output: str | Path | None) -> Job:
    """The job that packs `manifest` to `output` (a file, or a folder: the pack is then named
    after its model)."""
    folder, name = output_folder(output)
    preset = preset_named(manifest.metadata.get("model", ""))
    source = manifest.metadata.get("source_model", "")
    plain = source and os.path.basename(source) == source and source not in (".", "..") and "\0" not in source
    default = preset.pack_name if preset else (f"{source}.bpk" if plain else DEFAULT_PACK_NAME)
    return Job(manifest, folder / (name or default), make_folder=name is None and output is not None)


def plan_checkpoint(
    root: str | Path,
    output: str | Path | None = None,
    *,
    dtype: str = "f32",
    any_model: bool = False,
    subdir: str | None = None,
    q_block: int = DEFAULT_Q_BLOCK,
) -> tuple[list[Job], list[str]]:
    """The packs one run makes of a CKPT_ROOT, and notes for the user. Every model the root holds
    gets its pack (heartmula.bpk, heartcodec.bpk): `output` names the first pack (or, an existing
    folder or a path ending in '/', the folder they go to); the others go beside it under their own
    names. `dtype` applies to models that allow it; a model packed in one dtype only (HeartCodec: F32)
    keeps that one, with a note. `q_block`: the block of a quantized `dtype` ("q8")."""
    return plan_checkpoints(load_checkpoints(root, subdir), output, dtype=dtype, any_model=any_model, q_block=q_block)


def plan_checkpoints(
    checkpoints: Sequence[Checkpoint],
    output: str | Path | None = None,
    *,
    dtype: str = "f32",
    any_model: bool = False,
    q_block: int = DEFAULT_Q_BLOCK,
) -> tuple[list[Job], list[str]]:
    """`plan_checkpoint` for models already loaded (from one CKPT_ROOT, or from the Hub's cache)."""
    folder, first_name = output_folder(output)
    jobs, notes = [], []
    if first_name is not None and len(checkpoints) > 1 and not first_name.endswith(".bpk"):
        # `-o runtime` (no '/', not yet a folder) names the first pack's file: said, in case a folder was meant.
        notes.append(
            f"{folder / first_name}: written as the first pack's file (the others beside it); "
            f"for a runtime folder end the path with '/': -o {folder / first_name}/"
        )
    for i, ckpt in enumerate(checkpoints):
        # The preset that checks it (none with --any-model), and the one it is named after: also,
        # for --any-model packs, that of the folder a known model ships in.
        checked = None if any_model or ckpt.config is None else preset_of(ckpt)[0]
        named = checked or next((p for p in PRESETS if ckpt.model_dir.name in p.folder_names), None)
        model_dtype, kept = dtype, ""
        if checked is not None and len(checkpoints) > 1 and dtype not in checked.dtypes:
            # A model packed in one dtype only keeps it when packed beside others, with a note.
            model_dtype = checked.dtypes[0]
            kept = f"packed in {model_dtype.upper()}, not {dtype.upper()}: {checked.dtype_reason}"
        manifest = build_manifest(ckpt, dtype=model_dtype, any_model=any_model, q_block=q_block)
        # A model no preset knows is named after its source: two of them never share a name.
        own_name = f"{Path(os.path.abspath(ckpt.model_dir)).name}.bpk"
        name = first_name if i == 0 and first_name else (named.pack_name if named else own_name)
        job = Job(manifest, folder / name, model_dtype, make_folder=first_name is None)
        jobs.append(job)
        if kept:
            notes.append(f"{job.output}: {kept}")
        # Floats F32 does not cast to exactly (the core's table): what Burn CPU runtimes cannot run.
        narrow = {t.dtype for t in manifest.tensors if _narrower_than_f32(t.dtype)}
        if narrow:  # whatever the model: no Burn CPU runtime can load it
            notes.append(f"{job.output}: holds {'/'.join(sorted(narrow))} tensors. {NARROW_NOTE}")
        notes += [f"{job.output}: {note}" for note in manifest.notes]
    return jobs, notes


def output_folder(output: str | Path | None) -> tuple[Path, str | None]:
    """(the folder packs go to, the first pack's file name if `output` names one)."""
    if output is None:
        return Path("."), None
    text = str(output)
    path = Path(output)
    if text.endswith(os.sep) or path.is_dir():
        return path, None
    return path.parent, path.name


def pack_checkpoint(
    root: str | Path,
    output: str | Path | None = None,
    *,
    dtype: str = "f32",
    any_model: bool = False,
    subdir: str | None = None,
    force: bool = False,
    burn_version: str | None = None,
    progress: ProgressFn | None = None,
    copy_extras: bool = True,
    q_block: int = DEFAULT_Q_BLOCK,
) -> Conversion:
    """One step from a checkpoint folder to packs: scan, check, build the manifests, pack.

    - `output`: the first pack's file, or a folder (an existing one, or a path ending in '/',
      created if missing) for all of them; default the current folder (see `plan_checkpoint`).
    - `dtype`: "f32" (default), "bf16", "f16", "source" (any case), for models that allow it, or
      "q8": the Linear weights quantized to Burn's Q8S in blocks of `q_block` (default 32) values
      along their last dimension, one F32 scale per block, everything else F32 (HeartMuLa).
    - `any_model`: no preset's checks; `subdir`: only this model folder of `root`.
    - `force`: replace existing outputs; `burn_version`: the reader targeted, "0.21", "0.22",
      "0.20" or "0.19"; default the oldest that reads the pack ("0.22" for q8, else "0.21");
      `progress(done, total)`: called as bytes are written;
      `copy_extras`: copy tokenizer.json and gen_config.json beside the packs (default True).

    Raises `CheckpointError`/`SourceError` for a bad checkpoint, `OutputError` for an output that
    cannot be written as asked, `ValueError` for an argument out of range (before any file is
    touched), and the builtin `OSError` subclasses for failures of the system."""
    dtype = checked_options(dtype, burn_version, q_block)
    jobs, notes = plan_checkpoint(root, output, dtype=dtype, any_model=any_model, subdir=subdir, q_block=q_block)
    return pack_manifests(
        jobs, force=force, burn_version=burn_version, progress=progress, copy_extras=copy_extras, notes=notes
    )


def checked_options(dtype: str, burn_version: str | None, q_block: int = DEFAULT_Q_BLOCK) -> str:
    """The pack functions' dtype (lower-cased) once it, the block and the Burn version are known
    good: a ValueError before any file is touched otherwise."""
    if burn_version is not None:
        check_burn_version(burn_version)
    if dtype.lower() not in DTYPE_CHOICES:
        raise ValueError(f"unknown dtype {dtype!r} (choose from {', '.join(DTYPE_CHOICES)})")
    if quantized_dtype(dtype.lower(), q_block) is not None and burn_version not in (None, QUANTIZED_BURN_VERSION):
        raise ValueError(
            f"dtype {dtype!r} writes quantized tensors, which Burn {QUANTIZED_BURN_VERSION} and later read: "
            f"burn_version {burn_version!r} cannot hold them"
        )
    return dtype.lower()


def check_burn_version(version: str) -> None:
    if version not in BURN_VERSIONS:
        raise ValueError(f"unknown burn_version {version!r} (choose from {', '.join(BURN_VERSIONS)})")


def _narrower_than_f32(dtype: str) -> bool:
    info = dtype_info(dtype)
    return info.is_float and not dtype_info("F32").casts_exactly_to(dtype)
