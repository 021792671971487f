"""`completion`: a shell completion script for the command."""

from __future__ import annotations

import argparse
from typing import Any

from ._common import (
    _one_of,
)

NAME = "completion"


def register(sub: Any) -> None:
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


def run(args: argparse.Namespace) -> int:
    import shtab

    from . import build_parser

    parser = build_parser()
    parser.prog = "heartmula-burn"  # completes the console script
    print(shtab.complete(parser, shell=args.shell))
    return 0
