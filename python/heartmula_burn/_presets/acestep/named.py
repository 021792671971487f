"""ACE-Step 1.5 as a model packed by name: what the CLI, the Hub layer, verify and publish-layout
ask of it (`NamedModel`), answered from this folder's tables and functions."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from ..named import NamedModel, OneOf, Problem
from . import (
    HUB_ROLES,
    MODEL,
    PLANNER_CHOICES,
    REPOSITORIES,
    TITLE,
    VARIANTS,
    chosen_planners,
    default_repository,
    hub_files,
    json_files_of,
)

if TYPE_CHECKING:
    from ..._checkpoint import RemoteHeaders
    from ..._hub.repos import RepoSpec
    from ..._packing import Conversion, Job, ProgressFn, StagePacks
    from .folder import FolderPlan


class AceStep(NamedModel):
    model = MODEL
    title = TITLE
    variants = MappingProxyType({name: v.note for name, v in VARIANTS.items()})
    hub_roles = HUB_ROLES
    repositories = REPOSITORIES
    dtype_note = f"{TITLE} packs (pack --model) are F32 only: the runtime's modules never cast what they load"
    publish_note = (
        f"With one pack of an {TITLE} folder given, every pack of that folder and the JSON files the runtime "
        "reads beside them are included, and the card cites each upstream repository and commit the packs record"
    )
    card_runtime = (
        "The JSON files are upstream's configs and tokenizers under the runtime's names; maolan-generate "
        "loads this folder as it is (`--model acestep-turbo --model-dir DIR`, or `acestep-sft` for `sft-` files)."
    )
    card_tag = "acestep"
    synthetic_name = "acestep"
    synthetic_note = (
        f"{TITLE}'s folders as `download --model` lays them out, with upstream's tensor names, in BF16 as "
        "upstream (about 24 GB with --full: both DiTs and every planner)"
    )

    def add_options(self, group: argparse._ArgumentGroup, one_of: OneOf) -> None:
        group.add_argument(
            "--planner",
            **one_of(PLANNER_CHOICES, lambda text: text.lower() if text.lower() == "all" else text.upper()),
            default=None,
            help="with --model acestep-turbo: the 5 Hz LM planner(s) (default 0.6B, the runtime's default; 1.7B "
            "and 4B go under the runtime's -1.7b / -4b names; all: the three). acestep-sft has the 4B planner",
        )

    def misplaced_option(self, options: Mapping[str, Any]) -> str | None:
        if options.get("planner") is not None and options.get("model") not in VARIANTS:
            return "--planner goes with --model acestep-turbo"
        return None

    def hub_specs(
        self,
        variant: str,
        options: Mapping[str, Any],
        repos: Mapping[str, str | None],
        revisions: Mapping[str, str | None],
    ) -> list[RepoSpec]:
        from ..._hub.repos import RepoSpec

        chosen = VARIANTS[variant]
        wanted = hub_files(chosen, chosen_planners(chosen, options.get("planner")))
        specs = []
        for role, folder in HUB_ROLES.items():
            if folder not in wanted:
                continue
            patterns, required = wanted[folder]
            repo = repos.get(role) or REPOSITORIES[folder]
            specs.append(RepoSpec(role, repo, revisions.get(role), folder, tuple(patterns), tuple(required)))
        return specs

    def local_folders(self, root: str | Path) -> dict[str, Path]:
        from .folder import local_folders

        return local_folders(root)

    def plan(
        self,
        folders: Mapping[str, Path],
        output: str | Path | None,
        variant: str,
        options: Mapping[str, Any],
        remote: RemoteHeaders | None = None,
    ) -> FolderPlan:
        from .folder import plan_folder

        return plan_folder(folders, output, model=variant, planner=options.get("planner"), remote=remote)

    def pack(
        self,
        plan: Any,
        *,
        force: bool,
        progress_for: Callable[[Job], ProgressFn | None] | None,
        copy_extras: bool,
        stage_packs: StagePacks | None,
        burn_version: str | None,
    ) -> Conversion:
        from .folder import pack_folder

        return pack_folder(
            plan,
            force=force,
            progress_for=progress_for,
            copy_extras=copy_extras,
            stage_packs=stage_packs,
            burn_version=burn_version,
        )

    def write_synthetic(self, root: Path, *, full: bool, seed: int) -> Path:
        from .synthetic import write_checkpoint

        return write_checkpoint(root, full=full, seed=seed)

    def verify(self, pack_path: Path, against: Path, progress: ProgressFn | None) -> list[Problem]:
        from .folder import verify_part

        return verify_part(pack_path, against, progress)

    def json_files_of(self, pack_name: str) -> tuple[str, ...]:
        return json_files_of(pack_name)

    def default_repository(self, metadata: Mapping[str, str]) -> str | None:
        return default_repository(metadata)
