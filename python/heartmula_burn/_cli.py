"""Command line: `python -m heartmula_burn COMMAND ...` (see --help).

Exit codes: 0 ok; 1 failure (one line on stderr naming the file and tensor, nothing half-written);
2 usage; 128+N when stopped by signal N (130 Ctrl-C, 143 SIGTERM, 129 SIGHUP), the destination
untouched and no temporary file left."""

from __future__ import annotations

import argparse
import contextlib
import difflib
import json
import os
import re
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import Any, Callable, NoReturn, TextIO

from . import __version__
from . import _hub as hub
from ._errors import HeartmulaBurnError, OutputError
from ._manifest import DTYPE_CHOICES, Manifest, build_manifest
from ._packfile import open_pack
from ._packing import (
    BURN_VERSIONS,
    CPU_NOTE,
    Conversion,
    Job,
    ProgressFn,
    manifest_job,
    pack_manifests,
    plan_checkpoint,
    plan_checkpoints,
)
from ._presets import PRESETS, Preset
from ._text import shown

# "both": every model the presets know (the name kept from when there were two).
SYNTHETIC_MODELS = ("both", *(p.name for p in PRESETS))
SYNTHETIC_DTYPES = ("F32", "BF16", "F16")
FOLDERS = ", ".join(name for p in PRESETS for name in p.folder_names)

DESCRIPTION = f"""\
Convert HeartMuLa's checkpoints (the LM and its audio codec, or any safetensors checkpoint) into
Burn packs (.bpk) that Burn's BurnpackStore loads directly. CKPT_ROOT is laid out as upstream ships it:
  CKPT_ROOT/HeartMuLa-oss-3B/{{config.json, model.safetensors.index.json, model-*.safetensors}}
  CKPT_ROOT/HeartCodec-oss/{{config.json, model.safetensors.index.json, model-*.safetensors}}
  CKPT_ROOT/tokenizer.json, CKPT_ROOT/gen_config.json
`pack CKPT_ROOT -o OUT/` writes the folder a Burn HeartMuLa runtime loads: heartmula.bpk,
heartcodec.bpk, tokenizer.json, gen_config.json. A model folder is found by its config.json,
whatever its name (upstream's: {FOLDERS}). A folder holding a single model.safetensors, or
shards without an index, works too."""


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
        "--any-model",
        action="store_true",
        help="pack any safetensors checkpoint as is, without a preset's check of its tensors and dtypes",
    )


DTYPE_HELP = (
    "dtype of float tensors in the HeartMuLa pack: f32 (default, as upstream), bf16, f16, or source (keep each "
    "tensor's own). Narrowing rounds to nearest even, like torch; integers are never converted. " + CPU_NOTE + ". "
    "HeartCodec packs are always F32 (Burn runtimes read only F32 codec tensors; heartlib warns bf16 degrades "
    "the audio): packing a codec alone refuses other dtypes, and alongside the LM it stays F32, with a note"
)


def build_parser() -> Parser:
    parser = Parser(
        prog="python -m heartmula_burn", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"heartmula-burn {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "pack",
        help="pack a checkpoint (every model in it) or a manifest into .bpk files",
        description="Pack every model of CKPT_ROOT (HeartMuLa -> heartmula.bpk, HeartCodec -> heartcodec.bpk), "
        "each first checked by its preset: every tensor config.json implies, with its shape. tokenizer.json and "
        "gen_config.json are copied beside. All outputs are written to temporary files beside their destinations "
        "and put in place together once complete and on disk: on any failure, Ctrl-C or SIGTERM the output "
        "folder is exactly as it was.",
    )
    _add_source_args(p, DTYPE_HELP)
    p.add_argument(
        "-o",
        "--output",
        help="output pack, or a folder (an existing one, or a path ending in '/', created if missing) for all packs; "
        "other packs go "
        "beside the first under their own names (default: ./heartmula.bpk, ./heartcodec.bpk)",
    )
    p.add_argument(
        "--manifest", metavar="FILE", help="pack exactly what this manifest describes (instead of CKPT_ROOT)"
    )
    p.add_argument("-f", "--force", action="store_true", help="replace existing output files")
    p.add_argument(
        "--burn-version",
        "--burn-layout",
        dest="burn_version",
        **_one_of(BURN_VERSIONS),
        default="0.21",
        help="Burn release whose reader the pack targets (default 0.21, also right for 0.22). 0.19 wrote no "
        "alignment padding: its readers misread 0.20+ packs and vice versa, silently; 0.20 spells Bool differently",
    )
    p.add_argument("--no-extras", action="store_true", help="do not copy tokenizer.json / gen_config.json")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar and no notes")
    p.add_argument("--json", action="store_true", help="print a machine-readable summary on stdout")
    p.add_argument(
        "--hub",
        action="store_true",
        help="download the checkpoint from the Hugging Face Hub first (the repositories below; needs "
        "huggingface_hub) and pack it: no CKPT_ROOT needed",
    )
    p.add_argument(
        "--ckpt-root",
        dest="hub_root",
        metavar="DIR",
        help="with --hub: lay the download out in DIR as `download DIR` does (default: pack straight from the "
        "Hugging Face cache)",
    )
    _add_hub_args(p)

    d = sub.add_parser(
        "download",
        help="fetch HeartMuLa, HeartCodec and the runtime files from the Hugging Face Hub into CKPT_ROOT",
        description="Fetch the three repositories a conversion needs through huggingface_hub (the LM, the "
        "codec, and tokenizer.json + gen_config.json), only the files a conversion reads, into the Hugging Face "
        "cache, and lay them out as upstream's README does: CKPT_ROOT/HeartMuLa-oss-3B/, "
        "CKPT_ROOT/HeartCodec-oss/, CKPT_ROOT/tokenizer.json, CKPT_ROOT/gen_config.json, as links into the "
        "cache (stored once, shared with other tools; a second run downloads nothing). Free space is checked "
        "before a byte is fetched. Each revision's commit is printed and recorded: packs made from CKPT_ROOT "
        "carry source_repo and source_revision.",
    )
    d.add_argument("ckpt_root", metavar="CKPT_ROOT", help="folder to lay the checkpoint out in (created if missing)")
    _add_hub_args(d)
    d.add_argument("-f", "--force", action="store_true", help="replace files in CKPT_ROOT this command did not make")
    d.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    d.add_argument("--json", action="store_true", help="print what was fetched (repositories, commits, files) as JSON")

    m = sub.add_parser(
        "manifest",
        help="write the manifest a pack would use, to edit names, order or dtypes",
        description="Write the manifest (ordered tensors, sources, dtypes, metadata) of one model of CKPT_ROOT. "
        "Edit it and pack it with `pack --manifest FILE`. Paths inside are relative to the manifest's folder and "
        "must lie inside it, so save it in a folder that holds the checkpoint (e.g. CKPT_ROOT/manifest.json).",
    )
    _add_source_args(m, DTYPE_HELP)
    m.add_argument("-o", "--output", default="manifest.json", help="manifest file (default: ./manifest.json)")
    m.add_argument("-f", "--force", action="store_true", help="replace an existing manifest")

    i = sub.add_parser(
        "inspect",
        help="show a pack's metadata and tensors",
        description="Show a Burn pack's layout, metadata and tensor table (names and values are shown with "
        "control characters escaped; --json keeps them exact).",
    )
    i.add_argument("pack", metavar="FILE.bpk")
    i.add_argument("--json", action="store_true", help="print everything as JSON")

    e = sub.add_parser(
        "export-raw",
        help="export a checkpoint to one .npy per tensor plus a manifest (the two-step workflow)",
        description="Write OUTPUT_ROOT/<model>_raw_<dtype>/ for every model of CKPT_ROOT (heartmula_raw_f32, "
        "heartcodec_raw_f32: one .npy per tensor, bf16 stored as <u2, a manifest.json and the runtime files its pack "
        "needs) plus tokenizer.json and gen_config.json in OUTPUT_ROOT. `pack --manifest "
        "OUTPUT_ROOT/heartmula_raw_<dtype>/manifest.json` then gives the same pack, byte for byte, as the one-step pack.",
    )
    e.add_argument("--checkpoint-root", required=True, metavar="CKPT_ROOT", help="checkpoint folder")
    e.add_argument(
        "--subdir", "--heartmula-subdir", dest="subdir", metavar="NAME", help="only this model folder in CKPT_ROOT"
    )
    e.add_argument("--output-root", required=True, metavar="DIR", help="e.g. artifacts/heartmula-oss-3b")
    e.add_argument("--dtype", **_one_of(DTYPE_CHOICES), default="f32", help=DTYPE_HELP)
    e.add_argument("--any-model", action="store_true", help="skip the presets' checks")
    e.add_argument("-f", "--force", action="store_true", help="replace an existing export")
    e.add_argument("-q", "--quiet", action="store_true", help="no progress bar")

    pl = sub.add_parser(
        "publish-layout",
        help="assemble a folder to publish as a model repository",
        description="Assemble OUT_DIR with the packs (named heartmula.bpk / heartcodec.bpk by what they hold, "
        "hard-linked when possible), tokenizer.json and gen_config.json (with a HeartMuLa pack), a .gitattributes "
        "routing *.bpk and files over 10 MB through Git LFS, and a README.md model card whose figures (tensor "
        "counts, dtypes, architecture, sizes, sha256) are read from the packs. With only a HeartMuLa pack given, a "
        "heartcodec.bpk beside it is included too: the four files a Burn HeartMuLa runtime loads.",
    )
    pl.add_argument("out_dir", metavar="OUT_DIR")
    pl.add_argument("--pack", required=True, action="append", help="a pack to publish (repeat for each)")
    pl.add_argument("--tokenizer", help="tokenizer.json (default: beside the HeartMuLa pack)")
    pl.add_argument("--gen-config", help="gen_config.json (default: beside the HeartMuLa pack)")
    pl.add_argument("-f", "--force", action="store_true", help="replace an existing OUT_DIR")
    pl.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    pl.add_argument(
        "--push",
        metavar="REPO_ID",
        help="then upload OUT_DIR to this Hugging Face repository in one commit (created if missing; needs "
        "huggingface_hub and a token with write access: HF_TOKEN or `hf auth login`); the commit URL is printed",
    )
    pl.add_argument("--private", action="store_true", help="with --push: create the repository private")
    pl.add_argument("--revision", metavar="BRANCH", help="with --push: commit to this branch (created if missing)")
    pl.add_argument("--dry-run", action="store_true", help="with --push: list what would be uploaded, upload nothing")

    v = sub.add_parser(
        "verify",
        help="check a pack bit for bit against its checkpoint or manifest, and its container",
        description="Stream the pack and its source and check every tensor bit for bit (or against the exact "
        "cast when dtypes differ), plus the container: header, metadata limits, offsets, 256-byte alignment, "
        "overlaps, zero padding, sizes. Each problem is reported with the tensor's name; exit 1 on any. Against a "
        "CKPT_ROOT holding several models, the one the pack was made from is used.",
    )
    v.add_argument("pack", metavar="PACK")
    v.add_argument(
        "--against",
        metavar="CKPT_ROOT|MANIFEST",
        help="checkpoint folder or manifest.json to compare every tensor with (without it: the container only)",
    )
    v.add_argument("--subdir", metavar="NAME", help="model folder inside CKPT_ROOT")
    v.add_argument("-q", "--quiet", action="store_true", help="no progress bar")

    u = sub.add_parser(
        "unpack",
        help="write a pack's tensors back to safetensors",
        description="Write the pack's tensors to OUT as safetensors (model.safetensors, or shards plus "
        "model.safetensors.index.json when larger than --max-shard-size). The pack's metadata and param_ids "
        "are kept in the shards' __metadata__, so `pack --any-model --dtype source OUT` gives back the identical pack.",
    )
    u.add_argument("pack", metavar="PACK")
    u.add_argument("-o", "--output", required=True, metavar="OUT", help="output folder (must not exist)")
    u.add_argument("--max-shard-size", type=_size, default="5GB", help="largest shard, e.g. 5GB (default), 500MB, 2GiB")
    u.add_argument("-f", "--force", action="store_true", help="replace an existing output folder")
    u.add_argument("-q", "--quiet", action="store_true", help="no progress bar")

    sn = sub.add_parser(
        "sanity",
        help="run the model from a pack's weights and check that it behaves (needs torch)",
        description="Load the pack tensor by tensor (zero-copy from the mapped file) and run a deterministic "
        "forward in f32 on fixed inputs. HeartMuLa: every weight finite, codebook-0 logits of the prompt, "
        "teacher-forced logits of codebooks 1-7, a second frame through the KV cache (and against a full "
        "recompute), greedy decoding of --frames frames. HeartCodec: every weight finite, weight-norm directions "
        "non-zero, the VQ conditioning of fixed codes, one flow-matching estimator call at a fixed input and "
        "timestep 0.5, and the ScalarModel decoder on a fixed latent (multiples of 1/9) to audio. With "
        "--reference (the checkpoint folder or another pack) the same forward runs on the reference weights "
        "cast to the pack's dtypes and must agree exactly; for a lossy pack (e.g. BF16 from F32) the difference "
        "from the uncast reference is reported. Exit 0 when every check passes, 1 otherwise. Needs PyTorch: "
        "pip install 'heartmula-burn[sanity]'.",
    )
    sn.add_argument("pack", metavar="PACK")
    sn.add_argument("--reference", metavar="CKPT_ROOT|PACK", help="compare with this checkpoint folder or pack")
    sn.add_argument("--subdir", metavar="NAME", help="model folder inside the reference CKPT_ROOT")
    sn.add_argument("--device", default="auto", help="auto (cuda when available, else cpu), cuda, cuda:N or cpu")
    sn.add_argument("--frames", type=_count, default=2, help="HeartMuLa: audio frames to decode greedily (default 2)")
    sn.add_argument(
        "--config",
        metavar="CONFIG_JSON",
        help="the model's config.json (default: the one in the pack's metadata, else the reference's)",
    )
    sn.add_argument("--json", action="store_true", help="print every check and figure as JSON on stdout")

    s = sub.add_parser(
        "synthetic",
        help="write a synthetic checkpoint (HeartMuLa and HeartCodec) for trying the tool, tests and benchmarks",
        description="Write a CKPT_ROOT laid out as upstream ships it (HeartMuLa-oss-3B/ with all 289 tensor names, "
        "HeartCodec-oss/ with all 818, tokenizer.json, gen_config.json), with deterministic random values at "
        "realistic scales (norm weights near 1, linear and conv weights about 1/sqrt(fan_in)). Tiny by default; "
        "--full writes the real shapes (15.75 GB + 6.64 GB in F32).",
    )
    s.add_argument("output", metavar="CKPT_ROOT")
    s.add_argument(
        "--model",
        **_one_of(SYNTHETIC_MODELS),
        default="both",
        help="which models (default both)",
    )
    s.add_argument("--full", action="store_true", help="the real shapes (HeartMuLa-oss-3B, HeartCodec-oss)")
    s.add_argument(
        "--dtype",
        **_one_of(SYNTHETIC_DTYPES, str.upper),
        default="F32",
        help="dtype of the tensors (any case; default F32)",
    )
    s.add_argument("-f", "--force", action="store_true", help="write into a folder that is not empty")
    s.add_argument("--shards", type=_count, default=4, help="shards of the HeartMuLa checkpoint (the codec has 2)")
    s.add_argument("--seed", type=int, default=0)

    c = sub.add_parser(
        "completion",
        help="print a shell completion script (bash or zsh)",
        description="Print the completion script of the heartmula-burn command for a shell, made by shtab from "
        "this parser (subcommands, options, their choices). Load it with, for bash: "
        'eval "$(heartmula-burn completion bash)" (or save it under ~/.local/share/bash-completion/completions/'
        "heartmula-burn); for zsh: heartmula-burn completion zsh > ~/.zfunc/_heartmula-burn, with ~/.zfunc in "
        "fpath before compinit.",
    )
    c.add_argument("shell", **_one_of(("bash", "zsh")))
    parser.commands = dict(sub.choices)
    return parser


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
    repos, revisions = {}, {}
    for spec in hub.default_specs():
        repo, release = getattr(args, f"{spec.role}_repo"), getattr(args, f"{spec.role}_release", None)
        if repo and release:
            raise UsageError(f"give --{spec.role}-repo or --{spec.role}-release, not both")
        repos[spec.role] = repo or (hub.release_repo(spec.role, release) if release else None)
        revisions[spec.role] = getattr(args, f"{spec.role}_revision")
    return hub.repo_specs(repos, revisions)


def _hub_jobs(args: argparse.Namespace) -> tuple[list[Job], list[str]]:
    from ._checkpoint import load_checkpoints, load_model_folders

    if args.ckpt_root or args.manifest or args.subdir:
        raise UsageError("--hub downloads the checkpoint: give no CKPT_ROOT, --manifest or --subdir with it")
    fetched = hub.download(_hub_specs(args), say=None if args.quiet else _say, quiet=args.quiet)
    if args.hub_root:
        root = Path(args.hub_root)
        hub.lay_out(root, fetched, force=args.force)
        checkpoints = load_checkpoints(root)
    else:
        runtime = next(f.snapshot for f in fetched if f.spec.folder is None)
        checkpoints = load_model_folders([f.snapshot for f in fetched if f.spec.folder is not None], runtime)
    return plan_checkpoints(checkpoints, args.output, dtype=args.dtype, any_model=args.any_model)


def _pack_jobs(args: argparse.Namespace) -> tuple[list[Job], list[str]]:
    if args.hub:
        return _hub_jobs(args)
    if args.hub_root:
        raise UsageError("--ckpt-root goes with --hub (without it, give CKPT_ROOT)")
    if args.manifest:
        if args.ckpt_root:
            raise UsageError("give either CKPT_ROOT or --manifest, not both")
        return [manifest_job(Manifest.load(args.manifest), args.output)], []
    if not args.ckpt_root:
        raise UsageError("give a CKPT_ROOT (or --manifest FILE)")
    return plan_checkpoint(args.ckpt_root, args.output, dtype=args.dtype, any_model=args.any_model, subdir=args.subdir)


def cmd_pack(args: argparse.Namespace) -> int:
    jobs, notes = _pack_jobs(args)
    with contextlib.ExitStack() as bars:

        def progress(job: Job) -> ProgressFn | None:
            return bars.enter_context(_progress_bar(args.quiet, job.output.name))

        result = pack_manifests(
            jobs,
            force=args.force,
            burn_version=args.burn_version,
            progress_for=progress,
            copy_extras=not args.no_extras,
            notes=notes,
        )
    _report_pack(args, result)
    return 0


def _report_pack(args: argparse.Namespace, result: Conversion) -> None:
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    if args.quiet:
        return
    for note in result.notes:
        _say(f"note: {note}")
    if args.json:
        return
    for r in result.packs:
        rate = r.data_bytes / r.seconds / 1e6 if r.seconds > 0 else 0.0
        _say(
            f"wrote {r.output} ({r.tensors} tensors, {r.file_size:,} bytes, {r.dtype}) in {r.seconds:.1f} s ({rate:.0f} MB/s)"
        )
    for extra in result.extras:
        _say(f"copied {extra}")


def cmd_download(args: argparse.Namespace) -> int:
    root = Path(args.ckpt_root)
    fetched = hub.download(_hub_specs(args), say=None if args.quiet else _say, quiet=args.quiet)
    written = hub.lay_out(root, fetched, force=args.force)
    if args.json:
        print(json.dumps({"ckpt_root": str(root), "repos": [f.to_dict() for f in fetched]}, indent=2))
    if not args.quiet:
        _say(f"laid out {root}: {', '.join(p.name for p in written)} (links into the Hugging Face cache)")
    return 0


def cmd_manifest(args: argparse.Namespace) -> int:
    from ._checkpoint import load_checkpoint

    if not args.ckpt_root:
        raise UsageError("give a CKPT_ROOT")
    manifest = build_manifest(load_checkpoint(args.ckpt_root, args.subdir), dtype=args.dtype, any_model=args.any_model)
    out = Path(args.output)
    manifest.save(out, overwrite=args.force)
    _say(f"wrote {out} ({len(manifest.tensors)} tensors, {manifest.total_bytes:,} bytes of data)")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    with open_pack(args.pack) as pack:
        if args.json:
            doc = {
                "path": str(pack.path),
                "file_size": pack.file_size,
                "layout": pack.layout,
                "metadata_size": pack.metadata_size,
                "data_start": pack.data_start,
                "metadata": pack.metadata,
                "tensors": [
                    {
                        "name": t.name,
                        "dtype": t.dtype,
                        "shape": list(t.shape),
                        "param_id": t.param_id,
                        "data_offsets": list(t.data_offsets),
                        "file_offset": t.file_offset,
                    }
                    for t in pack.tensors
                ],
            }
            print(json.dumps(doc, indent=2))
            return 0
        out = sys.stdout
        _say(f"{pack.path}: Burn pack, {pack.file_size:,} bytes, layout {pack.layout}, {len(pack)} tensors", out)
        for k, v in pack.metadata.items():
            _say(f"  {k} = {v}", out)
        names = {t.name: shown(t.name) for t in pack.tensors}
        width = max((len(n) for n in names.values()), default=4)
        print(f"  {'name':<{width}}  {'dtype':<5}  {'shape':<22}  offset", file=out)
        for t in pack.tensors:
            print(f"  {names[t.name]:<{width}}  {t.dtype:<5}  {list(t.shape)!s:<22}  {t.file_offset}", file=out)
    return 0


def cmd_export_raw(args: argparse.Namespace) -> int:
    from ._export import export_raw

    with _progress_bar(args.quiet, "exporting") as update:
        summary = export_raw(
            args.checkpoint_root,
            args.output_root,
            subdir=args.subdir,
            dtype=args.dtype,
            any_model=args.any_model,
            force=args.force,
            progress=update,
        )
    if not args.quiet:
        for note in summary["notes"]:
            _say(f"note: {note}")
        for output, manifest in zip(summary["outputs"], summary["manifests"]):
            _say(f"wrote {output}; pack it with: python -m heartmula_burn pack --manifest {manifest}")
    return 0


def cmd_publish_layout(args: argparse.Namespace) -> int:
    from ._publish import publish_layout

    if not args.push and (args.private or args.revision or args.dry_run):
        raise UsageError("--private, --revision and --dry-run go with --push REPO_ID")
    packs = [Path(p) for p in args.pack]
    codec = packs[0].parent / "heartcodec.bpk"
    if len(packs) == 1 and codec.is_file() and not codec.samefile(packs[0]):
        packs.append(codec)
        if not args.quiet:
            _say(f"note: including {codec}, found beside {packs[0]}")
    bar = None
    if not args.quiet and sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(unit="B", unit_scale=True, unit_divisor=1024, desc="sha256", file=sys.stderr)
    try:
        summary = publish_layout(
            args.out_dir,
            packs,
            tokenizer=args.tokenizer,
            gen_config=args.gen_config,
            force=args.force,
            progress=bar.update if bar is not None else None,
        )
    finally:
        if bar is not None:
            bar.close()
    if not args.quiet:
        for note in summary.get("notes", []):
            _say(f"note: {note}")
        _say(f"wrote {summary['output']} ({', '.join(summary['files'])})")
    if args.push:
        _push(args, summary)
    return 0


def _push(args: argparse.Namespace, summary: dict[str, Any]) -> None:
    from ._publish import commit_message, in_lfs

    message, description = commit_message(summary["sources"], __version__)
    upload = hub.push_folder(
        Path(summary["output"]),
        args.push,
        message=message,
        description=description,
        private=args.private,
        revision=args.revision,
        dry_run=args.dry_run,
        quiet=args.quiet,
    )
    if args.dry_run:
        _say(f"would upload to {upload.repo} (branch {upload.revision}), one commit: {message}", sys.stdout)
        for name, size in upload.files.items():
            _say(f"  {name}  {hub.human(size)}{'  (LFS)' if in_lfs(name, size) else ''}", sys.stdout)
        return
    _say(
        f"pushed {len(upload.files)} files to {upload.repo} (branch {upload.revision}): {upload.commit_url}", sys.stdout
    )


def cmd_verify(args: argparse.Namespace) -> int:
    from ._verify import verify

    with _progress_bar(args.quiet, "verifying") as update:
        problems = verify(args.pack, args.against, subdir=args.subdir, progress=update)
    for line in problems:
        _say(f"heartmula-burn: {line}")
    if problems:
        _say(f"heartmula-burn: error: {args.pack}: {len(problems)} problem(s) found")
        return 1
    if not args.quiet:
        what = f"every tensor matches {args.against}" if args.against else "the container is sound (no source given)"
        _say(f"{args.pack}: ok, {what}", sys.stdout)
    return 0


def cmd_unpack(args: argparse.Namespace) -> int:
    from ._verify import unpack

    with _progress_bar(args.quiet, "unpacking") as update:
        summary = unpack(args.pack, args.output, max_shard_size=args.max_shard_size, force=args.force, progress=update)
    if not args.quiet:
        _say(f"wrote {summary['output']} ({len(summary['shards'])} shard(s), {summary['data_bytes']:,} bytes)")
    return 0


def cmd_sanity(args: argparse.Namespace) -> int:
    from ._sanity import format_table, run

    result = run(
        args.pack,
        reference=args.reference,
        device=args.device,
        frames=args.frames,
        config=args.config,
        subdir=args.subdir,
    )
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        for line in format_table(result).splitlines():
            _say(line, sys.stdout)
    if not result.ok:
        failed = "; ".join(f"{c.name} ({c.figure})" for c in result.failed[:3])
        more = f"; and {len(result.failed) - 3} more" if len(result.failed) > 3 else ""
        _say(f"heartmula-burn: error: {args.pack}: sanity check failed: {failed}{more}")
        return 1
    return 0


def cmd_completion(args: argparse.Namespace) -> int:
    import shtab

    parser = build_parser()
    parser.prog = "heartmula-burn"  # completes the console script
    print(shtab.complete(parser, shell=args.shell))
    return 0


def cmd_synthetic(args: argparse.Namespace) -> int:
    from ._synthetic import write_synthetic_checkpoint

    models = tuple(p.name for p in PRESETS) if args.model == "both" else (args.model,)
    out = Path(args.output)
    if out.is_dir() and any(out.iterdir()) and not args.force:
        # Beside a real CKPT_ROOT, synthetic weights must never replace real files unasked.
        raise OutputError.at(out, "is not empty: synthetic files would replace what is there (use --force)")
    root = write_synthetic_checkpoint(
        args.output, full=args.full, dtype=args.dtype, num_shards=args.shards, seed=args.seed, models=models
    )
    _say(f"wrote synthetic checkpoint {root} ({', '.join(models)})")
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "pack": cmd_pack,
    "download": cmd_download,
    "manifest": cmd_manifest,
    "inspect": cmd_inspect,
    "export-raw": cmd_export_raw,
    "publish-layout": cmd_publish_layout,
    "verify": cmd_verify,
    "unpack": cmd_unpack,
    "sanity": cmd_sanity,
    "synthetic": cmd_synthetic,
    "completion": cmd_completion,
}


@contextlib.contextmanager
def _signals_unwind() -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP become exceptions (KeyboardInterrupt, Terminated) raised where the
    program is, so that every temporary output is removed on the way out; further ones are ignored
    while that happens. Over a file-size limit (ulimit -f), writes fail with a message instead of
    the process dying from SIGXFSZ. The previous handlers come back afterwards."""

    def unwind(signum: int, _frame: FrameType | None) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        raise KeyboardInterrupt if signum == signal.SIGINT else Terminated(signum)

    handlers: dict[signal.Signals, Any] = {
        signal.SIGINT: unwind,
        signal.SIGTERM: unwind,
        signal.SIGHUP: unwind,
        signal.SIGXFSZ: signal.SIG_IGN,
    }
    try:
        previous = {sig: signal.signal(sig, handler) for sig, handler in handlers.items()}
    except ValueError:  # not the main thread: signals stay as they are
        previous = {}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    command = parser.commands[args.command]  # its usage goes with its errors
    if unknown:
        command.error(f"unrecognized arguments: {' '.join(unknown)}")
    error: str | None = None
    code = 1
    try:
        with _signals_unwind():
            code = COMMANDS[args.command](args)
            sys.stdout.flush()  # here, so that a closed pipe is caught below, not at exit
            return code
    except UsageError as e:
        command.error(str(e))  # exits 2
    except HeartmulaBurnError as e:
        error = str(e)
    except BrokenPipeError:
        # Output piped into e.g. `head`: not an error of ours. Point stdout at /dev/null so that
        # the interpreter's final flush does not complain again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as e:
        error = f"{e.filename}: {e.strerror or e}" if e.filename else str(e.strerror or e)
    except KeyboardInterrupt:
        error, code = "interrupted (SIGINT); nothing was written", 128 + signal.SIGINT
    except Terminated as t:
        error, code = f"stopped by {signal.Signals(t.signum).name}; nothing was written", 128 + t.signum
    with contextlib.suppress(OSError):  # the terminal may be gone (SIGHUP)
        _say(f"heartmula-burn: error: {error}")
    if code > 128 and any(t.name == hub.THREAD_NAME and t.is_alive() for t in threading.enumerate()):
        # A download's worker threads are mid-file, and the interpreter would wait for them at exit
        # (minutes for a 5 GB shard). Everything of ours is cleaned up already, and huggingface_hub
        # renames a file into place only when complete: leave now.
        with contextlib.suppress(OSError):
            sys.stderr.flush()
        os._exit(code)
    return code
