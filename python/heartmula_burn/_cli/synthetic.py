"""`synthetic`: a checkpoint of random weights at realistic scales, laid out as upstream ships it."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from .._errors import OutputError
from .._fields import Fields
from .._presets import NAMED_MODELS, PRESETS, Preset, Shapes
from ._common import (
    UsageError,
    _count,
    _one_of,
    _say,
)

# "both": every model of one upstream folder the presets know (the name kept from when there were
# two); then each model packed by name, its upstream folders.
SYNTHETIC_MODELS = ("both", *(p.name for p in PRESETS), *(m.synthetic_name for m in NAMED_MODELS))
SYNTHETIC_DTYPES = ("F32", "BF16", "F16")

NAME = "synthetic"


def _full_shapes(preset: Preset) -> Shapes:
    return preset.expected_tensors(Fields(preset.synthetic_config(True), Path("config.json")))


def _description() -> str:
    """What `synthetic` writes, model by model, from the registry."""
    full = {p: _full_shapes(p) for p in PRESETS}
    folders = ", ".join(f"{p.folder_names[0]}/ with all {len(shapes)} tensor names" for p, shapes in full.items())
    runtime = sorted({name for p in PRESETS for name in p.synthetic_runtime_files()})
    sizes = " + ".join(f"{sum(math.prod(s) for s in shapes.values()) * 4 / 1e9:.2f} GB" for shapes in full.values())
    return (
        f"Write a CKPT_ROOT laid out as upstream ships it ({folders}{''.join(', ' + n for n in runtime)}), with "
        "deterministic random values at realistic scales (norm weights near 1, linear and conv weights about "
        f"1/sqrt(fan_in)). Tiny by default; --full writes the real shapes ({sizes} in F32)."
        + "".join(f" --model {m.synthetic_name} writes {m.synthetic_note}." for m in NAMED_MODELS)
    )


def register(sub: Any) -> None:
    titles = ", or ".join([" and ".join(p.title for p in PRESETS), *(m.title for m in NAMED_MODELS)])
    s = sub.add_parser(
        "synthetic",
        help=f"write a synthetic checkpoint ({titles}) for trying the tool, tests and benchmarks",
        description=_description(),
    )
    s.add_argument("output", metavar="CKPT_ROOT")
    s.add_argument(
        "--model",
        **_one_of(SYNTHETIC_MODELS),
        default="both",
        help="which models (default both)",
    )
    s.add_argument(
        "--full", action="store_true", help=f"the real shapes ({', '.join(p.folder_names[0] for p in PRESETS)})"
    )
    s.add_argument(
        "--dtype",
        **_one_of(SYNTHETIC_DTYPES, str.upper),
        default="F32",
        help="dtype of the tensors (any case; default F32)",
    )
    s.add_argument("-f", "--force", action="store_true", help="write into a folder that is not empty")
    fixed = "; ".join(f"{p.title} has {p.synthetic_shards}" for p in PRESETS if p.synthetic_shards is not None)
    s.add_argument(
        "--shards",
        type=_count,
        default=4,
        help=f"shards of each checkpoint{f' ({fixed}, as released)' if fixed else ''} (default 4)",
    )
    s.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    from .._synthetic import write_synthetic_checkpoint

    models = tuple(p.name for p in PRESETS) if args.model == "both" else (args.model,)
    out = Path(args.output)
    if out.is_dir() and any(out.iterdir()) and not args.force:
        # Beside a real CKPT_ROOT, synthetic weights must never replace real files unasked.
        raise OutputError.at(out, "is not empty: synthetic files would replace what is there (use --force)")
    named = next((m for m in NAMED_MODELS if m.synthetic_name == args.model), None)
    if named is not None:
        if args.dtype != "F32":
            raise UsageError(f"--model {args.model} writes the dtypes upstream ships: leave out --dtype")
        _say(f"wrote synthetic checkpoint {named.write_synthetic(out, full=args.full, seed=args.seed)} ({args.model})")
        return 0
    root = write_synthetic_checkpoint(
        args.output, full=args.full, dtype=args.dtype, num_shards=args.shards, seed=args.seed, models=models
    )
    _say(f"wrote synthetic checkpoint {root} ({', '.join(models)})")
    return 0
