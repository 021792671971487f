"""`export-raw`: every tensor of a checkpoint as a .npy file, for runtimes that read those."""

from __future__ import annotations

import argparse
from typing import Any

from .._manifest import PLAIN_DTYPE_CHOICES
from .._presets import PRESETS
from ._common import (
    DTYPE_HELP,
    _one_of,
    _progress_bar,
    _say,
)

NAME = "export-raw"


def register(sub: Any) -> None:
    e = sub.add_parser(
        "export-raw",
        help="export a checkpoint to one .npy per tensor plus a manifest (the two-step workflow)",
        description="Write OUTPUT_ROOT/<model>_raw_<dtype>/ for every model of CKPT_ROOT ("
        + ", ".join(f"{p.name}_raw_f32" for p in PRESETS)
        + ": one .npy per tensor, bf16 stored as <u2, a manifest.json and the runtime files its pack needs)"
        + "".join(f", plus {' and '.join(p.runtime_files)} in OUTPUT_ROOT" for p in PRESETS if p.runtime_files)
        + f". `pack --manifest OUTPUT_ROOT/{PRESETS[0].name}_raw_<dtype>/manifest.json` then gives the same pack, "
        "byte for byte, as the one-step pack.",
    )
    e.add_argument("--checkpoint-root", required=True, metavar="CKPT_ROOT", help="checkpoint folder")
    e.add_argument(
        "--subdir", "--heartmula-subdir", dest="subdir", metavar="NAME", help="only this model folder in CKPT_ROOT"
    )
    e.add_argument(
        "--output-root", required=True, metavar="DIR", help=f"e.g. artifacts/{PRESETS[0].folder_names[0].lower()}"
    )
    # .npy has no quantized dtypes: the raw export writes plain ones only.
    e.add_argument("--dtype", **_one_of(PLAIN_DTYPE_CHOICES), default="f32", help=DTYPE_HELP)
    e.add_argument("--any-model", action="store_true", help="skip the presets' checks")
    e.add_argument("-f", "--force", action="store_true", help="replace an existing export")
    e.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from .._export import export_raw

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
