"""`download`: the three repositories a conversion needs, laid out as upstream's README does."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from .. import _hub as hub
from .._presets import NAMED_MODELS, PRESETS, RUNTIME_FILES
from ._common import (
    _add_folder_model_args,
    _add_hub_args,
    _folder_model_specs,
    _hub_specs,
    _misplaced_folder_model_options,
    _say,
)

NAME = "download"


def register(sub: Any) -> None:
    d = sub.add_parser(
        "download",
        help=f"fetch {', '.join(q.title for q in PRESETS)} and their runtime files (or, with --model, another "
        "model's repositories) from the Hugging Face Hub into CKPT_ROOT",
        description="Fetch the repositories a conversion needs through huggingface_hub (each model's default "
        f"release, and {' + '.join(RUNTIME_FILES)}), only the files a conversion reads, into the Hugging Face "
        "cache, and lay them out as upstream's README does: "
        + ", ".join([*(f"CKPT_ROOT/{q.folder_names[0]}/" for q in PRESETS), *(f"CKPT_ROOT/{f}" for f in RUNTIME_FILES)])
        + ", as links into the "
        "cache (stored once, shared with other tools; a second run downloads nothing). Free space is checked "
        "before a byte is fetched. Each revision's commit is printed and recorded: packs made from CKPT_ROOT "
        "carry source_repo and source_revision.",
    )
    d.add_argument("ckpt_root", metavar="CKPT_ROOT", help="folder to lay the checkpoint out in (created if missing)")
    _add_hub_args(d)
    _add_folder_model_args(
        d,
        "fetch this model's repositories instead (only the files its runtime folder is made from), laid out as "
        "`pack CKPT_ROOT --model NAME` reads them, each in the folder of its name: "
        + ", ".join(f"CKPT_ROOT/{folder}/" for m in NAMED_MODELS for folder in m.repositories),
    )
    d.add_argument("-f", "--force", action="store_true", help="replace files in CKPT_ROOT this command did not make")
    d.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    d.add_argument("--json", action="store_true", help="print what was fetched (repositories, commits, files) as JSON")


def run(args: argparse.Namespace) -> int:
    root = Path(args.ckpt_root)
    _misplaced_folder_model_options(args)
    specs = _folder_model_specs(args) if args.model is not None else _hub_specs(args)
    fetched = hub.download(specs, say=None if args.quiet else _say, quiet=args.quiet)
    written = hub.lay_out(root, fetched, force=args.force)
    if args.json:
        print(json.dumps({"ckpt_root": str(root), "repos": [f.to_dict() for f in fetched]}, indent=2))
    if not args.quiet:
        _say(f"laid out {root}: {', '.join(p.name for p in written)} (links into the Hugging Face cache)")
    return 0
