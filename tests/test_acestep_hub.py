"""ACE-Step 1.5 from the Hub, over real HTTP against the test Hub (tests/hub_server.py): the four
upstream repositories, laid out as ACE-Step publishes them (Ace-Step1.5 holds its models in
sub-folders), each with files a conversion does not read."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import assert_clean_failure, run_process
from heartmula_burn._presets.acestep.synthetic import write_checkpoint
from hub_helpers import hub_cli, metadata_of, stopped_stream, tensors_of
from hub_server import HubServer
from test_acestep_folder import SFT_FILES, TURBO_FILES

REPOS = {
    "Ace-Step1.5": "ACE-Step/Ace-Step1.5",
    "acestep-5Hz-lm-0.6B": "ACE-Step/acestep-5Hz-lm-0.6B",
    "acestep-5Hz-lm-4B": "ACE-Step/acestep-5Hz-lm-4B",
    "acestep-v15-sft": "ACE-Step/acestep-v15-sft",
}
FINE_TUNE = "someone/acestep-v15-sft-finetune"
JUNK: dict[str, bytes | Path] = {"README.md": b"# card\n", "assets/cover.png": b"\x89PNG" + b"\0" * 64}


def tree(folder: Path) -> dict[str, bytes | Path]:
    return {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def ace_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("acestep"))


@pytest.fixture(scope="module")
def ace_hub(ace_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubServer]:
    server = HubServer()
    server.start()
    for folder, repo in REPOS.items():
        files = {**tree(ace_root / folder), **JUNK}
        if folder == "Ace-Step1.5":  # a model of the repository no folder is made from
            files["acestep-v15-base/model.safetensors"] = b"\0" * 4096
        server.add_repo(repo, files)
    # A fine-tune: the SFT DiT of another seed, published as its own repository.
    other = write_checkpoint(tmp_path_factory.mktemp("finetune"), seed=7, folders=["acestep-v15-sft"])
    server.add_repo(FINE_TUNE, tree(other / "acestep-v15-sft"))
    yield server
    server.stop()
    assert server.errors == [], "the server failed on a request the client made"


def local(ace_root: Path, tmp_path: Path, model: str) -> Path:
    out = tmp_path / f"local-{model}"
    run_process("pack", ace_root, "--model", model, "-o", out, "-q", check_rc=0)
    return out


def test_pack_hub_writes_what_the_local_folder_gives(ace_root: Path, ace_hub: HubServer, tmp_path: Path) -> None:
    out = tmp_path / "out"
    hub_cli(ace_hub, tmp_path / "cache", "pack", "--hub", "--model", "acestep-turbo", "-o", out, "-q", check_rc=0)
    assert {p.name for p in out.iterdir()} == TURBO_FILES
    want = local(ace_root, tmp_path, "acestep-turbo")
    for name in sorted(TURBO_FILES):
        if name.endswith(".bpk"):
            assert tensors_of(out / name) == tensors_of(want / name), name
        else:
            assert (out / name).read_bytes() == (want / name).read_bytes(), name
    dit = metadata_of(out / "acestep-dit.bpk")
    assert dit["source_repo"] == "ACE-Step/Ace-Step1.5"
    assert dit["source_revision"] == ace_hub.commits("ACE-Step/Ace-Step1.5")[0]
    assert metadata_of(out / "acestep-lm.bpk")["source_repo"] == "ACE-Step/acestep-5Hz-lm-0.6B"
    assert metadata_of(out / "silence_latent.bpk")["source_revision"] == dit["source_revision"]
    fetched = set(ace_hub.downloads())
    assert not any("README" in f or "acestep-v15-base" in f or "acestep-5Hz-lm-1.7B" in f for f in fetched), fetched
    # Published as a model repository: the whole folder, and a card citing each repository and commit.
    repo = tmp_path / "repo"
    run_process("publish-layout", repo, "--pack", out / "acestep-dit.bpk", "-q", check_rc=0)
    assert {p.name for p in repo.iterdir()} == TURBO_FILES | {"README.md", ".gitattributes"}
    card = (repo / "README.md").read_text()
    for name in ("ACE-Step/Ace-Step1.5", "ACE-Step/acestep-5Hz-lm-0.6B"):
        commit = ace_hub.commits(name)[0]
        assert f"[{name}](https://huggingface.co/{name}) at commit [`{commit[:12]}`]" in card, card
    assert "Not a trained model" in card  # the synthetic weights are said to be so


def test_download_then_pack_sft_with_a_fine_tuned_dit(ace_root: Path, ace_hub: HubServer, tmp_path: Path) -> None:
    root = tmp_path / "ckpt"
    hub_cli(
        ace_hub,
        tmp_path / "cache",
        "download",
        root,
        "--model",
        "acestep-sft",
        "--acestep-sft-repo",
        FINE_TUNE,
        "-q",
        check_rc=0,
    )
    assert sorted(p.name for p in root.iterdir()) == ["Ace-Step1.5", "acestep-5Hz-lm-4B", "acestep-v15-sft"]
    assert (root / "Ace-Step1.5/acestep-v15-turbo/silence_latent.pt").is_file()
    assert not (root / "Ace-Step1.5/acestep-v15-turbo/model.safetensors").exists()  # SFT reads only the silence
    out = tmp_path / "out"
    run_process("pack", root, "--model", "acestep-sft", "-o", out, "-q", check_rc=0)
    assert {p.name for p in out.iterdir()} == SFT_FILES
    want = local(ace_root, tmp_path, "acestep-sft")
    assert tensors_of(out / "qwen3-encoder.bpk") == tensors_of(want / "qwen3-encoder.bpk")
    assert tensors_of(out / "sft-acestep-lm.bpk") == tensors_of(want / "sft-acestep-lm.bpk")
    assert tensors_of(out / "sft-acestep-dit.bpk") != tensors_of(want / "sft-acestep-dit.bpk")  # the fine-tune's
    assert metadata_of(out / "sft-acestep-dit.bpk")["source_repo"] == FINE_TUNE
    assert metadata_of(out / "silence_latent.bpk")["source_repo"] == "ACE-Step/Ace-Step1.5"  # through the links
    # Packed from the fine-tune's own files: verify against the laid-out root passes.
    hub_cli(ace_hub, tmp_path / "cache", "verify", out / "sft-acestep-dit.bpk", "--against", root, "-q", check_rc=0)


def test_a_repository_without_a_needed_file_is_named(ace_hub: HubServer, tmp_path: Path) -> None:
    proc = hub_cli(
        ace_hub,
        tmp_path / "cache",
        "pack",
        "--hub",
        "--model",
        "acestep-sft",
        "--acestep-lm-4b-repo",
        "ACE-Step/acestep-5Hz-lm-0.6B",
        "--acestep-sft-repo",
        "ACE-Step/acestep-5Hz-lm-0.6B",
        "-o",
        tmp_path / "out",
        "-q",
    )
    # The planner's repository where the DiT's should be: its config.json cannot size a DiT.
    assert_clean_failure(proc, "models--ACE-Step--acestep-5Hz-lm-0.6B", "config.json", "cannot size", "dit")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("model", ["acestep-turbo", "acestep-sft"])
def test_pack_hub_stream_writes_what_the_local_folder_gives(
    ace_root: Path, ace_hub: HubServer, tmp_path: Path, model: str
) -> None:
    out = tmp_path / "out"
    hub_cli(ace_hub, tmp_path / "cache", "pack", "--hub", "--stream", "--model", model, "-o", out, "-q", check_rc=0)
    want = local(ace_root, tmp_path, model)
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in want.iterdir())
    for path in sorted(want.iterdir()):
        if path.suffix == ".bpk":
            assert tensors_of(out / path.name) == tensors_of(path), path.name
        else:
            assert (out / path.name).read_bytes() == path.read_bytes(), path.name
    # The shards were read from the Hub, never stored in the cache.
    assert not list((tmp_path / "cache").rglob("*.safetensors"))
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


# The folders a turbo folder with the default planner streams its shards from.
TURBO_SOURCES = (
    "Ace-Step1.5/Qwen3-Embedding-0.6B",
    "Ace-Step1.5/acestep-v15-turbo",
    "Ace-Step1.5/vae",
    "acestep-5Hz-lm-0.6B",
)


def safetensors_served(hub: HubServer) -> int:
    return sum(n for path, n in hub.body_bytes.items() if path.endswith(".safetensors"))


def test_a_killed_stream_continues_where_it_was(ace_root: Path, ace_hub: HubServer, tmp_path: Path) -> None:
    """`pack --hub --stream --model acestep-turbo` killed outright once its journal covers a third of
    the shard bytes: nothing is under a final name, the hidden partials stay; the same command
    fetches at most 80% of the shard bytes again and writes the folder a local pack writes."""
    out = tmp_path / "out"
    total = sum(p.stat().st_size for folder in TURBO_SOURCES for p in (ace_root / folder).glob("*.safetensors"))
    command = ["pack", "--hub", "--stream", "--model", "acestep-turbo", "-o", str(out)]
    returncode, err = stopped_stream(
        ace_hub,
        tmp_path / "cache",
        out,
        command,
        covered=total / 3,
        signum=signal.SIGKILL,
        bytes_per_s=max(total // 40, 1),  # per connection
    )
    assert returncode == -signal.SIGKILL, err
    assert not [p for p in out.iterdir() if not p.name.startswith(".")], "nothing under a final name"
    assert any(p.name.endswith(".resume.heartmula-journal") for p in out.iterdir())

    before = safetensors_served(ace_hub)
    proc = hub_cli(ace_hub, tmp_path / "cache", *command, check_rc=0)
    fetched = safetensors_served(ace_hub) - before
    assert fetched <= 0.8 * total, f"the rerun fetched {fetched} of {total} shard bytes: {proc.stderr}"
    assert "continuing an interrupted run" in proc.stderr, proc.stderr
    want = local(ace_root, tmp_path, "acestep-turbo")
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in want.iterdir()), "no partial left"
    for path in sorted(want.iterdir()):
        if path.suffix == ".bpk":
            assert tensors_of(out / path.name) == tensors_of(path), path.name
        else:
            assert (out / path.name).read_bytes() == path.read_bytes(), path.name
