"""Outputs people publish, written where hostile names and files wait: a pack named like a file
publish-layout writes (which it must not write through), a FIFO or a folder where an output goes
(which --force must not replace), runtime files that are planted links (checked before they are
copied, and their origin said), destinations that appear while packing (none of the outputs is put
in place), and a full disk while a runtime file is copied (the destination is named). What could
hang runs in a subprocess with a deadline."""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import heartmula_burn as hb
import pytest
from conftest import assert_clean_failure, run_cli
from heartmula_burn import _core
from heartmula_burn._atomic import commit_all
from heartmula_burn._checkpoint import load_model_folders
from heartmula_burn._packing import pack_manifests, plan_checkpoints

MODEL = "HeartMuLa-oss-3B"
DEADLINE = 120  # seconds; a FIFO opened for writing would block forever
SECRET = b"-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----\n"
TOKENIZER = {"version": "1.0", "model": {"type": "BPE", "vocab": {}, "merges": []}}
GEN_CONFIG = {"text_bos_id": 128000, "text_eos_id": 128001, "audio_eos_id": 8193, "empty_id": 0}


def run_cli_process(*args: object) -> subprocess.CompletedProcess[str]:
    """The real CLI in a subprocess, with a deadline: a write that blocks on a FIFO fails the test."""
    try:
        return subprocess.run(
            [sys.executable, "-m", "heartmula_burn", *map(str, args)],
            capture_output=True,
            text=True,
            timeout=DEADLINE,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running after {DEADLINE} s (blocked on an output): {args}")


def tiny_model(folder: Path) -> Path:
    """`folder`/model.safetensors holding one F32 tensor 'w' of 4 values: a model no preset knows."""
    folder.mkdir(parents=True, exist_ok=True)
    header = json.dumps({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}).encode()
    header += b" " * (-len(header) % 8)
    (folder / "model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + bytes(16))
    return folder


def ckpt_root(tiny_ckpt: Path, root: Path, *, tokenizer: Any = TOKENIZER, gen_config: Any = GEN_CONFIG) -> Path:
    """A CKPT_ROOT whose model folder is the tiny checkpoint's (a link) and whose runtime files are
    written here: a dict is written as JSON, a Path becomes a symbolic link to it."""
    root.mkdir(parents=True)
    (root / MODEL).symlink_to(tiny_ckpt / MODEL, target_is_directory=True)
    for name, value in (("tokenizer.json", tokenizer), ("gen_config.json", gen_config)):
        if isinstance(value, Path):
            (root / name).symlink_to(value)
        else:
            (root / name).write_text(json.dumps(value))
    return root


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.fixture(scope="module")
def lm_pack(tiny_ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """heartmula.bpk with tokenizer.json and gen_config.json beside it."""
    out = tmp_path_factory.mktemp("lm")
    run_cli("pack", tiny_ckpt, "-o", out / "heartmula.bpk", "-q", check_rc=0)
    return out / "heartmula.bpk"


# 1. publish-layout never writes through a link to a pack.


@pytest.mark.parametrize("name", ["README.md", "gen_config.json", ".gitattributes", "tokenizer.json"])
def test_publish_layout_never_writes_through_a_pack_named_like_its_own_files(lm_pack, tmp_path, name):
    """A pack named README.md (or gen_config.json...) is hard-linked into the folder: writing the
    model card by opening that name would overwrite the pack outside the folder."""
    pack = tmp_path / "packs" / name
    pack.parent.mkdir()
    run_cli("pack", tiny_model(tmp_path / "m"), "--any-model", "-o", pack, "--no-extras", "-q", check_rc=0)
    before = pack.read_bytes()
    out = tmp_path / "published"
    proc = run_cli("publish-layout", out, "--pack", lm_pack, "--pack", pack, "-q")
    assert_clean_failure(proc, str(pack), f"a pack named {name}")
    assert pack.read_bytes() == before, "the pack outside the folder was written through its link"
    assert listing(tmp_path) == ["m", "packs"], "no folder, no temporary folder"


def test_publish_layout_copies_runtime_files_into_fresh_files(lm_pack, tmp_path):
    """The runtime files and the card are new files of the folder: the sources keep their bytes
    and their link count, whatever the folder's files become."""
    out = tmp_path / "published"
    run_cli("publish-layout", out, "--pack", lm_pack, "-q", check_rc=0)
    for name in ("tokenizer.json", "gen_config.json"):
        assert os.stat(out / name).st_ino != os.stat(lm_pack.parent / name).st_ino
        assert os.stat(lm_pack.parent / name).st_nlink == 1
    assert (out / "README.md").stat().st_nlink == 1 and (out / ".gitattributes").stat().st_nlink == 1


# 2. --force replaces files and links only.


def special_file(path: Path, kind: str) -> Any:
    """Makes `path` a FIFO, a character device (the numbers of /dev/null) or a socket; returns the
    `stat` test that recognises it."""
    if kind == "FIFO":
        os.mkfifo(path)
        return stat.S_ISFIFO
    if kind == "character device":
        try:
            os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 3))
        except PermissionError:
            pytest.skip("making a device node is not permitted here")
        return stat.S_ISCHR
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(path))  # the socket file stays when it is closed
    return stat.S_ISSOCK


@pytest.mark.parametrize("kind", ["FIFO", "character device", "socket"])
def test_force_does_not_replace_a_special_file_named_by_o(tiny_ckpt, tmp_path, kind):
    """`-o /dev/null --force` as root replaced the device by a regular file: here a FIFO, a device
    node with /dev/null's numbers, and a socket, each where the pack goes."""
    dest = tmp_path / "heartmula.bpk"
    test = special_file(dest, kind)
    for extra in ([], ["--force"]):
        proc = run_cli_process("pack", tiny_ckpt, "-o", dest, "--no-extras", "-q", *extra)
        assert_clean_failure(proc, str(dest), f"is a {kind}, not a regular file: --force replaces only files and links")
        assert test(os.lstat(dest).st_mode), f"the {kind} was replaced"
    assert listing(tmp_path) == ["heartmula.bpk"]


@pytest.mark.parametrize("kind", ["fifo", "folder"])
def test_force_does_not_replace_a_fifo_or_folder_where_a_runtime_file_goes(tiny_ckpt, tmp_path, kind):
    out = tmp_path / "out"
    out.mkdir()
    dest = out / "tokenizer.json"
    os.mkfifo(dest) if kind == "fifo" else dest.mkdir()
    wanted = "is a FIFO" if kind == "fifo" else "is a directory"
    proc = run_cli_process("pack", tiny_ckpt, "-o", f"{out}/", "--force", "-q")
    assert_clean_failure(proc, str(dest), wanted, "--force replaces only files and links")
    assert listing(out) == ["tokenizer.json"], "nothing else is put in place"
    assert stat.S_ISFIFO(os.lstat(dest).st_mode) if kind == "fifo" else dest.is_dir()
    # export-raw writes the runtime files to the same kind of place.
    proc = run_cli_process("export-raw", "--checkpoint-root", tiny_ckpt, "--output-root", out, "--force", "-q")
    assert_clean_failure(proc, str(dest), wanted)
    assert listing(out) == ["tokenizer.json"]


def test_force_replaces_a_symbolic_link_not_its_target(tiny_ckpt, tmp_path):
    target = tmp_path / "someone-elses.bpk"
    target.write_bytes(b"not ours")
    out = tmp_path / "out"
    out.mkdir()
    (out / "heartmula.bpk").symlink_to(target)
    run_cli("pack", tiny_ckpt, "-o", out / "heartmula.bpk", "--force", "--no-extras", "-q", check_rc=0)
    assert target.read_bytes() == b"not ours"
    assert not (out / "heartmula.bpk").is_symlink() and (out / "heartmula.bpk").stat().st_size > 1000


def test_publish_layout_force_does_not_replace_a_fifo(lm_pack, tmp_path):
    fifo = tmp_path / "published"
    os.mkfifo(fifo)
    proc = run_cli_process("publish-layout", fifo, "--pack", lm_pack, "--force", "-q")
    assert_clean_failure(proc, str(fifo), "is a FIFO, not a folder")
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert listing(tmp_path) == ["published"]


# 3. Runtime files are checked before they are copied, and where they came from is said.


def test_a_tokenizer_linked_to_a_private_key_is_not_copied(tiny_ckpt, tmp_path):
    secret = tmp_path / "home" / ".ssh" / "id_rsa"
    secret.parent.mkdir(parents=True)
    secret.write_bytes(SECRET)
    root = ckpt_root(tiny_ckpt, tmp_path / "ckpt", tokenizer=secret)
    out = tmp_path / "out"
    proc = run_cli("pack", root, "-o", f"{out}/", "-q")
    assert_clean_failure(proc, str(root / "tokenizer.json"), "not valid JSON")
    assert not out.exists(), "nothing is written, not even the folder"
    assert "PRIVATE KEY" not in proc.stderr
    # Nor into a folder to publish: the link planted beside a pack.
    packs = tmp_path / "packs"
    packs.mkdir()
    run_cli("pack", tiny_ckpt, "-o", packs / "heartmula.bpk", "--no-extras", "-q", check_rc=0)
    (packs / "tokenizer.json").symlink_to(secret)
    shutil.copy(tiny_ckpt / "gen_config.json", packs / "gen_config.json")
    proc = run_cli("publish-layout", tmp_path / "published", "--pack", packs / "heartmula.bpk", "-q")
    assert_clean_failure(proc, str(packs / "tokenizer.json"), "not valid JSON")
    assert not (tmp_path / "published").exists()
    # Nor by export-raw.
    proc = run_cli("export-raw", "--checkpoint-root", root, "--output-root", tmp_path / "raw", "-q")
    assert_clean_failure(proc, "tokenizer.json", "not valid JSON")
    assert not (tmp_path / "raw").exists()


@pytest.mark.parametrize(
    ("name", "content", "needles"),
    [
        ("tokenizer.json", {"version": "1.0"}, ["has no 'model'"]),
        ("tokenizer.json", [1, 2], ["must be a JSON object"]),
        ("gen_config.json", {"text_bos_id": 128000}, ["'text_eos_id' is missing"]),
        ("gen_config.json", {**GEN_CONFIG, "audio_eos_id": "8193"}, ["'audio_eos_id' must be an integer"]),
    ],
)
def test_runtime_files_that_are_not_what_their_name_says_are_refused(tiny_ckpt, tmp_path, name, content, needles):
    kwargs = {"tokenizer": content} if name == "tokenizer.json" else {"gen_config": content}
    root = ckpt_root(tiny_ckpt, tmp_path / "ckpt", **kwargs)
    proc = run_cli("pack", root, "-o", f"{tmp_path / 'out'}/", "-q")
    assert_clean_failure(proc, str(root / name), *needles)
    assert not (tmp_path / "out").exists()
    run_cli("pack", root, "-o", f"{tmp_path / 'out'}/", "--no-extras", "-q", check_rc=0)


def test_a_fifo_tokenizer_is_refused_not_left_out_or_waited_on(tiny_ckpt, tmp_path):
    root = ckpt_root(tiny_ckpt, tmp_path / "ckpt")
    (root / "tokenizer.json").unlink()
    os.mkfifo(root / "tokenizer.json")
    proc = run_cli_process("pack", root, "-o", f"{tmp_path / 'out'}/", "-q")
    assert_clean_failure(proc, str(root / "tokenizer.json"), "is a FIFO, not a regular file")
    assert not (tmp_path / "out").exists()


def test_a_runtime_file_from_outside_the_checkpoint_is_copied_with_a_note(tiny_ckpt, tmp_path):
    elsewhere = tmp_path / "elsewhere" / "tok.json"
    elsewhere.parent.mkdir()
    elsewhere.write_text(json.dumps(TOKENIZER))
    root = ckpt_root(tiny_ckpt, tmp_path / "ckpt", tokenizer=elsewhere)
    proc = run_cli("pack", root, "-o", f"{tmp_path / 'out'}/", "--json", check_rc=0)
    notes = json.loads(proc.stdout)["notes"]
    assert f"tokenizer.json: copied from {elsewhere}, outside {root}" in notes
    assert not any(n.startswith("gen_config.json") for n in notes)
    assert (tmp_path / "out" / "tokenizer.json").read_bytes() == elsewhere.read_bytes()
    assert f"note: tokenizer.json: copied from {elsewhere}" in proc.stderr


def fake_cache(cache: Path, repo: str, files: dict[str, bytes]) -> Path:
    """A Hugging Face cache entry laid out as huggingface_hub does: the snapshot's files are links
    into ../../blobs/. Returns the snapshot folder."""
    entry = cache / ("models--" + repo.replace("/", "--"))
    snapshot = entry / "snapshots" / ("c0ffee" * 6 + "c0ff")
    snapshot.mkdir(parents=True)
    (entry / "blobs").mkdir()
    for i, (name, data) in enumerate(files.items()):
        (entry / "blobs" / f"blob{i}").write_bytes(data)
        (snapshot / name).symlink_to(Path("..", "..", "blobs", f"blob{i}"))
    return snapshot


def test_the_hugging_face_cache_layout_packs_without_notes(tiny_ckpt, tmp_path):
    runtime = {"tokenizer.json": json.dumps(TOKENIZER).encode(), "gen_config.json": json.dumps(GEN_CONFIG).encode()}
    snapshot = fake_cache(tmp_path / "hub", "HeartMuLa/HeartMuLaGen", runtime)
    # A CKPT_ROOT laid out by `download`: links into the snapshots, whose files link into blobs/.
    root = ckpt_root(tiny_ckpt, tmp_path / "ckpt", **{k.split(".")[0]: snapshot / k for k in runtime})
    proc = run_cli("pack", root, "-o", f"{tmp_path / 'out'}/", "--json", check_rc=0)
    assert json.loads(proc.stdout)["notes"] == []
    for name, data in runtime.items():
        assert (tmp_path / "out" / name).read_bytes() == data
    # The snapshot itself as the folder holding them (`pack --hub` without --ckpt-root).
    checkpoints = load_model_folders([tiny_ckpt / MODEL], snapshot)
    jobs, notes = plan_checkpoints(checkpoints, f"{tmp_path / 'out2'}/")
    assert pack_manifests(jobs, notes=notes).notes == []
    assert (tmp_path / "out2" / "tokenizer.json").read_bytes() == runtime["tokenizer.json"]


# 4. The commit is all or nothing without --force.


def appearing(path: Path, data: bytes, *, on_pack: int = 1) -> Any:
    """A progress callback that creates `path` during the `on_pack`-th pack (counting from 0)."""
    state = {"packs": -1, "last": None}

    def progress(done: int, total: int) -> None:
        if state["last"] is None or done < state["last"] or total != state.get("total"):
            state["packs"] += 1  # a new pack began
        state["last"], state["total"] = done, total
        if state["packs"] >= on_pack and not os.path.lexists(path):
            path.write_bytes(data)

    return progress


def test_a_pack_that_appears_while_packing_leaves_nothing_put_in_place(tiny_root, tmp_path):
    out = tmp_path / "out"
    appeared = out / "heartcodec.bpk"
    with pytest.raises(hb.OutputError, match="heartcodec.bpk"):
        hb.pack_checkpoint(tiny_root, f"{out}/", progress=appearing(appeared, b"another run's codec"))
    assert listing(out) == ["heartcodec.bpk"], "heartmula.bpk (and the runtime files) must not be put in place"
    assert appeared.read_bytes() == b"another run's codec"


def test_a_runtime_file_that_appears_while_packing_is_not_replaced(tiny_ckpt, tmp_path):
    out = tmp_path / "out"
    appeared = out / "tokenizer.json"
    with pytest.raises(hb.OutputError, match="tokenizer.json"):
        hb.pack_checkpoint(tiny_ckpt, f"{out}/", progress=appearing(appeared, b'{"model": "theirs"}', on_pack=0))
    assert listing(out) == ["tokenizer.json"]
    assert appeared.read_bytes() == b'{"model": "theirs"}'
    # With --force it is replaced, as asked.
    hb.pack_checkpoint(tiny_ckpt, f"{out}/", force=True)
    assert listing(out) == ["gen_config.json", "heartmula.bpk", "tokenizer.json"]
    assert (out / "tokenizer.json").read_bytes() == (tiny_ckpt / "tokenizer.json").read_bytes()


class _CreatesAfterCommit:
    """A staged file that, once committed, lets another run create `later` (the next file's
    destination) before that one is committed: the race no check before the commit can close."""

    def __init__(self, staged: _core.StagedFile, later: Path) -> None:
        self.staged, self.later = staged, later
        self.destination, self.temp_path = staged.destination, staged.temp_path

    def commit(self) -> None:
        self.staged.commit()
        self.later.write_bytes(b"theirs")

    def discard(self) -> None:
        self.staged.discard()


def test_a_commit_that_fails_part_way_takes_back_only_what_it_put_in_place(tmp_path):
    first, second = _core.StagedFile(tmp_path / "a.bpk"), _core.StagedFile(tmp_path / "b.bpk")
    first.temp_path.write_bytes(b"ours a")
    second.temp_path.write_bytes(b"ours b")
    with pytest.raises(hb.OutputError, match="b.bpk"):
        commit_all([_CreatesAfterCommit(first, tmp_path / "b.bpk"), second], overwrite=False)  # type: ignore[list-item]
    assert listing(tmp_path) == ["b.bpk"], "a.bpk, put in place by this commit, is taken back; no temporary file"
    assert (tmp_path / "b.bpk").read_bytes() == b"theirs"


# 5. A full disk names the file being written.


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("mount"), reason="needs root to mount a small tmpfs")
def test_a_full_disk_while_copying_a_runtime_file_names_the_destination(tmp_path):
    src = tiny_model(tmp_path / "src")
    big = {**TOKENIZER, "padding": "x" * (1 << 20)}  # 1 MiB: the pack fits in the tmpfs, this does not
    (src / "tokenizer.json").write_text(json.dumps(big))
    small = tmp_path / "small"
    small.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(small)], check=False).returncode:
        pytest.skip("mounting a tmpfs is not permitted here")
    try:
        proc = run_cli("pack", src, "--any-model", "-o", small / "model.bpk", "-q")
        line = assert_clean_failure(proc, str(small / "tokenizer.json"), "No space left on device")
        assert str(src / "tokenizer.json") not in line
        assert listing(small) == [], "no pack, no temporary file"
    finally:
        subprocess.run(["umount", str(small)], check=False)


def test_a_folder_output_is_locked_while_it_is_filled(tmp_path):
    # Another run's sweep removes only partials nobody holds a lock on (a live run in another PID
    # namespace looks dead to it): a folder partial must be held like the core's partial files.
    import fcntl

    from heartmula_burn._atomic import staged_folder

    dest = tmp_path / "unpacked"
    with staged_folder(dest, overwrite=False) as partial:
        (partial / "x").write_text("x")
        other = os.open(partial, os.O_RDONLY | os.O_DIRECTORY)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(other)
        # Under the name of a dead run (no PID is above pid_max), the lock alone keeps it.
        dead = partial.with_name(".unpacked.4194305.heartmula-partial")
        partial.rename(dead)
        try:
            _core.partial_path(dest)  # sweeps dead runs' partials for `dest`
            assert dead.is_dir()
        finally:
            dead.rename(partial)
    assert (dest / "x").read_text() == "x" and not partial.exists()
