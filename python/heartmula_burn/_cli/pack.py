"""`pack`: a checkpoint (every model in it), a manifest or the Hub's repositories into packs."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
from pathlib import Path
from typing import Any

from .._hub.packing import pack_streamed, plan_hub, plan_hub_stream, stream_repositories
from .._hub.stream import RETRY_WINDOW_SECONDS, STREAMS, Streamer
from .._manifest import Manifest
from .._packing import (
    BURN_VERSIONS,
    Conversion,
    Job,
    ProgressFn,
    checked_options,
    manifest_job,
    pack_manifests,
    plan_checkpoint,
    target_burn_version,
)
from .._presets import PRESETS, RUNTIME_FILES, named_model
from ._common import (
    DTYPE_HELP,
    UsageError,
    _add_folder_model_args,
    _add_hub_args,
    _add_source_args,
    _connections,
    _folder_model_specs,
    _hub_specs,
    _misplaced_folder_model_options,
    _one_of,
    _progress_bar,
    _say,
    _seconds,
)

NAME = "pack"
RUNTIME_LIST = ", ".join(RUNTIME_FILES)


def register(sub: Any) -> None:
    p = sub.add_parser(
        "pack",
        help="pack a checkpoint (every model in it) or a manifest into .bpk files",
        description="Pack every model of CKPT_ROOT ("
        + ", ".join(f"{q.title} -> {q.pack_name}" for q in PRESETS)
        + "), each first checked by its preset: every tensor config.json implies, with its shape. Their runtime "
        f"files ({RUNTIME_LIST}) are copied beside. --model NAME writes instead the runtime folder of a model made "
        "of several upstream repositories (ACE-Step 1.5). All outputs are written to temporary files beside their destinations "
        "and put in place together once complete and on disk: on any failure, Ctrl-C or SIGTERM the output "
        "folder is exactly as it was.",
    )
    _add_source_args(p, DTYPE_HELP)
    p.add_argument(
        "-o",
        "--output",
        help="output pack, or a folder (an existing one, or a path ending in '/', created if missing) for all packs; "
        "other packs go "
        "beside the first under their own names (default: "
        + ", ".join(f"./{q.pack_name}" for q in PRESETS)
        + "); with --model, the folder (default: the current one)",
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
        default=None,
        help="Burn release whose reader the pack targets (default: 0.21, which 0.22 reads too; 0.22 for --dtype q8, "
        "whose quantized descriptors only 0.22 and later read). 0.19 wrote no "
        "alignment padding: its readers misread 0.20+ packs and vice versa, silently; 0.20 spells Bool differently",
    )
    p.add_argument("--no-extras", action="store_true", help=f"do not copy the runtime files ({RUNTIME_LIST}, ...)")
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
    p.add_argument(
        "--stream",
        action="store_true",
        help="with --hub: do not download the shards; read them from the Hub in ranges straight into the packs "
        "(several shards at once, dropped or stalled connections resumed, expired locations renewed), each checked "
        "against the Hub's sha256 before anything is put in place. Needs no disk beyond the packs. Interrupted "
        "(Ctrl-C, a crash, the network down), it leaves hidden partial packs beside the outputs: the same command "
        "continues them, fetching only what is missing; --json adds what the transfer took",
    )
    p.add_argument(
        "--connections",
        type=_connections,
        default=STREAMS,
        metavar="N",
        help=f"with --stream: transfers at once, header reads included, one connection each (default {STREAMS})",
    )
    p.add_argument(
        "--fresh",
        action="store_true",
        help="with --stream: discard the partial packs an interrupted run left and start over",
    )
    p.add_argument(
        "--retry-window",
        type=_seconds,
        default=RETRY_WINDOW_SECONDS,
        metavar="SECONDS",
        help="with --stream: keep retrying a shard (backoff with jitter, the server's Retry-After obeyed) until it "
        f"has made no progress for this long (default {RETRY_WINDOW_SECONDS:.0f})",
    )
    _add_folder_model_args(
        p,
        "write this model's runtime folder, from CKPT_ROOT laid out as `download --model NAME` lays it out, or "
        "with --hub from its repositories (default: the models CKPT_ROOT holds, found by their config.json)",
    )
    _add_hub_args(p)


def _hub_jobs(args: argparse.Namespace) -> tuple[list[Job], list[str]]:
    if args.ckpt_root or args.manifest or args.subdir:
        raise UsageError("--hub downloads the checkpoint: give no CKPT_ROOT, --manifest or --subdir with it")
    return plan_hub(
        _hub_specs(args),
        args.output,
        dtype=args.dtype,
        any_model=args.any_model,
        ckpt_root=args.hub_root,
        force=args.force,
        say=None if args.quiet else _say,
        quiet=args.quiet,
        q_block=args.q_block,
    )


def _stream_jobs(args: argparse.Namespace) -> tuple[list[Job], list[str], Streamer]:
    if not args.hub:
        raise UsageError("--stream goes with --hub (it reads the shards from the Hub)")
    if args.ckpt_root or args.manifest or args.subdir or args.hub_root:
        raise UsageError(
            "--hub --stream leaves the shards on the Hub: give no CKPT_ROOT, --manifest, --subdir or --ckpt-root"
        )
    return plan_hub_stream(
        _hub_specs(args),
        args.output,
        dtype=args.dtype,
        any_model=args.any_model,
        say=None if args.quiet else _say,
        quiet=args.quiet,
        q_block=args.q_block,
        connections=args.connections,
        fresh=args.fresh,
        retry_window=args.retry_window,
    )


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
    return plan_checkpoint(
        args.ckpt_root,
        args.output,
        dtype=args.dtype,
        any_model=args.any_model,
        subdir=args.subdir,
        q_block=args.q_block,
    )


def run(args: argparse.Namespace) -> int:
    if args.model is not None:
        return _run_folder_model(args)
    _misplaced_folder_model_options(args)
    try:
        checked_options(args.dtype, args.burn_version, args.q_block)
    except ValueError as e:
        raise UsageError(str(e)) from None
    streamer = None
    if args.stream:
        jobs, notes, streamer = _stream_jobs(args)
    else:
        jobs, notes = _pack_jobs(args)
    try:
        burn_version = target_burn_version(jobs, args.burn_version)  # a quantized manifest needs 0.22
    except ValueError as e:
        if streamer is not None:
            streamer.close()  # the transfers wait for packs that will not be staged
        raise UsageError(str(e)) from None
    if streamer is not None:
        result = pack_streamed(
            streamer, jobs, force=args.force, burn_version=burn_version, copy_extras=not args.no_extras, notes=notes
        )
    else:
        with contextlib.ExitStack() as bars:

            def progress(job: Job) -> ProgressFn | None:
                return bars.enter_context(_progress_bar(args.quiet, job.output.name))

            result = pack_manifests(
                jobs,
                force=args.force,
                burn_version=burn_version,
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
    if result.streamed:
        s = result.streamed
        rate = s["fetched_bytes"] / s["seconds"] / 1e6 if s["seconds"] > 0 else 0.0
        _say(
            f"streamed {s['shards']} shards, {s['fetched_bytes']:,} bytes in {s['seconds']:.1f} s ({rate:.0f} MB/s, "
            f"{s['retries']} retries; slowest shard {s['slowest_shard']}: {s['slowest_shard_seconds']:.1f} s), "
            "every one matching the Hub's sha256"
        )


def _run_folder_model(args: argparse.Namespace) -> int:
    """`pack --model NAME`: a named model's runtime folder, from CKPT_ROOT or the Hub."""
    from .. import _hub as hub

    model = named_model(args.model)
    if args.manifest or args.subdir or args.any_model:
        raise UsageError(
            f"--model {args.model} packs its upstream folders: give no --manifest, --subdir or --any-model"
        )
    if args.dtype != "f32":
        raise UsageError(f"{model.dtype_note}: no --dtype {args.dtype}")
    streamer = None
    remote = None
    if args.stream:
        if not args.hub:
            raise UsageError("--stream goes with --hub (it reads the shards from the Hub)")
        if args.ckpt_root or args.hub_root:
            raise UsageError("--hub --stream leaves the shards on the Hub: give no CKPT_ROOT or --ckpt-root")
        fetched, streamer, remote = stream_repositories(
            _folder_model_specs(args),
            say=None if args.quiet else _say,
            quiet=args.quiet,
            connections=args.connections,
            fresh=args.fresh,
            retry_window=args.retry_window,
        )
        folders = {f.spec.folder or "": f.snapshot for f in fetched}
    elif args.hub:
        if args.ckpt_root:
            raise UsageError("--hub downloads the checkpoint: give no CKPT_ROOT with it (--ckpt-root DIR lays it out)")
        fetched = hub.download(_folder_model_specs(args), say=None if args.quiet else _say, quiet=args.quiet)
        if args.hub_root:
            hub.lay_out(Path(args.hub_root), fetched, force=args.force)
            folders = model.local_folders(args.hub_root)
        else:
            folders = {f.spec.folder or "": f.snapshot for f in fetched}
    elif not args.ckpt_root:
        raise UsageError(
            f"give a CKPT_ROOT (laid out as `download --model {args.model} CKPT_ROOT` lays it out) or --hub"
        )
    else:
        folders = model.local_folders(args.ckpt_root)
    try:
        try:
            plan = model.plan(folders, args.output, args.model, vars(args), remote=remote)
        except ValueError as e:
            raise UsageError(str(e)) from None
        with contextlib.ExitStack() as bars:

            def progress(job: Job) -> ProgressFn | None:
                return bars.enter_context(_progress_bar(args.quiet, job.output.name))

            result = model.pack(
                plan,
                force=args.force,
                progress_for=None if streamer else progress,
                copy_extras=not args.no_extras,
                stage_packs=streamer.stage if streamer else None,
                burn_version=args.burn_version,
            )
    finally:
        if streamer is not None:
            streamer.close()
    if streamer is not None:
        result = dataclasses.replace(result, streamed=streamer.stats.to_dict())
    _report_pack(args, result)
    return 0
