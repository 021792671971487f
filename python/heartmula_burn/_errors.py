"""The exceptions heartmula-burn raises, for callers to catch by what went wrong.

Every message is one line naming the file and, where there is one, the tensor; `.path` and
`.tensor` hold them apart. I/O failures (a missing file, no permission, a full disk) are raised as
the builtin `OSError` subclasses instead (`FileNotFoundError`, `PermissionError`, ...), with the
path in `.filename`. All of them pickle, so they cross process pools."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = [
    "CheckpointError",
    "HeartmulaBurnError",
    "HubError",
    "OutputError",
    "PackFileError",
    "SourceError",
]


class HeartmulaBurnError(Exception):
    """Base class of the package's own errors. `path` and `tensor` name the file and tensor the
    message is about, when it is about one."""

    # Shown as `heartmula_burn.X`, where the classes are exported (and pickled from).
    __module__ = "heartmula_burn"

    def __init__(self, message: str, *, path: str | None = None, tensor: str | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.tensor = tensor

    @classmethod
    def at(cls, path: object, message: str, *, tensor: str | None = None) -> Self:
        """`path: [tensor 'name': ]message`, with `.path` and `.tensor` set."""
        where = f"{path}: " + (f"tensor '{tensor}': " if tensor is not None else "")
        return cls(where + message, path=str(path), tensor=tensor)

    def __reduce__(self) -> tuple[type[HeartmulaBurnError], tuple[str], dict[str, str | None]]:
        return (type(self), (str(self),), {"path": self.path, "tensor": self.tensor})


class SourceError(HeartmulaBurnError):
    """An input (a safetensors shard, an index, a config, a manifest, a `.npy` file, a pack read as
    a source) or one of its tensors is not what it should be."""

    __module__ = "heartmula_burn"


class CheckpointError(SourceError):
    """A checkpoint folder that does not hold what its config.json and index say, or that a preset
    does not accept."""

    __module__ = "heartmula_burn"


class HubError(SourceError):
    """The Hugging Face Hub could not give what a download asked for: a repository, revision or
    file that is not there, a gated or private repository without access, the Hub out of reach with
    nothing in the cache. `.path` is `REPO@REVISION`."""

    __module__ = "heartmula_burn"


class PackFileError(HeartmulaBurnError):
    """A Burn pack that cannot be read (or would not be read by Burn)."""

    __module__ = "heartmula_burn"


class OutputError(HeartmulaBurnError):
    """The output cannot be written as asked: it exists (without --force), its folder is missing,
    the disk is too small, or it is one of the inputs."""

    __module__ = "heartmula_burn"
