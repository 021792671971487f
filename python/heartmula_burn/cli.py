"""Command line: `python -m heartmula_burn {pack,manifest,inspect,synthetic} ...`.

Exit codes: 0 ok, 1 failure (one-line message on stderr, nothing half-written), 2 usage."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
from pathlib import Path

from . import __version__
from .checkpoint import HEARTMULA_SUBDIR, load_checkpoint
from .errors import HeartmulaBurnError
from .manifest import DTYPE_CHOICES, Manifest, build_manifest
from .packfile import open_pack
from .packing import pack_manifest

BURN_VERSIONS = ("0.21", "0.22", "0.20", "0.19")

DESCRIPTION = """\
Convert a HeartMuLa (or any safetensors) checkpoint into a Burn pack (.bpk) that Burn's
BurnpackStore loads directly. CKPT_ROOT is laid out as upstream ships it:
  CKPT_ROOT/HeartMuLa-oss-3B/{config.json, model.safetensors.index.json, model-*.safetensors}
  CKPT_ROOT/tokenizer.json, CKPT_ROOT/gen_config.json
A folder holding a single model.safetensors, or shards without an index, works too."""


def _add_source_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("ckpt_root", metavar="CKPT_ROOT", nargs="?", help="checkpoint folder (or one .safetensors file)")
    p.add_argument(
        "--subdir",
        metavar="NAME",
        help=f"model folder inside CKPT_ROOT (default: {HEARTMULA_SUBDIR} if present, else CKPT_ROOT itself)",
    )
    p.add_argument(
        "--dtype",
        choices=DTYPE_CHOICES,
        default="f32",
        help="dtype of float tensors in the pack: f32 (default, as upstream), bf16, f16, or source (keep each "
        "tensor's own). Narrowing rounds to nearest even, like torch; integer tensors are never converted",
    )
    p.add_argument(
        "--any-model",
        action="store_true",
        help="pack any safetensors checkpoint as is, without checking it against the HeartMuLa preset",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m heartmula_burn", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"heartmula-burn {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "pack",
        help="pack a checkpoint (or a manifest) into a .bpk",
        description="Pack a checkpoint into a Burn pack. The HeartMuLa preset first checks that all 289 tensors "
        "are present with the shapes config.json implies. The pack is written to a temporary file beside the "
        "output and renamed into place only when complete; tokenizer.json and gen_config.json are copied beside it.",
    )
    _add_source_args(p)
    p.add_argument("-o", "--output", default="heartmula.bpk", help="output pack (default: ./heartmula.bpk)")
    p.add_argument(
        "--manifest", metavar="FILE", help="pack exactly what this manifest describes (instead of CKPT_ROOT)"
    )
    p.add_argument("-f", "--force", action="store_true", help="replace an existing output file")
    p.add_argument(
        "--burn-version",
        "--burn-layout",
        dest="burn_version",
        choices=BURN_VERSIONS,
        default="0.21",
        help="Burn release whose reader the pack targets (default 0.21, also right for 0.22). 0.19 wrote no "
        "alignment padding: its readers misread 0.20+ packs and vice versa, silently; 0.20 spells Bool differently",
    )
    p.add_argument("--no-extras", action="store_true", help="do not copy tokenizer.json / gen_config.json")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print a machine-readable summary on stdout")

    m = sub.add_parser(
        "manifest",
        help="write the manifest a pack would use, to edit names, order or dtypes",
        description="Write the manifest (ordered tensors, sources, dtypes, metadata) for CKPT_ROOT. Edit it and "
        "pack it with `pack --manifest FILE`. Paths inside are relative to the manifest's folder.",
    )
    _add_source_args(m)
    m.add_argument("-o", "--output", default="manifest.json", help="manifest file (default: ./manifest.json)")
    m.add_argument("-f", "--force", action="store_true", help="replace an existing manifest")

    i = sub.add_parser(
        "inspect",
        help="show a pack's metadata and tensors",
        description="Show a Burn pack's layout, metadata and tensor table.",
    )
    i.add_argument("pack", metavar="FILE.bpk")
    i.add_argument("--json", action="store_true", help="print everything as JSON")

    e = sub.add_parser(
        "export-raw",
        help="export a checkpoint to one .npy per tensor plus a manifest (the two-step workflow)",
        description="Write OUTPUT_ROOT/heartmula_raw_<dtype>/ (one .npy per tensor, bf16 stored as <u2, and a "
        "manifest.json) plus tokenizer.json and gen_config.json in OUTPUT_ROOT. `pack --manifest "
        "OUTPUT_ROOT/heartmula_raw_<dtype>/manifest.json` then gives the same pack, byte for byte, as the one-step pack.",
    )
    e.add_argument("--checkpoint-root", required=True, metavar="CKPT_ROOT", help="checkpoint folder")
    e.add_argument(
        "--heartmula-subdir", metavar="NAME", help=f"model folder inside CKPT_ROOT (default {HEARTMULA_SUBDIR})"
    )
    e.add_argument("--output-root", required=True, metavar="DIR", help="e.g. artifacts/heartmula-oss-3b")
    e.add_argument("--dtype", choices=DTYPE_CHOICES, default="f32", help="dtype of float tensors (default f32)")
    e.add_argument("--any-model", action="store_true", help="skip the HeartMuLa check")
    e.add_argument("-f", "--force", action="store_true", help="replace an existing export")
    e.add_argument("-q", "--quiet", action="store_true", help="no progress bar")

    pl = sub.add_parser(
        "publish-layout",
        help="assemble a folder to publish as a model repository",
        description="Assemble OUT_DIR with heartmula.bpk (hard-linked when possible), tokenizer.json, gen_config.json, "
        "a .gitattributes routing *.bpk and files over 10 MB through Git LFS, and a README.md model card whose "
        "figures (tensor count, dtype, architecture, sizes, sha256) are read from the pack.",
    )
    pl.add_argument("out_dir", metavar="OUT_DIR")
    pl.add_argument("--pack", required=True, help="the pack to publish")
    pl.add_argument("--tokenizer", help="tokenizer.json (default: beside the pack)")
    pl.add_argument("--gen-config", help="gen_config.json (default: beside the pack)")
    pl.add_argument("-f", "--force", action="store_true", help="replace an existing OUT_DIR")
    pl.add_argument("-q", "--quiet", action="store_true", help="no progress bar")

    v = sub.add_parser(
        "verify",
        help="check a pack bit for bit against its checkpoint or manifest, and its container",
        description="Stream the pack and its source and check every tensor bit for bit (or against the exact "
        "cast when dtypes differ), plus the container: header, metadata limits, offsets, 256-byte alignment, "
        "overlaps, zero padding, sizes. Each problem is reported with the tensor's name; exit 1 on any.",
    )
    v.add_argument("pack", metavar="PACK")
    v.add_argument("--against", required=True, metavar="CKPT_ROOT|MANIFEST", help="checkpoint folder or manifest.json")
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
        help="run HeartMuLa from a pack's weights and check that it behaves (needs torch)",
        description="Load the pack tensor by tensor (zero-copy from the mapped file) and run a deterministic "
        "HeartMuLa forward in f32 on fixed token ids: every weight finite, codebook-0 logits of the prompt, "
        "teacher-forced logits of codebooks 1-7, a second frame through the KV cache (and against a full "
        "recompute), greedy decoding of --frames frames. With --reference (the checkpoint folder or another "
        "pack) the same forward runs on the reference weights cast to the pack's dtypes and must agree "
        "exactly; for a lossy pack (e.g. BF16 from F32) the difference from the uncast reference is reported. "
        "Exit 0 when every check passes, 1 otherwise. Needs PyTorch: pip install 'heartmula-burn[sanity]'.",
    )
    sn.add_argument("pack", metavar="PACK")
    sn.add_argument("--reference", metavar="CKPT_ROOT|PACK", help="compare with this checkpoint folder or pack")
    sn.add_argument("--subdir", metavar="NAME", help="model folder inside the reference CKPT_ROOT")
    sn.add_argument("--device", default="auto", help="auto (cuda when available, else cpu), cuda, cuda:N or cpu")
    sn.add_argument("--frames", type=int, default=2, help="audio frames to decode greedily (default 2)")
    sn.add_argument(
        "--config",
        metavar="CONFIG_JSON",
        help="the model's config.json (default: the one in the pack's metadata, else the reference's)",
    )
    sn.add_argument("--json", action="store_true", help="print every check and figure as JSON on stdout")

    s = sub.add_parser(
        "synthetic",
        help="write a synthetic HeartMuLa checkpoint (for trying the tool, tests and benchmarks)",
        description="Write a checkpoint with all 289 upstream tensor names, laid out as upstream ships it, with "
        "deterministic random values. Tiny by default; --full writes the real shapes (15.75 GB in F32).",
    )
    s.add_argument("output", metavar="CKPT_ROOT")
    s.add_argument("--full", action="store_true", help="real HeartMuLa-oss-3B shapes (15.75 GB in F32)")
    s.add_argument("--dtype", choices=("F32", "BF16", "F16"), default="F32")
    s.add_argument("--shards", type=int, default=4)
    s.add_argument("--seed", type=int, default=0)
    return parser


_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def _size(text: str) -> int:
    """'5GB' -> 5000000000, '2GiB' -> 2147483648, '1000' -> 1000."""
    import re

    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    if not m or m.group(2).upper() not in _UNITS:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 5GB, 500MB, 2GiB)")
    value = int(float(m.group(1)) * _UNITS[m.group(2).upper()])
    if value <= 0:
        raise argparse.ArgumentTypeError(f"size must be positive: {text!r}")
    return value


@contextlib.contextmanager
def _progress_bar(quiet: bool, desc: str = "packing"):
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


class UsageError(Exception):
    """Arguments that parse but do not make sense together: exit 2, with the usage line."""


def _load_manifest(args) -> Manifest:
    if args.manifest:
        if args.ckpt_root:
            raise UsageError("give either CKPT_ROOT or --manifest, not both")
        return Manifest.load(args.manifest)
    if not args.ckpt_root:
        raise UsageError("give a CKPT_ROOT (or --manifest FILE)")
    return build_manifest(load_checkpoint(args.ckpt_root, args.subdir), dtype=args.dtype, any_model=args.any_model)


def cmd_pack(args) -> int:
    manifest = _load_manifest(args)
    output = Path(args.output)
    with _progress_bar(args.quiet) as update:
        summary = pack_manifest(
            manifest,
            output,
            force=args.force,
            burn_version=args.burn_version,
            progress=update,
            copy_extras=not args.no_extras,
        )
    rate = summary["data_bytes"] / summary["seconds"] / 1e6 if summary["seconds"] > 0 else 0.0
    summary["mb_per_s"] = round(rate, 1)
    if args.json:
        print(json.dumps(summary, indent=2))
    elif not args.quiet:
        print(
            f"wrote {output} ({summary['tensors']} tensors, {summary['file_size']:,} bytes, {summary['dtype']}) "
            f"in {summary['seconds']:.1f} s ({rate:.0f} MB/s)",
            file=sys.stderr,
        )
        for extra in summary["extras"]:
            print(f"copied {extra}", file=sys.stderr)
    return 0


def cmd_manifest(args) -> int:
    manifest = build_manifest(load_checkpoint(args.ckpt_root, args.subdir), dtype=args.dtype, any_model=args.any_model)
    out = Path(args.output)
    manifest.save(out, overwrite=args.force)
    print(f"wrote {out} ({len(manifest.tensors)} tensors, {manifest.total_bytes:,} bytes of data)", file=sys.stderr)
    return 0


def cmd_inspect(args) -> int:
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
                    for t in pack
                ],
            }
            print(json.dumps(doc, indent=2))
            return 0
        print(f"{pack.path}: Burn pack, {pack.file_size:,} bytes, layout {pack.layout}, {len(pack)} tensors")
        for k, v in pack.metadata.items():
            print(f"  {k} = {v}")
        width = max((len(t.name) for t in pack), default=4)
        print(f"  {'name':<{width}}  {'dtype':<5}  {'shape':<22}  offset")
        for t in pack:
            print(f"  {t.name:<{width}}  {t.dtype:<5}  {list(t.shape)!s:<22}  {t.file_offset}")
    return 0


def cmd_export_raw(args) -> int:
    from .export import export_raw

    with _progress_bar(args.quiet, "exporting") as update:
        summary = export_raw(
            args.checkpoint_root,
            args.output_root,
            subdir=args.heartmula_subdir,
            dtype=args.dtype,
            any_model=args.any_model,
            force=args.force,
            progress=update,
        )
    if not args.quiet:
        print(
            f"wrote {summary['output']} ({summary['tensors']} tensors); pack it with: "
            f"python -m heartmula_burn pack --manifest {summary['manifest']} -o heartmula.bpk",
            file=sys.stderr,
        )
    return 0


def cmd_publish_layout(args) -> int:
    from .publish import publish_layout

    bar = None
    if not args.quiet and sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(unit="B", unit_scale=True, unit_divisor=1024, desc="sha256", file=sys.stderr)
    try:
        summary = publish_layout(
            args.out_dir,
            args.pack,
            tokenizer=args.tokenizer,
            gen_config=args.gen_config,
            force=args.force,
            progress=bar.update if bar is not None else None,
        )
    finally:
        if bar is not None:
            bar.close()
    if not args.quiet:
        print(f"wrote {summary['output']}", file=sys.stderr)
    return 0


def cmd_verify(args) -> int:
    from .verify import verify

    with _progress_bar(args.quiet, "verifying") as update:
        problems = verify(args.pack, args.against, subdir=args.subdir, progress=update)
    for line in problems:
        print(f"heartmula-burn: {line}", file=sys.stderr)
    if problems:
        print(f"heartmula-burn: error: {args.pack}: {len(problems)} problem(s) found", file=sys.stderr)
        return 1
    if not args.quiet:
        print(f"{args.pack}: ok, every tensor matches {args.against}", file=sys.stderr)
    return 0


def cmd_unpack(args) -> int:
    from .verify import unpack

    with _progress_bar(args.quiet, "unpacking") as update:
        summary = unpack(args.pack, args.output, max_shard_size=args.max_shard_size, force=args.force, progress=update)
    if not args.quiet:
        print(
            f"wrote {summary['output']} ({len(summary['shards'])} shard(s), {summary['data_bytes']:,} bytes)",
            file=sys.stderr,
        )
    return 0


def cmd_sanity(args) -> int:
    from .sanity import format_table, run

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
        print(format_table(result))
    if not result.ok:
        failed = "; ".join(f"{c.name} ({c.figure})" for c in result.failed[:3])
        more = f"; and {len(result.failed) - 3} more" if len(result.failed) > 3 else ""
        print(f"heartmula-burn: error: {args.pack}: sanity check failed: {failed}{more}", file=sys.stderr)
        return 1
    return 0


def cmd_synthetic(args) -> int:
    from .synthetic import write_synthetic_checkpoint

    root = write_synthetic_checkpoint(
        args.output, full=args.full, dtype=args.dtype, num_shards=args.shards, seed=args.seed
    )
    print(f"wrote synthetic checkpoint {root}", file=sys.stderr)
    return 0


COMMANDS = {
    "pack": cmd_pack,
    "manifest": cmd_manifest,
    "inspect": cmd_inspect,
    "export-raw": cmd_export_raw,
    "publish-layout": cmd_publish_layout,
    "verify": cmd_verify,
    "unpack": cmd_unpack,
    "sanity": cmd_sanity,
    "synthetic": cmd_synthetic,
}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # Over a file-size limit (ulimit -f), fail with a message instead of dying from SIGXFSZ.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    try:
        return COMMANDS[args.command](args)
    except UsageError as e:
        parser.error(str(e))  # exits 2
    except HeartmulaBurnError as e:
        print(f"heartmula-burn: error: {e}", file=sys.stderr)
    except BrokenPipeError:
        # Output piped into e.g. `head`: not an error of ours. Point stdout at /dev/null so that
        # the interpreter's final flush does not complain again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as e:
        where = f"{e.filename}: " if e.filename else ""
        print(f"heartmula-burn: error: {where}{e.strerror or e}", file=sys.stderr)
    except KeyboardInterrupt:
        print("heartmula-burn: interrupted; nothing was written", file=sys.stderr)
    return 1
