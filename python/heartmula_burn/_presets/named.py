"""Models packed by name (`pack --model NAME`): a runtime folder of several packs and JSON files
made from several upstream repositories (ACE-Step 1.5). Each registers one `NamedModel` in
`_presets.NAMED_MODELS`; the CLI, the Hub layer, verify and publish-layout ask it, and name no model."""

from __future__ import annotations

import argparse
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

if TYPE_CHECKING:
    from .._checkpoint import RemoteHeaders
    from .._hub.repos import RepoSpec
    from .._packing import Conversion, Job, ProgressFn, StagePacks


# The CLI's (choices, normalise) -> add_argument keywords for a value among choices.
OneOf = Callable[..., dict[str, Any]]


class Problem(Protocol):
    """What `verify` reports: the core's `Problem`, or one a model finds."""

    @property
    def tensor(self) -> str | None: ...
    @property
    def message(self) -> str: ...


class FolderPlan(Protocol):
    """A model's plan of its runtime folder: where it goes, and what `pack` writes there."""

    @property
    def folder(self) -> Path: ...


class NamedModel(ABC):
    """One model packed by name, and everything the shared modules ask of it."""

    model: ClassVar[str]  # the packs' `model` metadata
    title: ClassVar[str]  # for people: "ACE-Step 1.5"
    variants: ClassVar[Mapping[str, str]]  # `--model NAME` -> what it writes (for --help)
    hub_roles: ClassVar[Mapping[str, str]]  # `--ROLE-repo` -> the CKPT_ROOT folder it fills
    repositories: ClassVar[Mapping[str, str]]  # a CKPT_ROOT folder -> its repository by default
    dtype_note: ClassVar[str]  # --dtype's help on its packs (and why pack --model refuses --dtype)
    publish_note: ClassVar[str]  # `publish-layout --help`: what it makes of one of its packs
    card_runtime: ClassVar[str]  # the model card: how the runtime loads the folder
    card_tag: ClassVar[str]  # a tag of the model card
    synthetic_name: ClassVar[str]  # `synthetic --model NAME`
    synthetic_note: ClassVar[str]  # what that writes

    def add_options(self, group: argparse._ArgumentGroup, one_of: OneOf) -> None:
        """Adds the options only this model reads (beside --model and its Hub options); `one_of`
        gives add_argument's keywords for a value among choices, as the CLI takes them."""

    def misplaced_option(self, options: Mapping[str, Any]) -> str | None:
        """One of its options given without --model of this model: the usage error to show."""
        return None

    @abstractmethod
    def hub_specs(
        self,
        variant: str,
        options: Mapping[str, Any],
        repos: Mapping[str, str | None],
        revisions: Mapping[str, str | None],
    ) -> list[RepoSpec]:
        """The repositories `--model variant` is made from, with only the files it reads; `repos`
        and `revisions` (by role) replace the defaults. ValueError for options that do not fit."""

    @abstractmethod
    def local_folders(self, root: str | Path) -> dict[str, Path]:
        """The upstream folders of a CKPT_ROOT laid out as `download --model` lays it out."""

    @abstractmethod
    def plan(
        self,
        folders: Mapping[str, Path],
        output: str | Path | None,
        variant: str,
        options: Mapping[str, Any],
        remote: RemoteHeaders | None = None,
    ) -> FolderPlan:
        """The runtime folder of `--model variant`, checked against upstream's configs before a
        byte is written. ValueError for options that do not fit."""

    @abstractmethod
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
        """Writes a plan's packs and JSON files, all in place together or none."""

    @abstractmethod
    def write_synthetic(self, root: Path, *, full: bool, seed: int) -> Path:
        """A synthetic CKPT_ROOT in upstream's layout, names and dtypes."""

    @abstractmethod
    def verify(self, pack_path: Path, against: Path, progress: ProgressFn | None) -> list[Problem]:
        """Problems of one of its packs against the CKPT_ROOT it was made from."""

    @abstractmethod
    def json_files_of(self, pack_name: str) -> tuple[str, ...]:
        """The runtime folder's JSON files that go with a pack of that name."""

    @abstractmethod
    def default_repository(self, metadata: Mapping[str, str]) -> str | None:
        """The upstream repository a pack comes from by default."""

    def owns(self, metadata: Mapping[str, str]) -> bool:
        """Whether a pack is one of this model's."""
        return metadata.get("model") == self.model
