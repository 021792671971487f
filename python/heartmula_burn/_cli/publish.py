"""`publish-layout`: the folder to publish on the Hub, and its push."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from .. import __version__
from .. import _hub as hub
from .._presets import NAMED_MODELS, PRESETS, RUNTIME_FILES, runtime_file_option
from ._common import (
    UsageError,
    _say,
)

NAME = "publish-layout"


def _dest(runtime_file: str) -> str:
    return "runtime_file_" + runtime_file.replace(".", "_")


def _description() -> str:
    """What `publish-layout` assembles, from the registry."""
    lead = next((p for p in PRESETS if p.runtime_files), None)
    text = (
        "Assemble OUT_DIR with the packs (named "
        + " / ".join(p.pack_name for p in PRESETS)
        + " by what they hold, hard-linked when possible)"
    )
    if lead is not None:
        others = [p.pack_name for p in PRESETS if p is not lead]
        files = len(PRESETS) + len(lead.runtime_files)
        text += f", {' and '.join(lead.runtime_files)} (with a {lead.title} pack)"
    text += (
        ", a .gitattributes routing *.bpk and files over 10 MB through Git LFS, and a README.md model card whose "
        "figures (tensor counts, dtypes, architecture, sizes, sha256) are read from the packs."
    )
    if lead is not None and others:
        text += (
            f" With only a {lead.title} pack given, {' and '.join(others)} beside it "
            f"{'is' if len(others) == 1 else 'are'} included too: the {files} files a Burn {lead.title} runtime loads."
        )
    return text + "".join(f" {m.publish_note}." for m in NAMED_MODELS)


def register(sub: Any) -> None:
    pl = sub.add_parser(
        "publish-layout",
        help="assemble a folder to publish as a model repository",
        description=_description(),
    )
    pl.add_argument("out_dir", metavar="OUT_DIR")
    pl.add_argument("--pack", required=True, action="append", help="a pack to publish (repeat for each)")
    for preset in PRESETS:  # each model's runtime files: tokenizer.json -> --tokenizer
        for name in preset.runtime_files:
            pl.add_argument(
                runtime_file_option(name),
                dest=_dest(name),
                metavar="PATH",
                help=f"{name} (default: beside the {preset.title} pack)",
            )
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


def run(args: argparse.Namespace) -> int:
    from .._publish import packs_beside, publish_layout

    if not args.push and (args.private or args.revision or args.dry_run):
        raise UsageError("--private, --revision and --dry-run go with --push REPO_ID")
    packs = [Path(p) for p in args.pack]
    if len(packs) == 1:
        for found in packs_beside(packs[0]):
            packs.append(found)
            if not args.quiet:
                _say(f"note: including {found}, found beside {packs[0]}")
    bar = None
    if not args.quiet and sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(unit="B", unit_scale=True, unit_divisor=1024, desc="sha256", file=sys.stderr)
    try:
        summary = publish_layout(
            args.out_dir,
            packs,
            runtime_files={n: getattr(args, _dest(n)) for n in RUNTIME_FILES if getattr(args, _dest(n)) is not None},
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
    from .._publish import commit_message, in_lfs

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
