"""What the Hub tests share (the server fixture `hub` is in conftest): the client's
environment pointed at a test server, and how packs fetched from it are compared with local ones."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from conftest import CODEC, GEN, LM, run_process
from heartmula_burn import open_pack
from hub_server import HubServer

TOKEN = "hf_test_token"


def hub_env(server: HubServer, cache: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(
        HF_ENDPOINT=server.url,
        HF_HOME=str(cache.parent / "hf-home"),  # no token of this machine's user is read
        HF_HUB_CACHE=str(cache),
        HF_HUB_DISABLE_XET="1",  # the test server speaks plain LFS
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
    )
    env.update(extra)
    return env


def hub_cli(server: HubServer, cache: Path, *args: Any, check_rc: int | None = None, **env: str) -> Any:
    return run_process(*args, env=hub_env(server, cache, **env), check_rc=check_rc)


def journaled(out: Path) -> int:
    """The shard bytes the journal of a stream into `out` says are in its partial packs (0 while
    there is none)."""
    for journal in out.glob(".*.resume.heartmula-journal"):
        try:
            return sum(s["next"] for s in json.loads(journal.read_text())["shards"])
        except (OSError, ValueError):
            return 0
    return 0


def stopped_stream(
    server: HubServer, cache: Path, out: Path, args: Sequence[str], *, covered: float, signum: int, bytes_per_s: int
) -> tuple[int, str]:
    """Runs `heartmula_burn *args` (a `pack --hub --stream` into `out`) with the server's bodies
    throttled to `bytes_per_s` per connection, sends `signum` once the journal covers `covered`
    shard bytes, and waits for the server's side of the cut transfers to end (at its next write).
    Returns the exit status and stderr."""
    server.slow_bytes_per_s = bytes_per_s
    try:
        with subprocess.Popen(
            [sys.executable, "-m", "heartmula_burn", *args],
            env=hub_env(server, cache),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        ) as proc:
            deadline = time.monotonic() + 120
            while journaled(out) < covered:
                assert proc.poll() is None and time.monotonic() < deadline, "the stream ended or never got going"
                time.sleep(0.02)
            proc.send_signal(signum)
            _, err = proc.communicate(timeout=60)
    finally:
        server.slow_bytes_per_s = None
    deadline = time.monotonic() + 30
    while server.open_bodies and time.monotonic() < deadline:
        time.sleep(0.05)
    return proc.returncode, err


def tensors_of(path: Path) -> dict[str, tuple[str, tuple[int, ...], bytes]]:
    with open_pack(path) as pack:
        return {t.name: (t.dtype, tuple(t.shape), bytes(pack.raw_bytes(t.name))) for t in pack.tensors}


def metadata_of(path: Path) -> dict[str, str]:
    with open_pack(path) as pack:
        return dict(pack.metadata)


def assert_same_packs(out: Path, local: Path, server: HubServer, source_model: str = "HeartMuLa-oss-3B") -> None:
    """Tensor for tensor the same bytes as the local packs; the metadata differs only by the source."""
    for name, repo, model in (("heartmula.bpk", LM, source_model), ("heartcodec.bpk", CODEC, "HeartCodec-oss")):
        assert tensors_of(out / name) == tensors_of(local / name)
        got, want = metadata_of(out / name), metadata_of(local / name)
        assert got.pop("source_repo") == repo
        assert got.pop("source_revision") == server.commits(repo)[0]
        assert got.pop("source_model") == model
        want.pop("source_model")
        assert got == want
    for name in ("tokenizer.json", "gen_config.json"):
        assert (out / name).read_bytes() == (local / name).read_bytes()


__all__ = ["CODEC", "GEN", "LM", "TOKEN", "assert_same_packs", "hub_cli", "hub_env", "metadata_of", "tensors_of"]
