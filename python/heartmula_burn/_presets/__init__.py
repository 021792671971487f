"""Presets: what a checkpoint of a known model must hold, checked before a byte is written.

A preset recognises its model from the checkpoint's own config.json, derives every tensor and
shape the config implies, says which dtypes its pack may hold and which runtime files go beside
it, names the releases upstream publishes on the Hub, and describes the model for the model card.
Every preset has this one shape (`Preset`); the known ones are listed in `PRESETS`, and everything
else (finding model folders, the Hub's repositories and options, the card) asks them."""

from __future__ import annotations

import json
import re
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from .._errors import CheckpointError
from .._fields import Fields
from .named import NamedModel

if TYPE_CHECKING:
    from .runner import Runner

Shapes = dict[str, tuple[int, ...]]

# Burn's reader limits (rust/core/src/burnpack.rs: MAX_TENSOR_COUNT, MAX_TENSOR_SIZE): a pack over
# them does not load. A config.json is checked against them before any tensor name is built from it,
# so that a count of a billion layers is one error line, not a list of a billion names.
MAX_TENSOR_COUNT = 100_000
MAX_TENSOR_BYTES = 10 * 1024**3
# No size in a config can exceed the elements of the largest tensor Burn reads (one byte each).
MAX_SIZE = MAX_TENSOR_BYTES


@dataclass(frozen=True)
class Release:
    """A release of a model that upstream publishes as a Hugging Face repository. Its name, the
    repository's own (`HeartMuLa-oss-3B-happy-new-year`), is what `--lm-release` takes."""

    repo: str
    note: str = ""

    @property
    def name(self) -> str:
        return self.repo.rsplit("/", 1)[-1]


class Preset(ABC):
    """One model the converter knows by name."""

    name: ClassVar[str]  # "heartmula": the pack's `model` metadata
    title: ClassVar[str]  # for people: "HeartMuLa"
    pack_name: ClassVar[str]  # the file a runtime looks for: "heartmula.bpk"
    # Where upstream ships it inside CKPT_ROOT (the first: where `download` lays every release out,
    # as heartlib looks for it); a folder of any other name is recognised by its config.json.
    folder_names: ClassVar[tuple[str, ...]]
    runtime_files: ClassVar[tuple[str, ...]] = ()  # copied beside the pack
    runtime_repo: ClassVar[str | None] = None  # the Hugging Face repository the runtime files come from
    # Its Hub options' prefix (--gen-repo, --gen-revision): each model with runtime files names its own.
    runtime_role: ClassVar[str | None] = None
    dtypes: ClassVar[tuple[str, ...]]  # the --dtype values a pack of it may be written in
    dtype_reason: ClassVar[str] = ""  # why others are refused
    sanity_summary: ClassVar[str] = ""  # `sanity --help`: what its forward checks
    dtype_note: ClassVar[str] = ""  # --dtype's help on this model (default: dtype_reason)
    # The tensors `--dtype q8` quantizes (full names); None: the model has no quantized packs.
    quantizable: ClassVar[re.Pattern[str] | None] = None
    signature: ClassVar[frozenset[str]]  # tensors only this model has: a pack that names no model is told by them
    card_loading: ClassVar[str] = ""  # the model card's "Loading from Rust" section (markdown)
    card_runtime: ClassVar[str] = ""  # the model card on its runtime files, when they are published
    card_tag: ClassVar[str] = ""  # a tag of the model card
    licence: ClassVar[tuple[str, str] | None] = None  # upstream's: (the Hub's id, its name)
    hub_role: ClassVar[str]  # its Hub options' prefix: "lm" gives --lm-repo, --lm-release, --lm-revision
    releases: ClassVar[tuple[Release, ...]]  # on the Hub; the first is the default

    @property
    def base_model(self) -> str:
        """The Hugging Face repository of its default release (the model card's `base_model`)."""
        return self.releases[0].repo

    @abstractmethod
    def recognizes(self, config: Fields) -> bool:
        """Whether a config.json describes this model."""

    @abstractmethod
    def expected_tensors(self, config: Fields) -> Shapes:
        """Every tensor of the upstream state dict with its shape, as the config implies (raises
        `CheckpointError` naming the file and key for a config that makes no sense)."""

    @abstractmethod
    def describe(self, config: Fields, shapes: Mapping[str, tuple[int, ...]]) -> list[tuple[str, str]]:
        """(label, value) rows for the model card: the architecture, from the shapes and the config
        (empty where the pack carries none: defaults apply). Shapes are those of a pack this
        preset's check accepted."""

    @abstractmethod
    def runner(self, config: Fields, frames: int) -> Runner:
        """How `sanity` runs this model on fixed inputs (its module, `<model>/sanity.py`, needs torch
        and is imported only here)."""

    def config_from_pack(
        self, metadata: Mapping[str, str], shapes: Mapping[str, tuple[int, ...]], where: Path
    ) -> Fields:
        """The config.json of a pack that carries none (no `config` metadata, no --config, no
        reference), from what the pack does say; by default there is none to be had."""
        raise CheckpointError.at(
            where,
            f"the pack does not say which {self.title} it holds (no 'config' in its metadata); pass --config CONFIG_JSON",
        )

    def check_runtime_file(self, name: str, source: Path) -> None:
        """Refuses a runtime file (one of `runtime_files`) that is not what its name says, before a
        byte of it is copied; a preset with none has nothing to check."""

    synthetic_shards: ClassVar[int | None] = None  # shards of a synthetic checkpoint (None: the caller's)

    @abstractmethod
    def synthetic_config(self, full: bool, layers: int | None = None) -> dict[str, Any]:
        """The config.json of a synthetic checkpoint: the released model's (`full`) or a tiny one
        with every tensor name; `layers` scales the main stack (benchmarks), where the model has one."""

    def synthetic_value_scale(self, name: str, shape: tuple[int, ...]) -> tuple[float, float] | None:
        """(mean, standard deviation) of a synthetic tensor of this model whose name alone says
        what its values are like; None leaves it to the rules for its layer kind."""
        return None

    def synthetic_runtime_files(self) -> dict[str, str]:
        """Name -> text of the runtime files a synthetic checkpoint holds beside the model folders."""
        return {}

    def metadata(self, config: Fields) -> dict[str, str]:
        """Metadata the pack carries for runtimes: the model's name and its config.json (compact
        JSON, so that a runtime or `sanity` can size the model from the pack alone)."""
        return {"model": self.name, "config": json.dumps(config.doc, sort_keys=True, separators=(",", ":"))}

    def check_tensors(self, found: Mapping[str, tuple[int, ...]], config: Fields, where: Path) -> None:
        """Raises one error listing every missing, unexpected and mis-shaped tensor."""
        problems = shape_problems(found, self.expected_tensors(config))
        if problems:
            raise CheckpointError.at(
                where,
                f"does not match its config.json ({self.title}): {problems} (--any-model packs it without this check)",
            )


def check_tensor_count(config: Fields, title: str, fixed: int, parts: Mapping[str, int]) -> None:
    """Refuses a config.json whose counts give more tensors than a Burn pack holds, naming the key
    that gives the most: `parts` maps each count's key to the tensors it brings, `fixed` counts the
    rest."""
    total = fixed + sum(parts.values())
    if total > MAX_TENSOR_COUNT:
        key = max(parts, key=lambda k: parts[k])
        raise config.error(
            key,
            f"gives {title} {total:,} tensors, more than the {MAX_TENSOR_COUNT:,} a Burn pack can hold",
        )


def shape_problems(found: Mapping[str, tuple[int, ...]], expected: Mapping[str, tuple[int, ...]]) -> str:
    """'N missing: ...; N unexpected: ...; N mis-shaped: ...', or '' when `found` is `expected`."""
    missing = [n for n in expected if n not in found]
    unexpected = [n for n in found if n not in expected]
    misshaped = [
        f"{n} {list(found[n])} (expected {list(shape)})"
        for n, shape in expected.items()
        if n in found and tuple(found[n]) != shape
    ]
    parts = [
        f"{len(items)} {what}: {_listing(items)}"
        for what, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped))
        if items
    ]
    return "; ".join(parts)


def _listing(items: list[str], limit: int = 5) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


def _registry() -> tuple[Preset, ...]:
    from .heartcodec import HeartCodec
    from .heartmula import HeartMuLa

    return (HeartMuLa(), HeartCodec())


PRESETS: tuple[Preset, ...] = _registry()
# Every runtime file any model ships beside its pack, once each, in the presets' order.
RUNTIME_FILES: tuple[str, ...] = tuple(dict.fromkeys(f for p in PRESETS for f in p.runtime_files))


def _named_models() -> tuple[NamedModel, ...]:
    from .acestep.named import AceStep

    return (AceStep(),)


# The models packed by name (`pack --model NAME`), one registration each.
NAMED_MODELS: tuple[NamedModel, ...] = _named_models()


def named_model(variant: str) -> NamedModel:
    """The model that `--model variant` writes (a KeyError for none)."""
    for model in NAMED_MODELS:
        if variant in model.variants:
            return model
    raise KeyError(variant)


def named_model_of_pack(metadata: Mapping[str, str]) -> NamedModel | None:
    """The model packed by name that a pack is part of, if any."""
    return next((m for m in NAMED_MODELS if m.owns(metadata)), None)


def runtime_file_option(name: str) -> str:
    """The option that names a runtime file where one is asked for: tokenizer.json -> --tokenizer."""
    return "--" + name.split(".")[0].replace("_", "-")


def preset_named(name: str) -> Preset | None:
    return next((p for p in PRESETS if p.name == name), None)


def recognized(config: Fields) -> Preset | None:
    """The preset whose model the config.json describes, if any."""
    return next((p for p in PRESETS if p.recognizes(config)), None)


def preset_for(config: Fields) -> Preset:
    """The preset whose model the config.json describes; a `CheckpointError` naming the file when
    none does."""
    preset = recognized(config)
    if preset is not None:
        return preset
    known = ", ".join(p.title for p in PRESETS)
    raise CheckpointError.at(
        config.path,
        f"does not describe a model this tool knows ({known}): no 'model_type' of "
        f"{', '.join(repr(p.name) for p in PRESETS)} (--any-model packs it without a preset)",
    )


def preset_for_pack(metadata: Mapping[str, str], names: set[str]) -> Preset | None:
    """The preset of a pack: by its `model` metadata, else by tensors only that model has."""
    by_name = preset_named(metadata.get("model", ""))
    if by_name is not None:
        return by_name
    return next((p for p in PRESETS if p.signature <= names), None)


def config_of_pack(metadata: Mapping[str, str], path: Path) -> Fields | None:
    """The config.json a pack carries in its metadata (`config`), if it does."""
    text = metadata.get("config")
    if text is None:
        return None
    try:
        doc: Any = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as e:
        raise CheckpointError.at(path, f"metadata 'config' is not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise CheckpointError.at(path, "metadata 'config' is not a JSON object")
    return Fields(doc, path, "config")
