"""ACE-Step 1.5: the runtime's folder of packs, made from upstream's four Hub repositories.

Unlike HeartMuLa (one model folder, one pack), one ACE-Step folder is six packs and six JSON
files drawn from several upstream folders, with tensors renamed and dropped on the way:

    qwen3-encoder.bpk            Ace-Step1.5/Qwen3-Embedding-0.6B   (+ qwen3_config.json, tokenizer.json)
    [sft-]acestep-lm[-1.7b|-4b].bpk  a 5 Hz planner                 (+ [sft-]lm_config*.json, lm_tokenizer*.json)
    [sft-]acestep-dit.bpk        the DiT's `decoder.*`               (+ [sft-]dit_config.json)
    [sft-]acestep-condition.bpk  the same file's condition stack and FSQ projections
    acestep-vae.bpk              Ace-Step1.5/vae, its `decoder.*`   (+ vae_config.json)
    silence_latent.bpk           acestep-v15-turbo/silence_latent.pt, [1, 64, S] -> [1, S, 64]

Every upstream file is first checked against the tensors and shapes its config.json implies
(`upstream`, from upstream's own modeling code); every pack is F32, widened exactly from BF16,
because the runtime's modules never cast what they load. Pack names are the runtime's module paths
(maolan-generate 0.0.19, src/acestep/): the renames below are the whole difference."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..._errors import CheckpointError
from ..._fields import Fields
from .. import MAX_SIZE, MAX_TENSOR_COUNT, Shapes
from . import upstream

MODEL = "acestep-1.5"  # the packs' `model` metadata
TITLE = "ACE-Step 1.5"
# CKPT_ROOT's folders, as `download --model acestep-*` lays them out: each the Hub repository of that name.
REPOSITORIES = {
    "Ace-Step1.5": "ACE-Step/Ace-Step1.5",
    "acestep-5Hz-lm-0.6B": "ACE-Step/acestep-5Hz-lm-0.6B",
    "acestep-5Hz-lm-4B": "ACE-Step/acestep-5Hz-lm-4B",
    "acestep-v15-sft": "ACE-Step/acestep-v15-sft",
}
ENCODER_FOLDER = "Ace-Step1.5/Qwen3-Embedding-0.6B"
VAE_FOLDER = "Ace-Step1.5/vae"
SILENCE_SOURCE = "Ace-Step1.5/acestep-v15-turbo/silence_latent.pt"
# Planner sizes -> the folder each ships in.
PLANNER_FOLDERS = {
    "0.6B": "acestep-5Hz-lm-0.6B",
    "1.7B": "Ace-Step1.5/acestep-5Hz-lm-1.7B",
    "4B": "acestep-5Hz-lm-4B",
}
PLANNER_CHOICES = (*PLANNER_FOLDERS, "all")


@dataclass(frozen=True)
class Variant:
    """One of the runtime's ACE-Step models (`--model acestep-turbo`)."""

    name: str
    dit_folder: str
    prefix: str  # of its own files in the runtime folder: "" (turbo) or "sft-"
    planners: Mapping[str, str]  # the planner sizes it can be written with -> the pack names' suffix
    default_planners: tuple[str, ...]
    note: str

    def planner_suffix(self, size: str) -> str:
        return self.planners[size]


VARIANTS = {
    "acestep-turbo": Variant(
        "acestep-turbo",
        "Ace-Step1.5/acestep-v15-turbo",
        "",
        {"0.6B": "", "1.7B": "-1.7b", "4B": "-4b"},
        ("0.6B",),
        "the turbo DiT (8 steps); the 0.6B planner unless --planner says otherwise",
    ),
    "acestep-sft": Variant(
        "acestep-sft",
        "acestep-v15-sft",
        "sft-",
        {"4B": ""},
        ("4B",),
        "the SFT DiT (50 steps) with the 4B planner, under sft- names beside the shared files",
    ),
}


# --- renames: upstream name -> pack name, None for a tensor the runtime does not use ------------------


def _strip(prefix: str, name: str) -> str | None:
    return name[len(prefix) :] if name.startswith(prefix) else None


def qwen3_name(name: str) -> str | None:
    """Qwen3 stacks: every tensor, a leading `model.` stripped; the LM head dropped (the runtime
    ties it to the embedding)."""
    if name.startswith("lm_head."):
        return None
    return name.removeprefix("model.")


def dit_name(name: str) -> str | None:
    """The DiT: `decoder.*` with `decoder.` stripped; the patch convolutions' `proj_in.1` /
    `proj_out.1` (upstream's nn.Sequential slots) are the runtime's `proj_in.conv` / `proj_out.conv`."""
    rest = _strip("decoder.", name)
    if rest is None:
        return None
    for old, new in (("proj_in.1.", "proj_in.conv."), ("proj_out.1.", "proj_out.conv.")):
        if rest.startswith(old):
            return new + rest[len(old) :]
    return rest


CONDITION_RENAMES = (
    ("encoder.text_projector.", "text_projector."),
    ("encoder.lyric_encoder.", "lyric_encoder."),
    ("encoder.timbre_encoder.", "timbre_encoder."),
    ("detokenizer.", "detokenizer."),
    ("tokenizer.quantizer.project_in.", "quantizer.project_in."),
    ("tokenizer.quantizer.project_out.", "quantizer.project_out."),
)


def condition_name(name: str) -> str | None:
    """The condition stack and the FSQ projections, from the DiT's file; the timbre encoder's
    `special_token`, `null_condition_emb`, the tokenizer's other parts and the decoder dropped."""
    if name == "encoder.timbre_encoder.special_token":
        return None
    for old, new in CONDITION_RENAMES:
        rest = _strip(old, name)
        if rest is not None:
            return new + rest
    return None


def vae_name(name: str) -> str | None:
    """The VAE: the decoder alone, `decoder.` stripped (weight norm kept as stored, g and v)."""
    return _strip("decoder.", name)


# --- the plan ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Part:
    """One pack of the folder: where its tensors come from and how they are named there."""

    pack: str  # file name in the runtime folder
    part: str  # "encoder", "planner", "dit", "condition", "vae" (the pack's `part` metadata)
    folder: str  # the upstream folder, relative to CKPT_ROOT
    rename: Callable[[str], str | None]
    expected: Callable[[Mapping[str, Any], Sequence[str]], Shapes]  # (config, names found) -> upstream tensors
    json_files: Mapping[str, str] = field(default_factory=dict)  # runtime name -> file of `folder`


def _qwen3_expected(config: Mapping[str, Any], names: Sequence[str]) -> Shapes:
    # The two small planners differ: the 1.7B's names have no `model.` prefix, the 0.6B's have it.
    prefix = "model." if any(n.startswith("model.") for n in names) else ""
    return upstream.qwen3_checkpoint(config, prefix)


def _dit_expected(config: Mapping[str, Any], _names: Sequence[str]) -> Shapes:
    return upstream.dit_checkpoint(config)


def _vae_expected(config: Mapping[str, Any], _names: Sequence[str]) -> Shapes:
    return upstream.vae_checkpoint(config)


def parts(variant: Variant, planners: Sequence[str]) -> list[Part]:
    """The packs of `variant`'s folder with these planners, in the order they are written."""
    p = variant.prefix
    found = [
        Part(
            "qwen3-encoder.bpk",
            "encoder",
            ENCODER_FOLDER,
            qwen3_name,
            _qwen3_expected,
            {"qwen3_config.json": "config.json", "tokenizer.json": "tokenizer.json"},
        )
    ]
    for size in planners:
        s = variant.planner_suffix(size)
        found.append(
            Part(
                f"{p}acestep-lm{s}.bpk",
                "planner",
                PLANNER_FOLDERS[size],
                qwen3_name,
                _qwen3_expected,
                {f"{p}lm_config{s}.json": "config.json", f"{p}lm_tokenizer{s}.json": "tokenizer.json"},
            )
        )
    found += [
        Part(
            f"{p}acestep-dit.bpk",
            "dit",
            variant.dit_folder,
            dit_name,
            _dit_expected,
            {f"{p}dit_config.json": "config.json"},
        ),
        Part(f"{p}acestep-condition.bpk", "condition", variant.dit_folder, condition_name, _dit_expected),
        Part("acestep-vae.bpk", "vae", VAE_FOLDER, vae_name, _vae_expected, {"vae_config.json": "config.json"}),
    ]
    return found


def chosen_planners(variant: Variant, planner: str | None) -> tuple[str, ...]:
    """The planner sizes `--planner` asks for (None: the variant's default); a ValueError for one
    the variant cannot be written with."""
    if planner is None:
        return variant.default_planners
    wanted = tuple(variant.planners) if planner.lower() == "all" else (planner.upper(),)
    for size in wanted:
        if size not in variant.planners:
            raise ValueError(
                f"{variant.name} is written with the {'/'.join(variant.planners)} planner, not {planner!r}"
            )
    return wanted


def check_config(config: Fields) -> None:
    """Refuses a config.json whose numbers cannot describe a model a Burn pack holds, before any
    tensor name is built from it (a count of a billion layers is one line, not a billion names)."""
    for key, value in config.doc.items():
        if isinstance(value, bool) or not isinstance(value, int):
            continue
        if value < 0 or value > MAX_SIZE:
            raise config.error(key, f"is {value:,}, outside 0..{MAX_SIZE:,}")
        if ("layers" in key or key.startswith("num_")) and value > MAX_TENSOR_COUNT:
            raise config.error(key, f"is {value:,}: more than the {MAX_TENSOR_COUNT:,} tensors a Burn pack holds")


def expected_tensors(part: Part, config: Fields, names: Sequence[str]) -> Shapes:
    """Every tensor of the upstream file with its shape, as its config.json implies; a config
    that lacks a key or holds nonsense is an error naming the file."""
    check_config(config)
    try:
        return part.expected(config.doc, names)
    except (KeyError, TypeError, ValueError, ZeroDivisionError, IndexError) as e:
        what = f"no {e.args[0]!r}" if isinstance(e, KeyError) else str(e)
        raise CheckpointError.at(config.path, f"cannot size {TITLE}'s {part.part} from it: {what}") from None


# --- the Hub -----------------------------------------------------------------------------------------

# The repositories a folder is made from, by role (`--acestep-repo`, `--acestep-lm-4b-revision`, ...):
# role -> the CKPT_ROOT folder it is laid out in (whose name is its default repository's).
HUB_ROLES = {
    "acestep": "Ace-Step1.5",
    "acestep-lm-0.6b": "acestep-5Hz-lm-0.6B",
    "acestep-lm-4b": "acestep-5Hz-lm-4B",
    "acestep-sft": "acestep-v15-sft",
}


def hub_files(variant: Variant, planners: Sequence[str]) -> dict[str, tuple[list[str], list[str]]]:
    """CKPT_ROOT folder -> (the file patterns to fetch from its repository, those that must be
    there), for `variant`'s folder with these planners: nothing the conversion does not read."""
    wanted: dict[str, tuple[list[str], list[str]]] = {}

    def add(folder: str, names: Sequence[str], required: Sequence[str]) -> None:
        top, _, rest = folder.partition("/")
        prefix = rest + "/" if rest else ""
        patterns, needed = wanted.setdefault(top, ([], []))
        patterns += [prefix + n for n in names if prefix + n not in patterns]
        needed += [prefix + n for n in required if prefix + n not in needed]

    for part in parts(variant, planners):
        files = ["config.json", "*.safetensors", "*.safetensors.index.json", *part.json_files.values()]
        add(part.folder, files, ["config.json", "*.safetensors", *part.json_files.values()])
    folder, _, name = SILENCE_SOURCE.rpartition("/")
    add(folder, [name], [name])
    return wanted


# --- publishing ------------------------------------------------------------------------------------


def json_files_of(pack: str) -> tuple[str, ...]:
    """The runtime folder's JSON files that go with a pack of that name (`acestep-lm-1.7b.bpk` ->
    `lm_config-1.7b.json`, `lm_tokenizer-1.7b.json`); none for a name no part has."""
    for variant in VARIANTS.values():
        for part in parts(variant, tuple(variant.planners)):
            if part.pack == pack:
                return tuple(part.json_files)
    return ()


def default_repository(metadata: Mapping[str, str]) -> str | None:
    """The upstream repository a pack's part comes from by default (its `source_folder`'s)."""
    return REPOSITORIES.get(metadata.get("source_folder", "").split("/")[0])
