"""Command line: `python -m heartmula_burn COMMAND ...` (see --help), one module per command, each
with its `NAME`, `register(subparsers)` and `run(args)`.

Exit codes: 0 ok; 1 failure (one line on stderr naming the file and tensor, nothing half-written);
2 usage; 128+N when stopped by signal N (130 Ctrl-C, 143 SIGTERM, 129 SIGHUP), the destination
untouched and no temporary file left."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any, Callable

from .. import __version__
from .. import _hub as hub
from .._errors import HeartmulaBurnError
from .._presets import NAMED_MODELS, PRESETS
from . import completion, download, export_raw, inspect, manifest, pack, publish, sanity, synthetic, unpack, verify
from ._common import FOLDERS, Parser, Terminated, UsageError, _say

_PACKS = ", ".join(p.pack_name for p in PRESETS)
_RUNTIME = ", ".join(dict.fromkeys(f for p in PRESETS for f in p.runtime_files))
_NAMED = " and ".join(m.title for m in NAMED_MODELS)
_VARIANTS = ", ".join(v for m in NAMED_MODELS for v in m.variants)
DESCRIPTION = (
    f"""\
Convert the checkpoints of {", ".join(p.title for p in PRESETS)} and {_NAMED} (or any safetensors
checkpoint) into Burn packs (.bpk) that Burn's BurnpackStore loads directly, laid out as the runtime
loads them. CKPT_ROOT is laid out as upstream ships it:
"""
    + "".join(
        f"  CKPT_ROOT/{p.folder_names[0]}/{{config.json, model.safetensors.index.json, model-*.safetensors}}\n"
        for p in PRESETS
    )
    + f"""\
  CKPT_ROOT/{{{_RUNTIME}}}
`pack CKPT_ROOT -o OUT/` writes the folder a Burn runtime loads: {_PACKS}, {_RUNTIME}.
A model folder is found by its config.json, whatever its name (upstream's are {FOLDERS}).
A folder holding a single model.safetensors, or shards without an index, works too.
`pack CKPT_ROOT --model NAME -o OUT/` writes the runtime folder of a model made of several
upstream repositories ({_VARIANTS}; `download --model NAME CKPT_ROOT` fetches them)."""
)

# In the order --help lists them.
COMMAND_MODULES = (
    pack,
    download,
    manifest,
    inspect,
    export_raw,
    publish,
    verify,
    unpack,
    sanity,
    synthetic,
    completion,
)
COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {m.NAME: m.run for m in COMMAND_MODULES}


def build_parser() -> Parser:
    parser = Parser(
        prog="python -m heartmula_burn", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"heartmula-burn {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.register(sub)
    parser.commands = dict(sub.choices)
    return parser


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
        error, code = "interrupted (SIGINT); nothing was put in place", 128 + signal.SIGINT
    except Terminated as t:
        error, code = f"stopped by {signal.Signals(t.signum).name}; nothing was put in place", 128 + t.signum
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
