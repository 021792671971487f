"""Reading values out of JSON documents a user supplies (config.json, an index, a manifest), where
every value may be anything: each read checks its type and range, and a bad one raises one
`CheckpointError` naming the file and the key."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable, TypeVar

from ._errors import CheckpointError, HeartmulaBurnError

T = TypeVar("T")
_MISSING: Any = object()


MiB = 1 << 20
# The most bytes read from each kind of JSON document (`what`): a folder from anywhere may hold a
# config.json of gigabytes, or one that is a link to /dev/zero.
JSON_LIMITS = {
    "config.json": 1 * MiB,
    "gen_config.json": 1 * MiB,
    "index": 64 * MiB,
    "manifest": 256 * MiB,
    "tokenizer.json": 256 * MiB,
}
DEFAULT_JSON_LIMIT = 64 * MiB
_FILE_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def open_regular(path: Path, error: type[HeartmulaBurnError], what: str) -> int:
    """A read-only descriptor of `path` (closed on exec), which must be a regular file: a FIFO, a
    device (a link to /dev/zero) or a directory is refused with `error` naming the file, without
    blocking on it. OSError (a missing file, no permission) propagates."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = next((name for test, name in _FILE_KINDS if test(mode)), "not a plain file")
            raise error.at(path, f"{what} is {kind}, not a regular file")
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_json(path: Path, what: str, *, limit: int | None = None) -> Fields:
    """The JSON object in `path`, ready to read field by field. At most `limit` bytes are read
    (by default the one `JSON_LIMITS` gives `what`); a larger file is refused."""
    cap = limit if limit is not None else JSON_LIMITS.get(what, DEFAULT_JSON_LIMIT)
    try:
        fd = open_regular(path, CheckpointError, what)
        with os.fdopen(fd, "rb") as f:
            data = f.read(cap + 1)
    except FileNotFoundError:
        raise CheckpointError.at(path, f"{what} not found") from None
    except OSError as e:
        raise CheckpointError.at(path, f"cannot read {what}: {e.strerror or e}") from None
    if len(data) > cap:
        raise CheckpointError.at(path, f"{what} is larger than {_size(cap)}, the most read for one: refused")
    try:
        value = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise CheckpointError.at(path, f"cannot read {what}: {e}") from None
    except (json.JSONDecodeError, RecursionError) as e:
        raise CheckpointError.at(path, f"{what} is not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise CheckpointError.at(path, f"{what} must be a JSON object, not {_kind(value)}")
    return Fields(value, path)


def _size(nbytes: int) -> str:
    return f"{nbytes // MiB} MiB" if nbytes % MiB == 0 else f"{nbytes} bytes"


def _kind(value: object) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


class Fields:
    """A JSON object from `path`; `where` is the key path that led to it (for nested objects)."""

    def __init__(self, doc: Mapping[str, Any], path: Path, where: str = "") -> None:
        self.doc = doc
        self.path = path
        self.where = where

    def error(self, key: str | None, message: str) -> CheckpointError:
        label = self.where if key is None else (f"{self.where}.{key}" if self.where else key)
        return CheckpointError.at(self.path, f"'{label}' {message}" if label else message)

    def __contains__(self, key: str) -> bool:
        return key in self.doc

    def _get(self, key: str, default: Any, check: Callable[[Any], bool], wanted: str) -> Any:
        if key not in self.doc:
            if default is _MISSING:
                raise self.error(key, f"is missing (must be {wanted})")
            return default
        value = self.doc[key]
        if not check(value):
            raise self.error(key, f"must be {wanted}, not {_describe(value)}")
        return value

    def integer(
        self, key: str, *, minimum: int | None = None, maximum: int | None = None, default: int = _MISSING
    ) -> int:
        """An integer; out of `minimum`..`maximum`, the error names the bound it crosses."""
        wanted = "an integer" if minimum is None else f"an integer >= {minimum}"
        value: int = self._get(key, default, lambda v: _is_int(v) and (minimum is None or v >= minimum), wanted)
        if maximum is not None and value > maximum:
            raise self.error(key, f"must be an integer <= {maximum}, not {_describe(value)}")
        return value

    def string(self, key: str, *, default: str = _MISSING) -> str:
        value: str = self._get(key, default, lambda v: isinstance(v, str), "a string")
        return value

    def boolean(self, key: str, *, default: bool = _MISSING) -> bool:
        value: bool = self._get(key, default, lambda v: isinstance(v, bool), "true or false")
        return value

    def integers(
        self, key: str, *, minimum: int = 1, maximum: int | None = None, default: list[int] = _MISSING
    ) -> list[int]:
        wanted = f"a list of integers >= {minimum}"
        value: list[int] = self._get(
            key, default, lambda v: isinstance(v, list) and all(_is_int(x) and x >= minimum for x in v), wanted
        )
        if maximum is not None and any(x > maximum for x in value):
            raise self.error(key, f"must be a list of integers <= {maximum}, not {_describe(max(value))} in it")
        return list(value)

    def obj(self, key: str, *, default: Mapping[str, Any] = _MISSING) -> Fields:
        value = self._get(key, default, lambda v: isinstance(v, dict), "an object")
        return Fields(value, self.path, f"{self.where}.{key}" if self.where else key)

    def objects(self, key: str) -> list[Fields]:
        """A list of objects, each readable field by field (errors say `key[i].field`)."""
        items = self._get(key, _MISSING, lambda v: isinstance(v, list), "a list")
        label = f"{self.where}.{key}" if self.where else key
        out = []
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                raise self.error(f"{key}[{i}]", f"must be an object, not {_describe(item)}")
            out.append(Fields(item, self.path, f"{label}[{i}]"))
        return out

    def string_map(self, key: str, *, default: Mapping[str, str] = _MISSING) -> dict[str, str]:
        value = self._get(
            key,
            default,
            lambda v: isinstance(v, dict) and all(isinstance(x, str) for x in v.values()),
            "an object of strings",
        )
        return dict(value)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _describe(value: object) -> str:
    text = json.dumps(value) if isinstance(value, (str, int, float, bool)) or value is None else _kind(value)
    return text if len(text) <= 40 else text[:37] + "..."


def inside(text: str, base: Path, document: Path, what: str, *, tensor: str | None = None) -> Path:
    """`text`, a path written in `document` (an index or a manifest), resolved against `base`;
    refused when it is absolute or climbs out of `base` with '..'. Judged on the text alone:
    symbolic links inside `base` may point anywhere (a Hugging Face cache's snapshots link their
    files into ../../blobs)."""
    if not text or "\0" in text:
        raise CheckpointError.at(document, f"{what} {text!r}, which is not a file name", tensor=tensor)
    if os.path.isabs(text):
        raise CheckpointError.at(
            document, f"{what} {text!r}, an absolute path: files must lie inside {base}", tensor=tensor
        )
    if os.path.normpath(text).split(os.sep)[0] == os.pardir:
        raise CheckpointError.at(
            document, f"{what} {text!r}, which climbs out of {base}: files must lie inside it", tensor=tensor
        )
    return base / text
