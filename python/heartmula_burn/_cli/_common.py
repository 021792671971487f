"""What the commands share: the parser class, argument types and option groups, how a line is said
and a progress bar drawn, and the Hub repositories the options name."""

from __future__ import annotations

import argparse
import contextlib
import difflib
import re
import sys
from collections.abc import Iterator, Sequence
from typing import Any, Callable, NoReturn, TextIO

from .. import _hub as hub
from .._core import MAX_Q_BLOCK
from .._hub.stream import MAX_CONNECTIONS, checked_connections, checked_retry_window
from .._manifest import DEFAULT_Q_BLOCK, DTYPE_CHOICES
from .._packing import (
    NARROW_NOTE,
    ProgressFn,
)
from .._presets import NAMED_MODELS, PRESETS, Preset, named_model
from .._text import shown

FOLDERS = ", ".join(name for p in PRESETS for name in p.folder_names)


class UsageError(Exception):
    """Arguments that parse but do not make sense together: exit 2, with the usage line."""


class Parser(argparse.ArgumentParser):
    """argparse without abbreviated options (`--dtyp` is a typo, not `--dtype`), saying which option
    was probably meant; subcommands' parsers are kept, so that their own usage goes with their errors."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["allow_abbrev"] = False
        super().__init__(*args, **kwargs)
        self.commands: dict[str, Parser] = {}

    def error(self, message: str) -> NoReturn:
        if message.startswith("unrecognized arguments: "):
            options = list(self._option_string_actions)
            for word in message.split()[2:]:
                close = difflib.get_close_matches(word.split("=")[0], options, n=1) if word.startswith("-") else []
                if close:
                    message += f" (did you mean {close[0]}?)"
                    break
        super().error(message)


def _one_of(choices: Sequence[str], normalise: Callable[[str], str] = str.lower) -> dict[str, Any]:
    """add_argument's keywords for a value among `choices`, taken in any case, with a "did you mean"
    for a near miss (the choices stay declared, for --help and shell completion)."""

    def choice(text: str) -> str:
        value = normalise(text)
        if value in choices:
            return value
        close = difflib.get_close_matches(value, choices, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise argparse.ArgumentTypeError(f"invalid choice: {text!r}; choose from {', '.join(choices)}{hint}")

    return {"type": choice, "choices": choices, "metavar": "{" + ",".join(choices) + "}"}


class Terminated(BaseException):
    """SIGTERM or SIGHUP, raised where the program is so that it unwinds exactly as Ctrl-C does."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _add_hub_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "Hugging Face Hub",
        "the repositories to fetch (through huggingface_hub: its cache, HF_TOKEN or `hf auth login`, "
        "HF_ENDPOINT, HF_HUB_OFFLINE=1 to work from the cache alone)",
    )
    for spec in hub.default_specs():
        preset = next((q for q in PRESETS if q.hub_role == spec.role), None)
        what = preset.title if preset is not None else " and ".join(spec.patterns)
        g.add_argument(f"--{spec.role}-repo", metavar="REPO_ID", help=f"{what}: any repository (default {spec.repo})")
        if preset is not None and len(preset.releases) > 1:
            listing = ", ".join(r.name + (f" ({r.note})" if r.note else "") for r in preset.releases)
            g.add_argument(
                f"--{spec.role}-release",
                **_release_choice(preset),
                help=f"{preset.title} by release, laid out in {spec.folder}/: {listing} (default {preset.releases[0].name})",
            )
        g.add_argument(f"--{spec.role}-revision", metavar="REV", help="a branch, tag or commit (default main)")


def _add_folder_model_args(p: argparse.ArgumentParser, what: str) -> None:
    """--model, the options of the models packed by name, and their Hub options: the repository
    roles each declares."""
    for model in NAMED_MODELS:
        g = p.add_argument_group(
            f"models chosen by name: {model.title}",
            "a model whose runtime folder is made from several upstream repositories: "
            + "; ".join(f"{name}: {note}" for name, note in model.variants.items()),
        )
        if model is NAMED_MODELS[0]:
            g.add_argument("--model", **_one_of(tuple(v for m in NAMED_MODELS for v in m.variants)), help=what)
        model.add_options(g, _one_of)
        for role, folder in model.hub_roles.items():
            g.add_argument(
                f"--{role}-repo",
                dest=_dest(role, "repo"),
                metavar="REPO_ID",
                help=f"with --model: what CKPT_ROOT/{folder}/ holds, from any repository "
                f"(default {model.repositories[folder]})",
            )
            g.add_argument(
                f"--{role}-revision",
                dest=_dest(role, "revision"),
                metavar="REV",
                help="a branch, tag or commit (default main)",
            )


def _misplaced_folder_model_options(args: argparse.Namespace) -> None:
    """A named model's own option given without --model of that model is a usage error."""
    for model in NAMED_MODELS:
        problem = model.misplaced_option(vars(args))
        if problem is not None:
            raise UsageError(problem)


def _folder_model_specs(args: argparse.Namespace) -> list[hub.RepoSpec]:
    """The repositories `--model` needs, as its --ROLE-repo / --ROLE-revision options say."""
    model = named_model(args.model)
    repos = {role: getattr(args, _dest(role, "repo")) for role in model.hub_roles}
    revisions = {role: getattr(args, _dest(role, "revision")) for role in model.hub_roles}
    try:
        return model.hub_specs(args.model, vars(args), repos, revisions)
    except ValueError as e:
        raise UsageError(str(e)) from None


def _dest(role: str, option: str) -> str:
    return f"{role}_{option}".replace("-", "_").replace(".", "_")


def _release_choice(preset: Preset) -> dict[str, Any]:
    """add_argument's keywords for a release of `preset`, by its name in any case."""
    names = {r.name.lower(): r.name for r in preset.releases}
    return {**_one_of(tuple(names.values()), lambda text: names.get(text.lower(), text)), "metavar": "NAME"}


def _add_source_args(p: argparse.ArgumentParser, dtype_help: str) -> None:
    p.add_argument("ckpt_root", metavar="CKPT_ROOT", nargs="?", help="checkpoint folder (or one .safetensors file)")
    p.add_argument(
        "--subdir",
        metavar="NAME",
        help=f"only this model folder inside CKPT_ROOT (default: every one of {FOLDERS} present, else "
        "CKPT_ROOT itself)",
    )
    p.add_argument("--dtype", **_one_of(DTYPE_CHOICES), default="f32", help=dtype_help)
    p.add_argument(
        "--q-block",
        type=_block,
        default=DEFAULT_Q_BLOCK,
        metavar="N",
        help=f"with --dtype q8 or q8-native: values per scale, along each weight's last dimension (1-{MAX_Q_BLOCK}, default "
        f"{DEFAULT_Q_BLOCK}); a weight whose last dimension N does not divide stays F32, with a note",
    )
    p.add_argument(
        "--any-model",
        action="store_true",
        help="pack any safetensors checkpoint as is, without a preset's check of its tensors and dtypes",
    )


def _dtype_help() -> str:
    """--dtype's help: the dtypes, then what each model makes of them (from the registry)."""
    kept = "; packed beside another model's pack, it stays {}, with a note"
    per_model = [
        p.dtype_note or (p.dtype_reason and p.dtype_reason + kept.format(p.dtypes[0].upper())) for p in PRESETS
    ]
    per_model += [m.dtype_note for m in NAMED_MODELS]
    return (
        "dtype of float tensors in the pack: f32 (default, as upstream), bf16, f16, source (keep each tensor's "
        "own), or q8: the weights a model marks quantizable (below) quantized as Burn 0.22's quantize_dynamic "
        "does (Q8S, one i8 per value, one F32 scale per --q-block values), everything else F32; it targets Burn "
        "0.22. q8 stores the values PackedU32(0), four to a u32, as Burn's quantizer does on its GPU backend: "
        "runtimes run it on wgpu/Vulkan and on the CPU; q8-native stores them Native, as Burn does on the CPU "
        "(Flex), the same bytes under another descriptor, which wgpu cannot run. Narrowing rounds to nearest "
        f"even, like torch; integers are never converted. BF16/F16: {NARROW_NOTE}. "
        + ". ".join(note.rstrip(".") for note in per_model if note).replace("%", "%%")
    )


DTYPE_HELP = _dtype_help()


def _block(text: str) -> int:
    """A quantization block length, 1 to the core's bound (Burn stores it in one byte)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_Q_BLOCK:
        raise argparse.ArgumentTypeError(f"{text!r}: a block is 1 to {MAX_Q_BLOCK} values")
    return value


_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def _size(text: str) -> int:
    """'5GB' -> 5000000000, '2GiB' -> 2147483648, '1000' -> 1000."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    if not m or m.group(2).upper() not in _UNITS:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 5GB, 500MB, 2GiB)")
    value = int(float(m.group(1)) * _UNITS[m.group(2).upper()])
    if value <= 0:
        raise argparse.ArgumentTypeError(f"size must be positive: {text!r}")
    return value


def _connections(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    try:
        return checked_connections(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: 1 to {MAX_CONNECTIONS} connections") from None


def _seconds(text: str) -> float:
    try:
        return checked_retry_window(float(text))
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{text!r}: {e}" if "window" in str(e) else f"not seconds: {text!r}") from None


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more: {text!r}")
    return value


def _say(line: str, file: TextIO | None = None) -> None:
    """One line for a person, on stderr by default, with control characters escaped."""
    print(shown(line), file=file or sys.stderr)


@contextlib.contextmanager
def _progress_bar(quiet: bool, desc: str = "packing") -> Iterator[ProgressFn | None]:
    """Yields a `progress(done, total)` callback drawing a bar on stderr (a terminal only), or None."""
    if quiet or not sys.stderr.isatty():
        yield None
        return
    from tqdm import tqdm

    bar = tqdm(total=0, unit="B", unit_scale=True, unit_divisor=1024, desc=desc, file=sys.stderr, smoothing=0.1)

    def update(done: int, total: int) -> None:
        if bar.total != total:
            bar.total = total
        bar.update(done - bar.n)

    try:
        yield update
    finally:
        bar.close()


def _hub_specs(args: argparse.Namespace) -> list[hub.RepoSpec]:
    """The repositories the Hub options name (each role's --ROLE-repo, --ROLE-release, --ROLE-revision)."""
    roles = [spec.role for spec in hub.default_specs()]
    for role in roles:  # said in the options' words; repo_specs would say it in the API's
        if getattr(args, f"{role}_repo") and getattr(args, f"{role}_release", None):
            raise UsageError(f"give --{role}-repo or --{role}-release, not both")
    return hub.repo_specs(
        {role: getattr(args, f"{role}_repo") for role in roles},
        {role: getattr(args, f"{role}_revision") for role in roles},
        {role: getattr(args, f"{role}_release", None) for role in roles},
    )
