"""From the Hub to packs in one step: fetch the repositories into the Hugging Face cache (checked
against the Hub's digests), then plan and write the packs as `pack_checkpoint` does."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Callable

from .._checkpoint import RemoteHeaders, load_checkpoints, load_model_folders
from .._manifest import DEFAULT_Q_BLOCK
from .._packing import Conversion, Job, ProgressFn, checked_options, pack_manifests, plan_checkpoints
from ._client import progress_bars
from .download import Fetched, download, lay_out
from .repos import RepoSpec, repo_specs
from .stream import (
    RETRY_WINDOW_SECONDS,
    STREAMS,
    StreamClient,
    Streamer,
    checked_connections,
    checked_retry_window,
    remote_shards,
)


def plan_hub(
    specs: Sequence[RepoSpec],
    output: str | Path | None = None,
    *,
    dtype: str = "f32",
    any_model: bool = False,
    ckpt_root: str | Path | None = None,
    force: bool = False,
    say: Callable[[str], None] | None = None,
    quiet: bool = True,
    q_block: int = DEFAULT_Q_BLOCK,
) -> tuple[list[Job], list[str]]:
    """Fetches the repositories (`download`: planned, downloaded into the cache, checked
    against the Hub's digests) and plans their packs as `plan_checkpoints` does: straight from the
    cache's snapshots, or from `ckpt_root` laid out as `download` does (`force`: replace what is
    there)."""
    fetched = download(specs, say=say, quiet=quiet)
    if ckpt_root is not None:
        lay_out(Path(ckpt_root), fetched, force=force)
        checkpoints = load_checkpoints(ckpt_root)
    else:
        runtime = next(f.snapshot for f in fetched if f.spec.folder is None)
        checkpoints = load_model_folders([f.snapshot for f in fetched if f.spec.folder is not None], runtime)
    return plan_checkpoints(checkpoints, output, dtype=dtype, any_model=any_model, q_block=q_block)


def plan_hub_stream(
    specs: Sequence[RepoSpec],
    output: str | Path | None = None,
    *,
    dtype: str = "f32",
    any_model: bool = False,
    say: Callable[[str], None] | None = None,
    quiet: bool = True,
    q_block: int = DEFAULT_Q_BLOCK,
    connections: int = STREAMS,
    fresh: bool = False,
    retry_window: float = RETRY_WINDOW_SECONDS,
) -> tuple[list[Job], list[str], Streamer]:
    """As `plan_hub`, with the shards left on the Hub: the shards start streaming (their headers
    first) while the other files are fetched into the cache and checked, and the packs are planned
    from the headers. The Streamer's `stage` then streams the data into the packs, continuing an
    interrupted run's partials unless `fresh`; its `close` must be called if the packs are not
    staged (the transfers wait for them)."""
    fetched, streamer, remote = stream_repositories(
        specs, say=say, quiet=quiet, connections=connections, fresh=fresh, retry_window=retry_window
    )
    try:
        runtime = next(f.snapshot for f in fetched if f.spec.folder is None)
        models = [f.snapshot for f in fetched if f.spec.folder is not None]
        checkpoints = load_model_folders(models, runtime, remote)
        jobs, notes = plan_checkpoints(checkpoints, output, dtype=dtype, any_model=any_model, q_block=q_block)
    except BaseException:
        streamer.close()
        raise
    return jobs, notes, streamer


def stream_repositories(
    specs: Sequence[RepoSpec],
    *,
    say: Callable[[str], None] | None = None,
    quiet: bool = True,
    connections: int = STREAMS,
    fresh: bool = False,
    retry_window: float = RETRY_WINDOW_SECONDS,
) -> tuple[list[Fetched], Streamer, RemoteHeaders]:
    """The repositories fetched into the cache but for their shards, which start streaming (their
    headers first) while the other files are fetched and checked: what a streamed plan is made
    from (the snapshots, and the shards' headers by the path each would have there)."""
    client = StreamClient()
    streamers: list[Streamer] = []

    def start(plans: list[Fetched]) -> None:
        streamers.append(
            Streamer(
                client,
                remote_shards(plans, client),
                quiet=quiet,
                connections=connections,
                fresh=fresh,
                retry_window=retry_window,
                say=say,
            )
        )
        streamers[0].start()

    try:
        fetched = download(specs, say=say, quiet=quiet, stream=True, planned=start)
        streamer = streamers[0]
        streamer.place({f.spec.repo: f.snapshot for f in fetched})
        with progress_bars(not quiet):
            remote = streamer.heads()
    except BaseException:
        for s in streamers:
            s.close()
        raise
    return fetched, streamer, remote


def pack_hub(
    output: str | Path | None = None,
    *,
    repos: Mapping[str, str | None] | None = None,
    releases: Mapping[str, str | None] | None = None,
    revisions: Mapping[str, str | None] | None = None,
    ckpt_root: str | Path | None = None,
    dtype: str = "f32",
    any_model: bool = False,
    force: bool = False,
    burn_version: str | None = None,
    progress: ProgressFn | None = None,
    copy_extras: bool = True,
    quiet: bool = True,
    q_block: int = DEFAULT_Q_BLOCK,
    stream: bool = False,
    connections: int = STREAMS,
    fresh: bool = False,
    retry_window: float = RETRY_WINDOW_SECONDS,
) -> Conversion:
    """One step from the Hugging Face Hub to packs (needs huggingface_hub; `pip install
    'heartmula-burn[hub]'`): the LM, the codec and the runtime files are fetched into the
    Hugging Face cache, checked against the Hub's digests, and packed as `pack_checkpoint` packs.

    - `releases`: a model's release by name, per role: `{"lm": "HeartMuLa-oss-3B-happy-new-year",
      "codec": "HeartCodec-oss-20260123"}`; `repos`: any repository per role (`lm`, `codec`,
      `gen`); `revisions`: a branch, tag or commit per role (default main).
    - `ckpt_root`: also lay the download out there as `download` does (links into the cache).
    - `quiet`: no progress bars; the other keywords are `pack_checkpoint`'s.
    - `stream`: the shards are not downloaded: they are read from the Hub in ranges straight into
      the packs, each checked against its sha256 before anything is put in place (not with
      `ckpt_root`), `connections` transfers at once. The result's `streamed` says what it took.
      An interrupted stream leaves partial packs beside the outputs that the same call continues
      (`fresh`: start over); a shard is given up after `retry_window` seconds without progress.

    Each pack records `source_repo` and `source_revision`. Raises `HubError` for what the Hub
    answers (a missing or gated repository, a file whose bytes differ from the Hub's digest),
    `ValueError` for an argument out of range before anything is fetched, and what
    `pack_checkpoint` raises."""
    dtype = checked_options(dtype, burn_version, q_block)
    specs = repo_specs(repos, revisions, releases)
    if stream:
        if ckpt_root is not None:
            raise ValueError("stream leaves the shards on the Hub: there is nothing to lay out in ckpt_root")
        jobs, notes, streamer = plan_hub_stream(
            specs,
            output,
            dtype=dtype,
            any_model=any_model,
            quiet=quiet,
            q_block=q_block,
            connections=checked_connections(connections),
            fresh=fresh,
            retry_window=checked_retry_window(retry_window),
        )
        return pack_streamed(
            streamer, jobs, force=force, burn_version=burn_version, copy_extras=copy_extras, notes=notes
        )
    jobs, notes = plan_hub(
        specs, output, dtype=dtype, any_model=any_model, ckpt_root=ckpt_root, force=force, quiet=quiet, q_block=q_block
    )
    return pack_manifests(
        jobs, force=force, burn_version=burn_version, progress=progress, copy_extras=copy_extras, notes=notes
    )


def pack_streamed(
    streamer: Streamer,
    jobs: Sequence[Job],
    *,
    force: bool,
    burn_version: str | None,
    copy_extras: bool,
    notes: Sequence[str],
) -> Conversion:
    """`pack_manifests` with the streamer writing the packs (see `plan_hub_stream`). Its
    transfers stop whatever happens; the result's `streamed` says what they took."""
    try:
        result = pack_manifests(
            jobs,
            force=force,
            burn_version=burn_version,
            copy_extras=copy_extras,
            notes=notes,
            stage_packs=streamer.stage,
        )
    finally:
        streamer.close()
    return dataclasses.replace(result, streamed=streamer.stats.to_dict())
