"""The runtime files beside the packs (tokenizer.json, gen_config.json): checked before a byte of
them is copied, staged into an output folder without clobbering a different file, and reported
when they resolve outside the folder they were found in. Pack, export-raw and publish-layout all
place them through here."""

from __future__ import annotations

import filecmp
import os
from pathlib import Path

from ._atomic import check_replaceable
from ._checkpoint import runtime_file_origin
from ._errors import OutputError, SourceError
from ._fields import open_regular
from ._presets import PRESETS, preset_named


def check_runtime_file(name: str, source: Path, model: str | None = None) -> None:
    """Refuses a runtime file that is not what its name says, before a byte of it is copied. The
    content is judged by the preset of the pack it goes with (`model`, the pack's `model`
    metadata) when that preset ships a file of this name (HeartMuLa: tokenizer.json,
    gen_config.json); another model's file of the same name is not judged by HeartMuLa's rules.
    For a pack of no model (--any-model, a manifest), the preset that ships the name judges it.
    Any file must be a regular one, read with a size cap, never a FIFO or a device (a planted
    link to /dev/zero)."""
    if model:
        owner = preset_named(model)
    else:
        owner = next((p for p in PRESETS if name in p.runtime_files), None)
    if owner is not None and name in owner.runtime_files:
        owner.check_runtime_file(name, source)
    try:
        os.close(open_regular(source, SourceError, name))
    except FileNotFoundError:
        raise SourceError.at(source, f"{name} not found") from None
    except OSError as e:
        raise SourceError.at(source, f"cannot read {name}: {e.strerror or e}") from None


def runtime_notes(extras: dict[str, Path]) -> list[str]:
    """A note for each runtime file that resolves outside the folder it was found in (a link to a
    file elsewhere): the summary says from where it was copied."""
    notes = []
    for name, source in extras.items():
        origin = runtime_file_origin(source)
        if origin is not None:
            notes.append(f"{name}: copied from {origin}, outside {source.parent}")
    return notes


def extra_targets(
    extras: dict[str, Path], folder: Path, force: bool, model: str | None = None
) -> list[tuple[Path, Path]]:
    """(source, destination in `folder`) for each runtime file still to copy, each checked first
    (`check_runtime_file`, for the pack of `model` it goes with); refuses to clobber a different
    file without force, and anything but a file or a link even with it."""
    todo = []
    for name, source in extras.items():
        check_runtime_file(name, source, model)
        dest = folder / name
        check_replaceable(dest)
        if os.path.lexists(dest):
            if dest.exists() and (dest.samefile(source) or filecmp.cmp(source, dest, shallow=False)):
                continue
            if not force:
                raise OutputError.at(dest, f"exists and differs from {source} (use --force to replace it)")
        todo.append((source, dest))
    return todo
