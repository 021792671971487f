"""What the Hub tests share (the server fixture `hub` is in conftest): the client's
environment pointed at a test server, and how packs fetched from it are compared with local ones."""

from __future__ import annotations

import os
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
