"""The Hugging Face Hub at both ends, with the real huggingface_hub client over real HTTP against a
small Hub server started on 127.0.0.1 (tests/hub_server.py) serving synthetic repositories.

The client reads its settings (HF_ENDPOINT, HF_HUB_CACHE, HF_HUB_OFFLINE, HF_TOKEN) when it is
imported, so every command runs in a subprocess with its own environment."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import assert_clean_failure, crosscheck, repo_files, run_process
from hub_helpers import CODEC, GEN, LM, TOKEN, assert_same_packs, hub_cli, hub_env, metadata_of, tensors_of

crosscheck("huggingface_hub")  # required where CI installs it, else these tests are skipped


def test_download_lays_out_upstream_layout_then_packs_like_the_local_folder(hub, tiny_root, local_packs, tmp_path):
    cache, root = tmp_path / "cache", tmp_path / "ckpt"
    before = len(hub.downloads())
    proc = hub_cli(hub, cache, "download", root, "--json", check_rc=0)
    report = json.loads(proc.stdout)
    assert [r["repo"] for r in report["repos"]] == [LM, CODEC, GEN]
    assert [r["commit"] for r in report["repos"]] == [hub.commits(r)[0] for r in (LM, CODEC, GEN)]
    # The layout of upstream's README, every file a link into the cache, with the served bytes.
    assert sorted(p.name for p in root.iterdir()) == [
        "HeartCodec-oss",
        "HeartMuLa-oss-3B",
        "gen_config.json",
        "tokenizer.json",
    ]
    for folder, repo in (("HeartMuLa-oss-3B", LM), ("HeartCodec-oss", CODEC)):
        want = sorted(p.name for p in (tiny_root / folder).iterdir())
        assert sorted(p.name for p in (root / folder).iterdir()) == want
        for name in want:
            link = root / folder / name
            assert link.is_symlink() and str(os.readlink(link)).startswith(str(cache))
            assert link.read_bytes() == (tiny_root / folder / name).read_bytes()
    # Only what a conversion reads was fetched: no README, image or other format.
    fetched = hub.downloads()[before:]
    assert fetched and not [p for p in fetched if p.endswith(("README.md", "cover.png", "model.bin"))]
    assert "commit" in proc.stderr or proc.stderr  # the commits are said on stderr too

    out = tmp_path / "out"
    hub_cli(hub, cache, "pack", root, "-o", f"{out}/", "-q", check_rc=0)
    assert_same_packs(out, local_packs, hub)

    # A second run downloads nothing.
    before = len(hub.downloads())
    proc = hub_cli(hub, cache, "download", root, check_rc=0)
    assert hub.downloads()[before:] == []
    assert "0 B to download" in proc.stderr


def test_pack_hub_goes_from_nothing_to_the_runtime_folder(hub, local_packs, tmp_path):
    cache, out = tmp_path / "cache", tmp_path / "runtime"
    hub_cli(hub, cache, "pack", "--hub", "-o", f"{out}/", "-q", check_rc=0)
    assert sorted(p.name for p in out.iterdir()) == [
        "gen_config.json",
        "heartcodec.bpk",
        "heartmula.bpk",
        "tokenizer.json",
    ]
    assert_same_packs(out, local_packs, hub)
    # The same through convert.sh, laid out in a --ckpt-root this time.
    env = hub_env(hub, cache, HEARTMULA_OUT_DIR=str(tmp_path / "converted"), PYTHON=sys.executable)
    (tmp_path / "converted").mkdir()
    script = Path(__file__).resolve().parent.parent / "convert.sh"
    subprocess.run(["bash", script, "--hub", "--ckpt-root", tmp_path / "ckpt", "-q"], env=env, check=True, timeout=300)
    assert_same_packs(tmp_path / "converted", local_packs, hub)
    assert (tmp_path / "ckpt" / "HeartMuLa-oss-3B" / "config.json").is_symlink()


def test_a_pinned_revision_is_fetched_and_recorded(hub, tiny_root, tmp_path):
    repo = "pinned/HeartMuLaGen"
    first = hub.add_repo(repo, {"tokenizer.json": b'{"model": {"v": 1}}', "gen_config.json": b"{}"})
    hub.tag(repo, "v1", first)
    hub.add_commit(repo, {"tokenizer.json": b'{"model": {"v": 2}}'})
    for revision in (first, "v1"):
        root = tmp_path / f"ckpt-{revision}"
        proc = hub_cli(
            hub, tmp_path / "cache", "download", root, "--gen-repo", repo, "--gen-revision", revision, "--json", "-q"
        )
        assert proc.returncode == 0, proc.stderr
        assert (root / "tokenizer.json").read_bytes() == b'{"model": {"v": 1}}'
        gen = json.loads(proc.stdout)["repos"][2]
        assert (gen["repo"], gen["revision"], gen["commit"]) == (repo, revision, first)
    root = tmp_path / "ckpt-main"
    hub_cli(hub, tmp_path / "cache", "download", root, "--gen-repo", repo, "-q", check_rc=0)
    assert (root / "tokenizer.json").read_bytes() == b'{"model": {"v": 2}}'


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--lm-repo", "nobody/nothing"], ["nobody/nothing@main", "repository not found", "HF_TOKEN"]),
        (["--codec-revision", "no-such-branch"], [f"{CODEC}@no-such-branch", "revision not found"]),
        (
            ["--gen-repo", "gated/HeartMuLaGen"],
            ["gated/HeartMuLaGen", "accept its licence at", "/gated/HeartMuLaGen", "HF_TOKEN"],
        ),
        (["--gen-repo", "broken/HeartMuLaGen"], ["broken/HeartMuLaGen@", "no gen_config.json"]),
        (["--lm-repo", "broken/HeartMuLa-oss-3B"], ["broken/HeartMuLa-oss-3B@", "no config.json"]),
    ],
)
def test_hub_errors_are_one_line_and_nothing_is_written(hub, tmp_path, args, needles):
    root = tmp_path / "ckpt"
    before = len(hub.downloads())
    proc = hub_cli(hub, tmp_path / "cache", "download", root, *args)
    assert_clean_failure(proc, *needles)
    assert not root.exists()
    assert hub.downloads()[before:] == [], "nothing is downloaded before every repository is known good"


def test_a_gated_repository_opens_with_a_token(hub, tmp_path):
    root = tmp_path / "ckpt"
    hub_cli(
        hub, tmp_path / "cache", "download", root, "--gen-repo", "gated/HeartMuLaGen", "-q", HF_TOKEN=TOKEN, check_rc=0
    )
    assert (root / "gen_config.json").is_symlink()


def test_offline_with_a_warm_cache_needs_no_hub(hub, local_packs, tmp_path):
    cache = tmp_path / "cache"
    cold = hub_cli(hub, cache, "download", tmp_path / "cold", "-q", HF_HUB_OFFLINE="1")
    assert_clean_failure(cold, "HF_HUB_OFFLINE")
    hub_cli(hub, cache, "download", tmp_path / "warm", "-q", check_rc=0)
    # The endpoint points nowhere now: only the cache can answer.
    env = {"HF_HUB_OFFLINE": "1", "HF_ENDPOINT": "http://127.0.0.1:9"}
    hub_cli(hub, cache, "download", tmp_path / "offline", "-q", check_rc=0, **env)
    out = tmp_path / "out"
    hub_cli(hub, cache, "pack", "--hub", "-o", f"{out}/", "-q", check_rc=0, **env)
    assert_same_packs(out, local_packs, hub)
    # No network without HF_HUB_OFFLINE: the warm cache answers, as huggingface_hub does; a cold one cannot.
    unreachable = {"HF_ENDPOINT": "http://127.0.0.1:9"}
    hub_cli(hub, cache, "download", tmp_path / "no-network", "-q", check_rc=0, **unreachable)
    assert (tmp_path / "no-network" / "tokenizer.json").read_bytes() == (local_packs / "tokenizer.json").read_bytes()
    cold = hub_cli(hub, tmp_path / "cold-cache", "download", tmp_path / "nothing", "-q", **unreachable)
    assert_clean_failure(cold, f"{LM}@main", "the Hub cannot be reached")
    assert not (tmp_path / "nothing").exists()


def test_a_connection_dropped_mid_file_resumes(hub, tiny_root, tmp_path):
    shard = min((tiny_root / "HeartCodec-oss").glob("*.safetensors"))
    hub.drop_after[shard.name] = shard.stat().st_size // 2
    root = tmp_path / "ckpt"
    before = len(hub.downloads())
    hub_cli(hub, tmp_path / "cache", "download", root, "-q", check_rc=0)
    assert (root / "HeartCodec-oss" / shard.name).read_bytes() == shard.read_bytes()
    # The connection was cut once and the client fetched the rest (from byte 0: huggingface_hub resumes by
    # range from its last 10 MiB boundary, and this shard is smaller).
    assert shard.name not in hub.drop_after
    assert len([p for p in hub.downloads()[before:] if p.endswith("/" + shard.name)]) == 2


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_download_stopped_by_a_signal_leaves_no_half_file_and_the_next_run_completes(
    hub, tiny_root, tmp_path, signum
):
    cache, root = tmp_path / "cache", tmp_path / "ckpt"
    hub.slow_bytes_per_s = 64 << 10
    try:
        with subprocess.Popen(
            [sys.executable, "-m", "heartmula_burn", "download", root, "-q"],
            env=hub_env(hub, cache),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        ) as proc:
            deadline = time.monotonic() + 60
            while not list(cache.rglob("*.incomplete")) and time.monotonic() < deadline:  # a file is mid-download
                time.sleep(0.05)
            assert list(cache.rglob("*.incomplete")), "the download never started"
            proc.send_signal(signum)
            _, err = proc.communicate(timeout=30)
    finally:
        hub.slow_bytes_per_s = None
    assert proc.returncode == 128 + signum, err
    assert "Traceback" not in err
    assert not root.exists() or not any(root.iterdir()), "nothing is laid out before every file is complete"
    # Under a final name in the cache, only complete files.
    served = {"HeartMuLa-oss-3B": tiny_root / "HeartMuLa-oss-3B", "HeartCodec-oss": tiny_root / "HeartCodec-oss"}
    for snapshot_file in cache.glob("models--*/snapshots/*/*"):
        repo_name = snapshot_file.parents[2].name.split("--")[-1]
        assert snapshot_file.read_bytes() == (served.get(repo_name, tiny_root) / snapshot_file.name).read_bytes()
    hub_cli(hub, cache, "download", root, "-q", check_rc=0)
    for folder in ("HeartMuLa-oss-3B", "HeartCodec-oss"):
        for p in (tiny_root / folder).iterdir():
            assert (root / folder / p.name).read_bytes() == p.read_bytes()


def test_existing_files_are_kept_unless_forced(hub, tmp_path):
    root = tmp_path / "ckpt"
    root.mkdir()
    (root / "tokenizer.json").write_text('{"model": "mine"}')
    proc = hub_cli(hub, tmp_path / "cache", "download", root, "-q")
    assert_clean_failure(proc, "tokenizer.json", "--force")
    assert (root / "tokenizer.json").read_text() == '{"model": "mine"}'
    hub_cli(hub, tmp_path / "cache", "download", root, "-q", "--force", check_rc=0)
    assert (root / "tokenizer.json").is_symlink()


def test_force_never_replaces_a_fifo(hub, tmp_path):
    root = tmp_path / "ckpt"
    root.mkdir()
    os.mkfifo(root / "gen_config.json")
    proc = hub_cli(hub, tmp_path / "cache", "download", root, "-q", "--force")
    assert_clean_failure(proc, "gen_config.json", "is a FIFO, not a regular file")
    assert (root / "gen_config.json").is_fifo()


def test_free_space_is_checked_before_downloading(monkeypatch, tmp_path):
    from heartmula_burn import OutputError
    from heartmula_burn import _hub as hub

    spec = hub.repo_specs()[0]
    plan = hub.Fetched(spec, "0" * 40, tmp_path, ["model.safetensors"], {"model.safetensors": 10**12}, 10**12)
    monkeypatch.setattr(shutil, "disk_usage", lambda _: _Usage(5 * 10**9))
    with pytest.raises(OutputError, match=r"needs 1\.00 TB, 5\.00 GB are free"):
        hub.check_space([plan])
    monkeypatch.setattr(shutil, "disk_usage", lambda _: _Usage(2 * 10**12))
    hub.check_space([plan])


class _Usage:
    def __init__(self, free: int) -> None:
        self.free = free


# ---------------------------------------------------------------------------------------------
# publish-layout --push


@pytest.fixture()
def hub_packs(hub, tmp_path) -> Path:
    out = tmp_path / "runtime"
    hub_cli(hub, tmp_path / "cache", "pack", "--hub", "-o", f"{out}/", "-q", check_rc=0)
    return out


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_push_uploads_the_folder_in_one_commit_and_downloads_back_identical(hub, hub_packs, tmp_path):
    cache, out = tmp_path / "cache", tmp_path / "publish"
    repo = "someone/HeartMuLa-oss-3B-burn"
    proc = hub_cli(
        hub, cache, "publish-layout", out, "--pack", hub_packs / "heartmula.bpk", "--push", repo, "-q", HF_TOKEN=TOKEN
    )
    assert proc.returncode == 0, proc.stderr
    commits = hub.commits(repo)
    assert commits and commits[0] in proc.stdout  # the commit URL is printed
    assert hub.files(repo) == folder_bytes(out)
    assert {"heartmula.bpk", "heartcodec.bpk"} <= hub.lfs_paths(repo)
    # The card cites the source repositories at their commits.
    card = (out / "README.md").read_text()
    for source in (LM, CODEC):
        assert f"{source}/tree/{hub.commits(source)[0]}" in card
    assert hub.commit_message(repo).startswith("Burn packs of " + LM + "@" + hub.commits(LM)[0][:12])
    # Downloading what was pushed gives the same bytes.
    fetched = tmp_path / "fetched"
    code = f"import huggingface_hub as h; h.snapshot_download({repo!r}, local_dir={str(fetched)!r})"
    subprocess.run([sys.executable, "-c", code], env=hub_env(hub, cache, HF_TOKEN=TOKEN), check=True, timeout=120)
    got = {k: v for k, v in folder_bytes(fetched).items() if not k.startswith(".cache/")}
    assert got == folder_bytes(out)
    # A second push to a new branch, the first one untouched.
    hub_cli(
        hub,
        cache,
        "publish-layout",
        tmp_path / "p2",
        "--pack",
        hub_packs / "heartmula.bpk",
        "--push",
        repo,
        "--revision",
        "bf16",
        "-q",
        HF_TOKEN=TOKEN,
        check_rc=0,
    )
    assert hub.commits(repo) == commits
    assert hub.files(repo, "bf16") == folder_bytes(tmp_path / "p2")


def test_a_push_failing_part_way_leaves_the_repository_as_it_was(hub, hub_packs, tmp_path):
    repo = "someone/failing-burn"
    hub.add_repo(repo, {"README.md": b"before\n"})
    before = hub.commits(repo)
    hub.fail_lfs_upload.add("heartcodec.bpk")
    try:
        proc = hub_cli(
            hub,
            tmp_path / "cache",
            "publish-layout",
            tmp_path / "out",
            "--pack",
            hub_packs / "heartmula.bpk",
            "--push",
            repo,
            "-q",
            HF_TOKEN=TOKEN,
        )
    finally:
        hub.fail_lfs_upload.discard("heartcodec.bpk")
    assert_clean_failure(proc, repo)
    assert hub.commits(repo) == before
    assert hub.files(repo) == {"README.md": b"before\n"}


def test_push_dry_run_lists_and_sends_nothing(hub, hub_packs, tmp_path):
    before = len(hub.requests)
    proc = hub_cli(
        hub,
        tmp_path / "cache",
        "publish-layout",
        tmp_path / "out",
        "--pack",
        hub_packs / "heartmula.bpk",
        "--push",
        "someone/never",
        "--dry-run",
        "-q",
    )
    assert proc.returncode == 0, proc.stderr
    assert hub.requests[before:] == []
    lines = proc.stdout.splitlines()
    assert "someone/never" in lines[0]
    listed = {line.split()[0]: line for line in lines[1:]}
    assert set(listed) == set(folder_bytes(tmp_path / "out"))
    assert "(LFS)" in listed["heartmula.bpk"] and "(LFS)" not in listed["README.md"]


def test_push_options_need_push(tmp_path):
    proc = run_process("publish-layout", tmp_path / "out", "--pack", tmp_path / "x.bpk", "--dry-run")
    assert proc.returncode == 2 and "--push" in proc.stderr


# ---------------------------------------------------------------------------------------------
# Every fetched file checked against the digest the Hub gave for it


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def flipped(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1 :]


def git_blob_id(path: Path) -> str:
    """git's own answer, not ours."""
    return subprocess.run(["git", "hash-object", path], capture_output=True, text=True, check=True).stdout.strip()


@pytest.mark.parametrize(
    ("command", "folder", "name", "algorithm"),
    [
        ("download", "HeartMuLa-oss-3B", "model-00002-of-00004.safetensors", "sha256"),
        ("pack", "HeartCodec-oss", "model-00001-of-00002.safetensors", "sha256"),
        ("download", "HeartMuLa-oss-3B", "config.json", "git-sha1"),
    ],
)
def test_a_file_whose_bytes_differ_from_the_hubs_digest_fails_and_is_fetched_anew_next_time(
    hub, tiny_root, tmp_path, command, folder, name, algorithm
):
    repo = LM if folder == "HeartMuLa-oss-3B" else CODEC
    true = (tiny_root / folder / name).read_bytes()
    at = len(true) * 2 // 3
    served = flipped(true, at)
    cache, root, out = tmp_path / "cache", tmp_path / "ckpt", tmp_path / "out"
    args = ["download", root] if command == "download" else ["pack", "--hub", "-o", f"{out}/"]
    hub.tamper[name] = at
    try:
        proc = hub_cli(hub, cache, *args, "-q")
    finally:
        del hub.tamper[name]
    if algorithm == "sha256":
        want, got = sha256_hex(true), sha256_hex(served)
    else:
        (tmp_path / "true").write_bytes(true)
        (tmp_path / "served").write_bytes(served)
        want, got = git_blob_id(tmp_path / "true"), git_blob_id(tmp_path / "served")
    assert_clean_failure(
        proc, f"{repo}@{hub.commits(repo)[0][:12]}", name, f"{algorithm} {got}", f"the Hub gave {want}", "run again"
    )
    assert not root.exists() and not out.exists(), "nothing is laid out or packed from a file that failed its check"
    assert not list(cache.rglob(want)), "the bad blob is removed from the cache"
    # The next run downloads that file anew (the server serves it intact now) and succeeds.
    before = len(hub.downloads())
    hub_cli(hub, cache, *args, "-q", check_rc=0)
    assert [p for p in hub.downloads()[before:] if p.endswith("/" + name)]
    if command == "download":
        assert (root / folder / name).read_bytes() == true
    else:
        assert sorted(p.name for p in out.iterdir()) == [
            "gen_config.json",
            "heartcodec.bpk",
            "heartmula.bpk",
            "tokenizer.json",
        ]


def test_files_are_hashed_once_and_again_only_when_the_cache_changes(hub, tiny_root, tmp_path):
    cache = tmp_path / "cache"

    def run(root: str) -> dict[str, Any]:
        proc = hub_cli(hub, cache, "download", tmp_path / root, "--json", "-q", check_rc=0)
        return {r["repo"]: r for r in json.loads(proc.stdout)["repos"]}

    sizes = {
        LM: sum(p.stat().st_size for p in (tiny_root / "HeartMuLa-oss-3B").iterdir()),
        CODEC: sum(p.stat().st_size for p in (tiny_root / "HeartCodec-oss").iterdir()),
        GEN: sum((tiny_root / n).stat().st_size for n in ("tokenizer.json", "gen_config.json")),
    }
    counts = {
        LM: len(list((tiny_root / "HeartMuLa-oss-3B").iterdir())),
        CODEC: len(list((tiny_root / "HeartCodec-oss").iterdir())),
        GEN: 2,
    }
    first = run("a")
    assert {repo: r["hashed_bytes"] for repo, r in first.items()} == sizes
    assert {repo: r["checked_files"] for repo, r in first.items()} == counts
    second = run("b")
    assert {repo: r["hashed_bytes"] for repo, r in second.items()} == dict.fromkeys(sizes, 0)
    assert {repo: r["checked_files"] for repo, r in second.items()} == counts
    # A blob altered in the cache after its check (rewritten in place: a new mtime) is hashed again and fails.
    name = "model-00001-of-00004.safetensors"
    link = tmp_path / "a" / "HeartMuLa-oss-3B" / name
    blob = link.resolve()
    blob.write_bytes(flipped(blob.read_bytes(), 100))
    proc = hub_cli(hub, cache, "download", tmp_path / "c", "-q")
    assert_clean_failure(proc, name, f"the Hub gave {blob.name}")
    assert not blob.exists()
    third = run("d")
    intact = tiny_root / "HeartMuLa-oss-3B" / name
    assert third[LM]["hashed_bytes"] == intact.stat().st_size, "only the file fetched anew is hashed"
    assert (tmp_path / "d" / "HeartMuLa-oss-3B" / name).read_bytes() == intact.read_bytes()


def test_a_snapshot_file_that_is_no_blob_link_is_refused(tmp_path):
    from heartmula_burn import HubError
    from heartmula_burn._hub.integrity import blob_of, check_snapshot, file_digest

    repo = tmp_path / "models--o--n"
    snapshot, blobs = repo / "snapshots" / ("c" * 40), repo / "blobs"
    snapshot.mkdir(parents=True)
    blobs.mkdir()
    data = b"weights" * 1000
    (blobs / sha256_hex(data)).write_bytes(data)
    os.symlink(f"../../blobs/{sha256_hex(data)}", snapshot / "good.safetensors")
    (snapshot / "copied.safetensors").write_bytes(data)
    (tmp_path / "elsewhere").write_bytes(data)
    os.symlink(tmp_path / "elsewhere", snapshot / "outside.safetensors")
    (blobs / "not-a-digest").write_bytes(data)
    os.symlink("../../blobs/not-a-digest", snapshot / "odd.safetensors")
    assert blob_of("o/n@c", snapshot, "good.safetensors").digest == sha256_hex(data)
    for name, needle in [
        ("copied.safetensors", "not a link into the Hugging Face cache's blobs"),
        ("outside.safetensors", "links outside the repository's blobs"),
        ("odd.safetensors", "which is no sha256 or git blob id"),
    ]:
        with pytest.raises(HubError, match=needle) as info:
            blob_of("o/n@c", snapshot, name)
        assert str(info.value).startswith(f"o/n@c: {name}: ")
    # The digests against independent tools: coreutils' sha256sum and git's blob id.
    (tmp_path / "f").write_bytes(data)
    sha = subprocess.run(["sha256sum", tmp_path / "f"], capture_output=True, text=True, check=True).stdout.split()[0]
    assert file_digest(tmp_path / "f", "sha256")[0] == sha
    assert file_digest(tmp_path / "f", "git-sha1")[0] == git_blob_id(tmp_path / "f")
    # A FIFO where a blob should be is refused at once, not waited on.
    os.mkfifo(blobs / ("f" * 64))
    os.symlink(f"../../blobs/{'f' * 64}", snapshot / "fifo.safetensors")
    with pytest.raises(HubError, match="is not a regular file"):
        check_snapshot("o/n@c", snapshot, ["fifo.safetensors"])


@pytest.mark.parametrize(
    ("options", "lm", "codec"),
    [
        # Release names are taken in any case; each lands where heartlib looks for its model.
        (
            ["--lm-release", "heartmula-oss-3b-happy-new-year", "--codec-release", "HeartCodec-oss-20260123"],
            "HeartMuLa/HeartMuLa-oss-3B-happy-new-year",
            "HeartMuLa/HeartCodec-oss-20260123",
        ),
        (["--lm-release", "HeartMuLa-RL-oss-3B-20260123"], "HeartMuLa/HeartMuLa-RL-oss-3B-20260123", CODEC),
    ],
)
def test_a_named_release_is_fetched_from_its_repository(hub, tiny_root, tmp_path, options, lm, codec):
    for repo, folder in ((lm, "HeartMuLa-oss-3B"), (codec, "HeartCodec-oss")):
        with contextlib.suppress(ValueError):  # the upstream defaults, or added by an earlier case
            hub.add_repo(repo, repo_files(tiny_root / folder))
    root, cache = tmp_path / "ckpt", tmp_path / "cache"
    proc = hub_cli(hub, cache, "download", root, *options, "--json", "-q", check_rc=0)
    report = json.loads(proc.stdout)
    assert [(r["role"], r["repo"], r["commit"]) for r in report["repos"]] == [
        ("lm", lm, hub.commits(lm)[0]),
        ("codec", codec, hub.commits(codec)[0]),
        ("gen", GEN, hub.commits(GEN)[0]),
    ]
    for folder in ("HeartMuLa-oss-3B", "HeartCodec-oss"):
        for p in (tiny_root / folder).iterdir():
            assert (root / folder / p.name).read_bytes() == p.read_bytes()
    # Packed straight from the Hub, as the README's command does: each pack names its release.
    out = tmp_path / "runtime"
    hub_cli(hub, cache, "pack", "--hub", "-o", f"{out}/", *options, "-q", check_rc=0)
    for name, repo in (("heartmula.bpk", lm), ("heartcodec.bpk", codec)):
        metadata = metadata_of(out / name)
        assert (metadata["source_repo"], metadata["source_revision"]) == (repo, hub.commits(repo)[0])


def test_pack_hub_from_python_packs_a_release_as_the_cli_does(hub, tiny_root, local_packs, tmp_path):
    """The Python API's one step; run in a subprocess, as huggingface_hub reads its settings on import."""
    lm = "HeartMuLa/HeartMuLa-oss-3B-happy-new-year"
    with contextlib.suppress(ValueError):  # added by another test
        hub.add_repo(lm, repo_files(tiny_root / "HeartMuLa-oss-3B"))
    out = tmp_path / "runtime"
    code = (
        "import json, sys, heartmula_burn as hb\n"
        "r = hb.pack_hub(sys.argv[1], releases={'lm': 'HEARTMULA-OSS-3B-HAPPY-NEW-YEAR'})\n"
        "print(json.dumps([p.output for p in r.packs]))\n"
        "for bad in ({'lm': 'HeartMuLa-oss-9B'}, {'gen': 'x'}):\n"
        "    try:\n"
        "        hb.pack_hub(sys.argv[1], releases=bad)\n"
        "    except ValueError as e:\n"
        "        print(e)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, f"{out}/"],
        env=hub_env(hub, tmp_path / "cache"),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert json.loads(lines[0]) == [str(out / "heartmula.bpk"), str(out / "heartcodec.bpk")]
    assert "'HeartMuLa-oss-9B' is no release of HeartMuLa" in lines[1]
    assert "no model has releases under 'gen'" in lines[2]
    for name in ("heartmula.bpk", "heartcodec.bpk"):
        assert tensors_of(out / name) == tensors_of(local_packs / name)
    assert metadata_of(out / "heartmula.bpk")["source_repo"] == lm
