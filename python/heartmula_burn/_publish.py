"""A folder ready to push as a model repository: the packs (heartmula.bpk, heartcodec.bpk), the
runtime files, a .gitattributes routing large files through Git LFS, and a README model card whose
every figure is read from the packs themselves."""

from __future__ import annotations

import hashlib
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Callable

from ._atomic import copy_file, staged_folder, write_new
from ._errors import OutputError, PackFileError, SourceError
from ._fields import Fields
from ._packfile import Pack, open_pack
from ._presets import PRESETS, Preset, config_of_pack, named_model_of_pack, preset_for_pack, runtime_file_option
from ._runtime_files import check_runtime_file, runtime_notes
from ._synthetic import SYNTHETIC_KEY
from ._text import shown

# Burn releases the compatibility checks (rust/burn-compat) run against.
VERIFIED_BURN_VERSIONS = ("0.21.0", "0.22.1")
LFS_THRESHOLD = 10 * 1000 * 1000  # bytes; larger files go through Git LFS
# Files publish_layout writes itself, beside the packs.
OWN_FILES = (".gitattributes", "README.md")
REPO_ID = re.compile(r"[\w.-]{1,96}(/[\w.-]{1,96})?")
COMMIT = re.compile(r"[0-9a-f]{40}")


def sha256_of(path: Path, progress: Callable[[int], object] | None = None) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 << 20):
            digest.update(chunk)
            if progress:
                progress(len(chunk))
    return digest.hexdigest()


def _cell(value: object) -> str:
    """A value for a markdown table cell: escaped for people, pipes and backticks neutralised."""
    return shown(value).replace("|", "\\|").replace("`", "'")


class _Published:
    """A pack to publish: its file name in the repository and what it holds."""

    def __init__(self, path: Path, pack: Pack, preset: Preset | None) -> None:
        self.path = path
        self.pack = pack
        self.preset = preset
        self.file_name = preset.pack_name if preset else path.name
        meta = pack.metadata
        repo, revision = meta.get("source_repo", ""), meta.get("source_revision", "")
        # Shown in the card's links and YAML: only what a Hub repository id and a commit can be.
        valid = REPO_ID.fullmatch(repo) and COMMIT.fullmatch(revision)
        self.source = (repo, revision) if valid else None
        config = config_of_pack(meta, path)
        # Random weights in upstream's shapes: the card must not present them as the upstream model.
        self.synthetic = config is not None and SYNTHETIC_KEY in config
        # Where it came from: that source, else its preset's upstream repository (commit unknown).
        self.named = named_model_of_pack(meta)
        base = (
            preset.base_model
            if preset is not None
            else self.named.default_repository(meta)
            if self.named is not None
            else None
        )
        self.origin: tuple[str, str | None] | None = self.source or (
            (base, None) if base is not None and not self.synthetic else None
        )

    def section(self, size: int) -> str:
        pack, meta = self.pack, self.pack.metadata
        shapes = {t.name: t.shape for t in pack.tensors}
        dtypes = ", ".join(sorted({t.dtype for t in pack.tensors}))
        params = sum(math.prod(t.shape) for t in pack.tensors)
        title = (
            self.preset.title
            if self.preset
            else f"{self.named.title} {self.pack.metadata.get('part', '')}".strip()
            if self.named is not None
            else "model"
        )
        lines = [
            f"## `{self.file_name}` ({title})",
            "",
            (
                f"- Tensors: {len(pack)} ({params:,} parameters), dtype {dtypes}; "
                f"source dtype {_cell(meta.get('source_dtype', 'unknown'))}"
            ),
            f"- Burn pack format version 1, {pack.layout} layout, {size:,} bytes",
            (
                f"- Verified against Burn {' and '.join(VERIFIED_BURN_VERSIONS)} (Burn reads every tensor bit for "
                "bit and writes identical bytes from the same tensors)"
            ),
        ]
        if self.preset is not None:
            config = config_of_pack(meta, self.path) or Fields({}, self.path, "config")
            lines += ["", "| | |", "| --- | --- |"]
            lines += [f"| {label} | {_cell(value)} |" for label, value in self.preset.describe(config, shapes)]
            lines += ["", "### Loading from Rust", "", self.preset.card_loading]
        lines += ["", "### Pack metadata", "", "| key | value |", "| --- | --- |"]
        lines += [f"| `{_cell(k)}` | `{_cell(v)}` |" for k, v in meta.items()]
        return "\n".join(lines)


def model_card(packs: Sequence[_Published], files: dict[str, tuple[int, str]]) -> str:
    # Where each pack came from: the Hub repository and commit it records, else its preset's upstream.
    origins = [p.origin for p in packs if p.origin is not None]
    bases = list(dict.fromkeys(repo for repo, _ in origins))  # in the packs' order, once each
    revisions = {repo: revision for repo, revision in origins if revision}
    version = next((p.pack.metadata.get("version", "") for p in packs), "")
    title = bases[0].split("/")[-1] if bases else "Model"
    synthetic = [p for p in packs if p.synthetic]
    warning = ""
    if synthetic:
        shaped = next((p.preset.base_model for p in synthetic if p.preset is not None), "")
        title = f"Synthetic {shaped.split('/')[-1] or 'model'}-shaped weights" if not bases else title
        names = ", ".join(f"`{p.file_name}`" for p in synthetic)
        warning = (
            f"**Not a trained model.** {names}: random weights at realistic scales, written by "
            "`heartmula-burn synthetic` for tests and benchmarks in the upstream release's shapes.\n\n"
        )
    rows = "\n".join(f"| `{_cell(name)}` | {size:,} | `{digest}` |" for name, (size, digest) in files.items())
    base_yaml = "".join(f"\n- {_cell(b)}" for b in bases)
    sources = ", ".join(
        f"[{_cell(b)}](https://huggingface.co/{_cell(b)})"
        + (
            f" at commit [`{revisions[b][:12]}`](https://huggingface.co/{_cell(b)}/tree/{revisions[b]})"
            if b in revisions
            else ""
        )
        for b in bases
    ) or ("Synthetic weights" if synthetic else "A safetensors checkpoint")
    sections = "\n\n".join(p.section(files[p.file_name][0]) for p in packs)
    named = next((p.named for p in packs if p.named is not None), None)
    lead = next((p.preset for p in packs if p.preset is not None and p.preset.runtime_files), None)
    if named is not None:
        runtime = "\n" + named.card_runtime
        title = named.title if not synthetic else f"Synthetic {named.title}-shaped weights"
    elif lead is not None and all(name in files for name in lead.runtime_files):
        runtime = "\n" + lead.card_runtime
    else:
        runtime = ""
    # One licence the models of every pack share, else each source repository's word.
    licences = {p.preset.licence if p.preset is not None else None for p in packs}
    licence = licences.pop() if len(licences) == 1 else None
    license_yaml, license_line = (
        (licence[0], f"License: {licence[1]}, as upstream.")
        if licence is not None
        else ("other", "License: as each source repository states.")
    )
    tags = "".join(
        f"\n- {tag}"
        for tag in dict.fromkeys(p.named.card_tag if p.named else p.preset.card_tag if p.preset else "" for p in packs)
        if tag
    )
    return f"""---
license: {license_yaml}
base_model:{base_yaml or " []"}
library_name: burn
tags:
- burn
- music-generation{tags}
---

# {title} for Burn

{warning}{sources} converted to Burn packs by heartmula-burn {_cell(version)}. {license_line}
{runtime}

{sections}

## Files

| file | bytes | sha256 |
| --- | --- | --- |
{rows}
"""


def in_lfs(name: str, size: int) -> bool:
    """Whether the .gitattributes `publish_layout` writes routes this file through Git LFS."""
    return name.endswith(".bpk") or size > LFS_THRESHOLD


def gitattributes(files: dict[str, tuple[int, str]]) -> str:
    lines = ["*.bpk filter=lfs diff=lfs merge=lfs -text"]
    lines += [
        f"{name} filter=lfs diff=lfs merge=lfs -text"
        for name, (size, _) in files.items()
        if in_lfs(name, size) and not name.endswith(".bpk")
    ]
    return "\n".join(lines) + "\n"


def commit_message(sources: dict[str, dict[str, str]], version: str) -> tuple[str, str]:
    """The summary and description of the commit that pushes a publish-layout folder: what was
    converted, from which repositories and commits, by which version of this tool."""
    origins = list(dict.fromkeys(f"{s['repo']}@{s['revision'][:12]}" for s in sources.values()))
    summary = f"Burn packs of {', '.join(origins)}" if origins else "Burn packs"
    lines = [f"Converted by heartmula-burn {version}."]
    lines += [f"- {name}: {s['repo']} at commit {s['revision']}" for name, s in sources.items()]
    return summary, "\n".join(lines)


def _link_or_copy(source: Path, dest: Path, final: Path) -> None:
    """`dest`, a new name, for `source`'s bytes: a hard link (same filesystem: instant, no second
    16 GB on disk), else a copy. Nothing is ever written through the link: every other file of the
    folder is written under a name no pack has."""
    try:
        os.link(source, dest)
    except FileExistsError:
        raise OutputError.at(final, "written twice while assembling the folder") from None
    except OSError:
        copy_file(source, dest, final)


def packs_beside(first: Path) -> list[Path]:
    """The packs a runtime loads beside `first` when it is the pack the runtime is built around
    (the one whose model ships the runtime files: heartmula.bpk), found beside it under the other
    models' pack names (heartcodec.bpk); none for any other pack."""
    if first.is_file() and _is_folder_part(first):  # a model packed by name: every pack of its folder
        beside = sorted(p for p in first.parent.glob("*.bpk") if p.is_file() and not p.samefile(first))
        return [p for p in beside if _is_folder_part(p)]
    lead = next((p for p in PRESETS if p.runtime_files and p.pack_name == first.name), None)
    if lead is None:
        return []
    beside = [first.parent / p.pack_name for p in PRESETS if p is not lead]
    return [path for path in beside if path.is_file() and not path.samefile(first)]


def publish_layout(
    out_dir: str | Path,
    packs: Sequence[str | Path],
    *,
    runtime_files: Mapping[str, str | Path] | None = None,
    force: bool = False,
    progress: Callable[[int], object] | None = None,
) -> dict[str, Any]:
    """Assembles OUT_DIR from the packs (each named as its model's runtime expects) and, when a
    pack of a model with runtime files is among them, those files (`runtime_files`: by name,
    default: beside that pack). OUT_DIR appears whole or not at all (built beside it, then renamed)."""
    out_dir = Path(out_dir)
    paths = [Path(p) for p in packs]
    if not paths:
        raise ValueError("publish_layout needs at least one pack")
    opened: list[_Published] = []
    try:
        for path in paths:
            pack = open_pack(path)
            opened.append(_Published(path, pack, preset_for_pack(pack.metadata, {t.name for t in pack.tensors})))
        names = [p.file_name for p in opened]
        if len(set(names)) != len(names):
            raise OutputError.at(
                out_dir, f"two packs would both be named {min(n for n in names if names.count(n) > 1)}"
            )
        # The pack of the model the runtime is built around, which ships its runtime files.
        lead = next(
            ((p.path.parent, p.preset) for p in opened if p.preset is not None and p.preset.runtime_files), None
        )
        lead_files = lead[1].runtime_files if lead is not None else ()
        own = [*OWN_FILES, *lead_files]
        clash = next((p for p in opened if p.file_name in own), None)
        if clash is not None:
            raise OutputError.at(
                clash.path, f"a pack named {clash.file_name} would take the place of the {clash.file_name} of {out_dir}"
            )
        runtime: dict[str, Path] = {}  # each checked before it is copied
        for p in opened:  # the JSON files of a model packed by name, found beside its packs
            named = p.named
            if named is None:
                continue
            for name in named.json_files_of(p.file_name):
                path = p.path.parent / name
                if not os.path.lexists(path):
                    raise SourceError.at(path, f"{name} not found beside {p.path.name}, whose runtime reads it")
                check_runtime_file(name, path, named.model)
                runtime[name] = path
        given = dict(runtime_files or {})
        unread = sorted(set(given) - set(lead_files))
        if unread:
            name = unread[0]
            raise SourceError.at(Path(given[name]), f"given as {name}, but no pack given has a model that reads it")
        if lead is not None:
            folder, model = lead
            for name in model.runtime_files:
                chosen = given.get(name)
                path = Path(chosen) if chosen is not None else folder / name
                if not os.path.lexists(path):
                    raise SourceError.at(path, f"{name} not found (give it with {runtime_file_option(name)})")
                check_runtime_file(name, path, model.name)
                runtime[name] = path
        with staged_folder(out_dir, overwrite=force) as partial:
            for p in opened:
                _link_or_copy(p.path, partial / p.file_name, out_dir / p.file_name)
            for name, path in runtime.items():
                copy_file(path, partial / name, out_dir / name)
            files = {}
            for name in [*names, *runtime]:
                path = partial / name
                files[name] = (path.stat().st_size, sha256_of(path, progress))
            write_new(partial / ".gitattributes", gitattributes(files).encode())
            write_new(partial / "README.md", model_card(opened, files).encode())
    finally:
        for p in opened:
            p.pack.close()
    return {
        "output": str(out_dir),
        "files": {k: {"bytes": s, "sha256": d} for k, (s, d) in files.items()},
        "sources": {p.file_name: {"repo": p.source[0], "revision": p.source[1]} for p in opened if p.source},
        "notes": runtime_notes(runtime),
    }


def _is_folder_part(path: Path) -> bool:
    try:
        with open_pack(path) as pack:
            return named_model_of_pack(pack.metadata) is not None
    except (OSError, PackFileError):
        return False
