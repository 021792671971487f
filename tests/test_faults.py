"""Faults in the field, tried as a user meets them: files that shrink while they are read, config,
index and manifest values that are not what they claim, paths that point out of the checkpoint,
names that are terminal escape sequences, semantic usage errors, and packs racing for one output.
Each ends in one line naming the file (and tensor, and key), with the right exit code, nothing
half-written and no signal death."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import cbor2
import heartmula_burn as hb
import numpy as np
import pytest
from conftest import assert_clean_failure, big_sparse_checkpoint, linked, run_cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.numpy import save_file

MODEL = "HeartMuLa-oss-3B"


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


STARTED: list[subprocess.Popen[str]] = []


@pytest.fixture(autouse=True)
def reap_started():
    """Every process `start` made is ended and its pipe closed after the test, also when the test
    failed before `finish` (else the pipe is closed by the collector: a ResourceWarning later)."""
    yield
    while STARTED:
        proc = STARTED.pop()
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def start(*args: object) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "heartmula_burn", *map(str, args)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    STARTED.append(proc)
    return proc


def finish(proc: subprocess.Popen[str]) -> subprocess.CompletedProcess[str]:
    _, stderr = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, "", stderr)


def wait_for(condition, proc: subprocess.Popen[str], what: str) -> None:
    deadline = time.monotonic() + 120  # a hang, not a bound on how fast anything is
    while not condition():
        assert proc.poll() is None and time.monotonic() < deadline, f"never {what}"
        time.sleep(0.01)


def bytes_written(proc: subprocess.Popen[str]) -> int:
    """What the process has written so far (Linux's per-process I/O accounting)."""
    try:
        io = Path(f"/proc/{proc.pid}/io").read_text()
    except OSError:
        return 0
    return next(int(line.split()[1]) for line in io.splitlines() if line.startswith("wchar:"))


def mapped(proc: subprocess.Popen[str], *paths: Path) -> bool:
    """Whether the process has every one of `paths` mapped into its memory."""
    try:
        maps = Path(f"/proc/{proc.pid}/maps").read_text()
    except OSError:
        return False
    return all(f" {os.path.realpath(p)}\n" in maps for p in paths)


# ---- files that shrink while they are read ----------------------------------------------------------


@pytest.mark.parametrize("dtype, reads", [("bf16", "through the map"), ("f32", "by copy_file_range")])
def test_a_source_that_shrinks_while_packing_ends_in_one_line_not_sigbus(tmp_path, dtype, reads):
    src = big_sparse_checkpoint(tmp_path / "src", 4 << 30)
    out = tmp_path / "out"
    out.mkdir()
    proc = start("pack", src, "--any-model", "--dtype", dtype, "-o", out / "p.bpk", "-q")
    wait_for(lambda: any(n.endswith(".heartmula-partial") for n in os.listdir(out)), proc, "started")
    wait_for(lambda: bytes_written(proc) >= 64 << 20, proc, "wrote 64 MiB")  # under way, far from done
    os.truncate(src / "model.safetensors", 1 << 20)  # a download restarted, a shard replaced in place
    done = finish(proc)
    assert done.returncode == 1, f"rc {done.returncode} ({reads}): {done.stderr}"
    assert_clean_failure(done, "model.safetensors", "tensor 'big'", "shrank")
    assert listing(out) == []


def fake_pack(path: Path, nbytes: int) -> Path:
    """A Burn pack of one F32 tensor 'big' of `nbytes`, sparse on disk."""
    cbor = cbor2.dumps({"tensors": {"big": {"dtype": "F32", "shape": [nbytes // 4], "data_offsets": [0, nbytes]}}})
    head = b"NRUB" + struct.pack("<HI", 1, len(cbor)) + cbor
    head += b"\0" * (-len(head) % 256)
    with open(path, "wb") as f:
        f.write(head)
        f.truncate(len(head) + nbytes)
    return path


def test_a_pack_that_shrinks_while_verified_ends_in_one_line(tmp_path):
    src = big_sparse_checkpoint(tmp_path / "src", 8 << 30)
    pack = fake_pack(tmp_path / "p.bpk", 8 << 30)
    proc = start("verify", pack, "--against", src, "-q")
    # Both files mapped: the comparison, tens of seconds over 16 GiB of sparse pages, has begun.
    wait_for(lambda: mapped(proc, pack, src / "model.safetensors"), proc, "mapped both files")
    os.truncate(pack, 1 << 20)
    done = finish(proc)
    assert_clean_failure(done, str(pack), "tensor 'big'", "shrank")


def test_open_pack_views_of_a_file_that_shrank_raise_instead_of_killing(tiny_ckpt, tmp_path):
    pack_path = tmp_path / "p.bpk"
    run_cli("pack", tiny_ckpt, "-o", pack_path, "-q", "--no-extras", check_rc=0)
    copy = tmp_path / "copy.bpk"
    shutil.copy(pack_path, copy)
    pack = hb.open_pack(copy)
    last = pack.tensors[-1]
    early = pack.numpy(pack.tensors[0].name)  # a view made before the file shrinks
    view = pack.numpy(last.name)
    os.truncate(copy, pack.tensors[len(pack.tensors) // 2].file_offset)
    with pytest.raises(hb.PackFileError) as err:
        pack.numpy(last.name)
    assert f"tensor '{last.name}'" in str(err.value) and "too short" in str(err.value)
    assert float(np.abs(view.astype(np.float32)).sum()) == 0.0  # read past the end: zeros, not SIGBUS
    with pytest.raises(hb.PackFileError) as err:
        pack.check()
    assert "shrank" in str(err.value) and err.value.tensor == last.name
    assert early.shape == pack.tensors[0].shape
    del early, view
    pack.close()


# ---- values that are not what they claim -------------------------------------------------------------


def edited_ckpt(tiny_ckpt: Path, tmp_path: Path) -> Path:
    root = tmp_path / "ckpt"
    shutil.copytree(tiny_ckpt, root)
    return root


@pytest.mark.parametrize(
    "edit, key, wanted",
    [
        (lambda c: c.update(flavors=[1]), "flavors", "must be an object, not a list"),
        (lambda c: c["flavors"]["tiny-backbone"].update(num_heads=0), "flavors.tiny-backbone.num_heads", ">= 1, not 0"),
        (lambda c: c["flavors"]["tiny-decoder"].update(num_kv_heads=0), "flavors.tiny-decoder.num_kv_heads", "not 0"),
        (lambda c: c["flavors"]["tiny-decoder"].update(num_kv_heads=3), "flavors.tiny-decoder.num_kv_heads", "divide"),
        (lambda c: c["flavors"]["tiny-backbone"].update(embed_dim="32"), "flavors.tiny-backbone.embed_dim", 'not "32"'),
        (lambda c: c.update(text_vocab_size=True), "text_vocab_size", "not true"),
        (lambda c: c.update(backbone_flavor=None), "backbone_flavor", "must be a string, not null"),
        (lambda c: c.update(backbone_flavor="llama-9000B"), "backbone_flavor", "not a known flavour"),
        (lambda c: c.update(audio_num_codebooks=1), "audio_num_codebooks", ">= 2"),
    ],
)
def test_config_values_are_checked_and_named_by_key(tiny_ckpt, tmp_path, edit, key, wanted):
    root = edited_ckpt(tiny_ckpt, tmp_path)
    path = root / MODEL / "config.json"
    config = json.loads(path.read_text())
    edit(config)
    path.write_text(json.dumps(config))
    assert_clean_failure(run_cli("pack", root, "-o", tmp_path / "p.bpk"), f"{path}: '{key}'", wanted)
    assert not (tmp_path / "p.bpk").exists()


@pytest.mark.parametrize("outside", ["../../elsewhere.safetensors", "/abs/path.safetensors", "a/../../b.safetensors"])
def test_an_index_pointing_outside_the_checkpoint_is_refused(tiny_ckpt, tmp_path, outside):
    root = edited_ckpt(tiny_ckpt, tmp_path)
    index_path = root / MODEL / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    index["weight_map"]["audio_head"] = outside
    index_path.write_text(json.dumps(index))
    (tmp_path / "elsewhere.safetensors").write_bytes(b"the user's other file")
    line = assert_clean_failure(run_cli("pack", root, "-o", tmp_path / "p.bpk"), str(index_path), "'audio_head'")
    assert repr(outside) in line and ("absolute" in line or "climbs out" in line)


def test_a_hugging_face_cache_snapshot_packs(tiny_ckpt, tmp_path):
    """The hub's cache keeps files in blobs/ and links them from snapshots/<rev>/ (../../blobs/...)."""
    repo = tmp_path / "models--HeartMuLa--HeartMuLa-oss-3B"
    snapshot = repo / "snapshots" / "0123abc"
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for f in sorted((tiny_ckpt / MODEL).iterdir()):
        blob = repo / "blobs" / f"{abs(hash(f.name)):x}"
        shutil.copy(f, blob)
        (snapshot / f.name).symlink_to(os.path.relpath(blob, snapshot))
    assert os.readlink(snapshot / "config.json").startswith("../../blobs/")
    run_cli("pack", snapshot, "-o", tmp_path / "p.bpk", "--no-extras", check_rc=0)
    run_cli("verify", tmp_path / "p.bpk", "--against", snapshot, check_rc=0)
    # A manifest saved in the snapshot refers to the links, not to the blobs they point at.
    run_cli("manifest", snapshot, "-o", snapshot / "manifest.json", check_rc=0)
    doc = json.loads((snapshot / "manifest.json").read_text())
    assert doc["tensors"][0]["source"]["file"].startswith("model-0000")
    run_cli("pack", "--manifest", snapshot / "manifest.json", "-o", tmp_path / "m.bpk", "--no-extras", check_rc=0)
    assert (tmp_path / "m.bpk").read_bytes() == (tmp_path / "p.bpk").read_bytes()


def test_a_manifest_pointing_outside_its_folder_is_refused(tiny_ckpt, tmp_path):
    folder = tmp_path / "m"
    run_cli("manifest", linked(tiny_ckpt, folder), "-o", folder / "manifest.json", check_rc=0)
    doc = json.loads((folder / "manifest.json").read_text())
    for field, value in (("source", "../../secret.safetensors"), ("extras", "/home/user/.ssh/id_rsa")):
        bad = json.loads(json.dumps(doc))
        if field == "source":
            bad["tensors"][2]["source"]["file"] = value
        else:
            bad["extras"]["tokenizer.json"] = value
        (folder / "bad.json").write_text(json.dumps(bad))
        line = assert_clean_failure(run_cli("pack", "--manifest", folder / "bad.json", "-o", tmp_path / "x.bpk"))
        assert str(folder / "bad.json") in line and repr(value) in line, line
    # Writing a manifest that would need such paths is refused up front, with what to do instead.
    line = assert_clean_failure(
        run_cli("manifest", tiny_ckpt, "-o", tmp_path / "elsewhere.json"), "CKPT_ROOT/manifest.json"
    )
    assert "outside the manifest's folder" in line and not (tmp_path / "elsewhere.json").exists()


# ---- names are data --------------------------------------------------------------------------------

HOSTILE = "\x1b]0;pwned\x07title"
CLEAR = "w\x1b[2J\x1b[H"


def test_control_characters_are_escaped_for_people_and_kept_in_json(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    save_file(
        {HOSTILE: np.ones(2, np.float32), CLEAR: np.zeros(1, np.float32)},
        str(src / "model.safetensors"),
        metadata={"format": "pt"},
    )
    pack = tmp_path / "p.bpk"
    run_cli("pack", src, "--any-model", "-o", pack, "-q", check_rc=0)
    text = run_cli("inspect", pack, check_rc=0).stdout
    assert "\x1b" not in text and "\x07" not in text
    assert "\\x1b]0;pwned\\x07title" in text and "w\\x1b[2J\\x1b[H" in text
    doc = json.loads(run_cli("inspect", pack, "--json", check_rc=0).stdout)
    assert {t["name"] for t in doc["tensors"]} == {HOSTILE, CLEAR}
    # An error naming such a tensor is one escaped line.
    folder = tmp_path / "m"
    run_cli("manifest", linked(src, folder), "--any-model", "-o", folder / "m.json", check_rc=0)
    manifest = json.loads((folder / "m.json").read_text())
    manifest["tensors"][0]["source"]["key"] = HOSTILE + "\nsecond line"
    (folder / "m.json").write_text(json.dumps(manifest))
    line = assert_clean_failure(run_cli("pack", "--manifest", folder / "m.json", "-o", tmp_path / "x.bpk"), "not found")
    assert "\\x1b]0;pwned\\x07title\\x0asecond line" in line and "\x1b" not in line
    # The model card escapes them too.
    run_cli("publish-layout", tmp_path / "repo", "--pack", pack, "-q", check_rc=0)
    card = (tmp_path / "repo" / "README.md").read_text()
    assert "\x1b" not in card and "\x07" not in card


# ---- exit codes --------------------------------------------------------------------------------------


def test_semantic_usage_errors_exit_2(tiny_ckpt, tmp_path):
    run_cli("manifest", linked(tiny_ckpt, tmp_path), "-o", tmp_path / "m.json", check_rc=0)
    both = run_cli("pack", tiny_ckpt, "--manifest", tmp_path / "m.json", "-o", tmp_path / "p.bpk")
    assert both.returncode == 2 and "not both" in both.stderr and "usage:" in both.stderr
    neither = run_cli("pack", "-o", tmp_path / "p.bpk")
    assert neither.returncode == 2 and "CKPT_ROOT" in neither.stderr
    assert run_cli("sanity", tmp_path / "p.bpk", "--frames", "-1").returncode == 2
    assert not (tmp_path / "p.bpk").exists()


def test_the_console_script_is_the_cli(tiny_ckpt, tmp_path):
    script = Path(sys.executable).parent / "heartmula-burn"
    proc = subprocess.run(
        [script, "pack", tiny_ckpt, "-o", tmp_path / "p.bpk", "-q"], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
    proc = subprocess.run([script, "inspect", tmp_path / "nope.bpk"], capture_output=True, text=True, check=False)
    assert_clean_failure(proc, "nope.bpk", "No such file")
    assert subprocess.run([script, "pack", "--dtype", "f8"], capture_output=True, check=False).returncode == 2


# ---- arbitrary JSON and bytes where a config, an index or a manifest belongs -------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)


def mutated(valid: dict, values=JSON):
    """`valid` with a few keys (top-level or one level down) replaced by arbitrary JSON."""

    @st.composite
    def build(draw):
        doc = json.loads(json.dumps(valid))
        for _ in range(draw(st.integers(1, 3))):
            target = doc
            keys = list(target)
            key = draw(st.sampled_from(keys + ["extra"]))
            if isinstance(target.get(key), dict) and target[key] and draw(st.booleans()):
                target = target[key]
                key = draw(st.sampled_from(list(target)))
            target[key] = draw(values)
        return doc

    return build()


def documents(valid: dict):
    as_text = st.one_of(JSON.map(json.dumps), mutated(valid).map(json.dumps))
    return st.one_of(as_text.map(str.encode), st.binary(max_size=64))


def assert_ok_or_one_line(proc: subprocess.CompletedProcess[str]) -> None:
    # In-process: an unexpected exception would propagate out of main() and fail the test by itself.
    assert proc.returncode in (0, 1), proc.stderr
    if proc.returncode == 1:
        assert len([line for line in proc.stderr.splitlines() if line.strip()]) == 1, proc.stderr


FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def scratch(tiny_ckpt, tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz") / "ckpt"
    shutil.copytree(tiny_ckpt, root)
    return root


@pytest.mark.parametrize("document", ["config.json", "model.safetensors.index.json"])
@FUZZ
@given(data=st.data())
def test_any_config_or_index_packs_or_fails_in_one_line(scratch, tmp_path, document, data):
    path = scratch / MODEL / document
    original = path.read_bytes()
    try:
        path.write_bytes(data.draw(documents(json.loads(original))))
        assert_ok_or_one_line(run_cli("pack", scratch, "-o", tmp_path / "p.bpk", "--force", "-q"))
    finally:
        path.write_bytes(original)


@pytest.fixture(scope="module")
def valid_manifest(scratch):
    path = scratch / "manifest.json"
    run_cli("manifest", scratch, "-o", path, "--force", check_rc=0)
    doc = json.loads(path.read_text())
    doc["tensors"] = doc["tensors"][:3]  # small enough for the fuzzer to reach into
    return doc


@FUZZ
@given(data=st.data())
def test_any_manifest_packs_or_fails_in_one_line(scratch, valid_manifest, tmp_path, data):
    path = scratch / "fuzzed.json"
    path.write_bytes(data.draw(documents(valid_manifest)))
    assert_ok_or_one_line(run_cli("pack", "--manifest", path, "-o", tmp_path / "p.bpk", "--force", "-q"))


# ---- packs racing for one output ---------------------------------------------------------------------


@pytest.mark.parametrize("force", [False, True])
def test_three_packs_racing_leave_one_complete_pack_and_no_partial(tmp_path, force):
    src = big_sparse_checkpoint(tmp_path / "src", 256 << 20)
    out = tmp_path / "out"
    out.mkdir()
    args = ["pack", src, "--any-model", "--dtype", "bf16", "-o", out / "p.bpk", "-q"] + (["--force"] if force else [])
    runs = [finish(p) for p in [start(*args) for _ in range(3)]]
    codes = sorted(r.returncode for r in runs)
    if force:
        assert codes == [0, 0, 0], [r.stderr for r in runs]
    else:  # the first to finish wins; the others find the output there, at the start or at the rename
        assert codes == [0, 1, 1], [r.stderr for r in runs]
        for r in runs:
            if r.returncode:
                assert_clean_failure(r, "p.bpk", "output exists")
    assert listing(out) == ["p.bpk"]
    run_cli("verify", out / "p.bpk", "--against", src, check_rc=0)
