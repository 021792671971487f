"""The one exception type the Python layer raises for bad input; the CLI prints its message."""

from ._core import PackError


class CheckpointError(PackError):
    """A checkpoint, manifest or output that cannot be used as asked. The message is one line
    naming the file and, where there is one, the tensor."""
