"""huggingface_hub as every Hub command uses it: imported on first use, its exceptions as one
line naming the repository, its progress bars on or off, and transfers that a signal interrupts at once."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Callable, TypeVar

from .._errors import HubError

T = TypeVar("T")
R = TypeVar("R")


INSTALL_HINT = "the Hub commands need huggingface_hub: pip install 'heartmula-burn[hub]' (Python 3.10 or later)"


# The thread transfers run in; the CLI leaves without waiting for it when stopped by a signal.
THREAD_NAME = "heartmula-burn-hub"


def _hf() -> Any:
    try:
        import huggingface_hub
        import huggingface_hub.constants
        import huggingface_hub.errors
        import huggingface_hub.utils  # the package loads its submodules lazily
    except ImportError:
        raise HubError(INSTALL_HINT) from None
    return huggingface_hub


def human(size: int) -> str:
    value = float(size)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.2f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


@contextmanager
def hub_errors(label: str, repo: str) -> Iterator[None]:
    """huggingface_hub's exceptions as one line naming the repository and what to do."""
    hf = _hf()
    errors = hf.errors
    endpoint = hf.constants.ENDPOINT
    try:
        yield
    except errors.GatedRepoError:
        raise HubError.at(
            label, f"gated repository: accept its licence at {endpoint}/{repo} and set HF_TOKEN (or `hf auth login`)"
        ) from None
    except errors.RepositoryNotFoundError:
        raise HubError.at(
            label, f"repository not found on {endpoint} (a private one needs HF_TOKEN or `hf auth login`)"
        ) from None
    except errors.RevisionNotFoundError:
        raise HubError.at(label, "revision not found (a branch, tag or commit of the repository)") from None
    except errors.RemoteEntryNotFoundError as e:
        raise HubError.at(label, f"file not found on the Hub: {_first_line(e)}") from None
    except (errors.LocalEntryNotFoundError, errors.RevisionResolutionError) as e:
        offline = " (HF_HUB_OFFLINE is set)" if hf.constants.HF_HUB_OFFLINE else ""
        raise HubError.at(
            label,
            f"not complete in the local cache {hf.constants.HF_HUB_CACHE} and the Hub cannot be reached{offline}: "
            f"{_first_line(e)}",
        ) from None
    except errors.HfHubHTTPError as e:
        status = e.response.status_code if e.response is not None else "?"
        raise HubError.at(label, f"the Hub answered {status}: {_first_line(e)}") from None
    except errors.OfflineModeIsEnabled as e:
        raise HubError.at(label, f"HF_HUB_OFFLINE is set: {_first_line(e)}") from None
    except OSError:
        raise  # a full disk, a permission: the OSError (with its file name) says it best
    except Exception as e:
        if is_transport_error(e):
            raise HubError.at(label, f"cannot reach {endpoint}: {_first_line(e) or type(e).__name__}") from None
        cause = e.__cause__
        if isinstance(cause, errors.HfHubHTTPError):  # an upload's "Error while uploading 'FILE' to the Hub."
            status = cause.response.status_code if cause.response is not None else "?"
            raise HubError.at(label, f"{_first_line(e)} The Hub answered {status}: {_first_line(cause)}") from None
        raise


def is_transport_error(e: BaseException) -> bool:
    """An error of huggingface_hub's HTTP stack itself (a refused or cut connection, a timeout,
    a malformed answer), whichever httpx package the installed version uses."""
    return type(e).__module__.split(".")[0] in ("httpx", "httpx2", "httpcore", "httpcore2")


def _first_line(e: BaseException) -> str:
    return next((line.strip() for line in str(e).splitlines() if line.strip()), "")


def _interruptible(fn: Callable[[], T]) -> T:
    """Runs `fn` in a daemon thread and waits in short slices, so that Ctrl-C and SIGTERM raise in
    the main thread at once: huggingface_hub's download pool joins its threads before it lets an
    exception out, which for a 5 GB shard would mean minutes. (Its files are written under
    temporary names and renamed when complete, so leaving mid-file leaves no half file.)"""
    return parallel_map(lambda _: fn(), [None])[0]


def parallel_map(fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
    """`fn` over every item at once, one daemon thread each (the repositories of a run), waited for
    as `wait_for` waits; the results in order, or the exception of the first item that failed."""
    results: list[dict[str, Any]] = [{} for _ in items]

    def run(i: int) -> None:
        try:
            results[i]["value"] = fn(items[i])
        except BaseException as e:  # noqa: BLE001 (re-raised in the waiting thread)
            results[i]["error"] = e

    workers = [threading.Thread(target=run, args=(i,), name=THREAD_NAME, daemon=True) for i in range(len(items))]
    for worker in workers:
        worker.start()
    wait_for(workers)
    for result in results:
        if "error" in result:
            raise result["error"]
    return [result["value"] for result in results]


def wait_for(threads: Sequence[threading.Thread]) -> None:
    """Waits for the threads in short slices: a plain join would keep Ctrl-C and SIGTERM from
    raising in the main thread until they end."""
    for thread in threads:
        while thread.is_alive():
            thread.join(0.1)


@contextmanager
def progress_bars(enabled: bool) -> Iterator[None]:
    """huggingface_hub's own progress bars, on for the block where asked and stderr is a terminal
    (in a log their carriage-return frames bury the line that matters), else off."""
    utils = _hf().utils
    was_disabled = utils.are_progress_bars_disabled()
    if enabled and sys.stderr.isatty():
        yield
        return
    utils.disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            utils.enable_progress_bars()
