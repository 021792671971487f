"""Options that no other test reaches: each is given, and what it changes is checked against a source
that does not come from the option's own code (the installed distribution's metadata, the files
given, the bytes of a second run, safetensors' reader)."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_clean_failure, linked, load_json, run_cli
from heartmula_burn import _cli as cli
from safetensors.numpy import load_file

LM, CODEC = "HeartMuLa-oss-3B", "HeartCodec-oss"


def test_version_is_the_installed_distributions():
    proc = run_cli("--version", check_rc=0)
    assert proc.stdout.strip() == f"heartmula-burn {importlib.metadata.version('heartmula-burn')}"


def test_manifest_keeps_an_existing_file_unless_forced(tiny_ckpt, tmp_path):
    ckpt = linked(tiny_ckpt, tmp_path)  # a manifest refers only to files inside its folder
    out = tmp_path / "manifest.json"
    out.write_text("{}\n")
    proc = run_cli("manifest", ckpt, "-o", out)
    assert_clean_failure(proc, str(out), "--force")
    assert out.read_text() == "{}\n"
    run_cli("manifest", ckpt, "-o", out, "--force", check_rc=0)
    written = load_json(out)
    assert len(written["tensors"]) == 289
    fresh = tmp_path / "fresh.json"
    run_cli("manifest", ckpt, "-o", fresh, check_rc=0)
    assert out.read_bytes() == fresh.read_bytes()


def test_export_raw_subdir_exports_only_that_model(tiny_root, tmp_path):
    root = tmp_path / "raw"
    run_cli("export-raw", "--checkpoint-root", tiny_root, "--subdir", CODEC, "--output-root", root, "-q", check_rc=0)
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ["heartcodec_raw_f32"]
    source = {}
    for shard in sorted((tiny_root / CODEC).glob("*.safetensors")):
        source.update(load_file(shard))
    exported = {p.stem: np.load(p) for p in (root / "heartcodec_raw_f32").glob("*.npy")}
    assert exported.keys() == source.keys()
    for name, array in source.items():
        assert exported[name].tobytes() == array.tobytes(), name


def test_publish_layout_takes_the_runtime_files_given(tiny_ckpt, tmp_path):
    pack = tmp_path / "packs" / "heartmula.bpk"
    run_cli("pack", tiny_ckpt, "-o", f"{pack.parent}/", "-q", check_rc=0)
    # Runtime files that differ from those beside the pack, so that the copy shows which was taken.
    tokenizer = tmp_path / "mine" / "tokenizer.json"
    tokenizer.parent.mkdir()
    tokenizer.write_text(json.dumps({"model": {"type": "BPE", "vocab": {"x": 0}, "merges": []}, "mine": True}))
    gen_config = tmp_path / "mine" / "gen_config.json"
    gen_config.write_text(
        json.dumps({"text_bos_id": 1, "text_eos_id": 2, "audio_eos_id": 3, "empty_id": 0, "mine": True})
    )
    assert tokenizer.read_bytes() != (pack.parent / "tokenizer.json").read_bytes()
    out = tmp_path / "repo"
    args = ("publish-layout", out, "--pack", pack, "--tokenizer", tokenizer, "--gen-config", gen_config, "-q")
    run_cli(*args, check_rc=0)
    assert (out / "tokenizer.json").read_bytes() == tokenizer.read_bytes()
    assert (out / "gen_config.json").read_bytes() == gen_config.read_bytes()
    card = (out / "README.md").read_text()
    assert hashlib.sha256(tokenizer.read_bytes()).hexdigest() in card
    # A tokenizer.json that is not one is refused, naming the file given.
    bad = tmp_path / "mine" / "bad.json"
    bad.write_text("[1, 2]")
    proc = run_cli("publish-layout", tmp_path / "repo2", "--pack", pack, "--tokenizer", bad, "-q")
    assert_clean_failure(proc, str(bad))
    assert not (tmp_path / "repo2").exists()


def test_unpack_replaces_a_folder_only_when_forced(tiny_ckpt, tmp_path):
    pack = tmp_path / "p.bpk"
    run_cli("pack", tiny_ckpt, "-o", pack, "-q", "--no-extras", check_rc=0)
    out = tmp_path / "unpacked"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert_clean_failure(run_cli("unpack", pack, "-o", out, "-q"), str(out), "--force")
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    run_cli("unpack", pack, "-o", out, "-q", "--force", check_rc=0)
    assert not (out / "keep.txt").exists()
    unpacked = {}
    for shard in sorted(out.glob("*.safetensors")):
        unpacked.update(load_file(shard))
    source = {}
    for shard in sorted((tiny_ckpt / LM).glob("*.safetensors")):
        source.update(load_file(shard))
    assert unpacked.keys() == source.keys()
    for name, array in source.items():
        assert unpacked[name].tobytes() == array.tobytes(), name


def test_synthetic_shards_and_seed(tmp_path):
    run_cli("synthetic", tmp_path / "a", "--model", "heartmula", "--shards", "3", "--seed", "7", check_rc=0)
    shards = sorted((tmp_path / "a" / LM).glob("*.safetensors"))
    assert len(shards) == 3
    index = load_json(tmp_path / "a" / LM / "model.safetensors.index.json")
    assert sorted(set(index["weight_map"].values())) == [p.name for p in shards]
    assert len(index["weight_map"]) == 289
    assert not (tmp_path / "a" / CODEC).exists(), "--model heartmula writes no codec"
    # The same seed gives the same bytes; another seed other values.
    run_cli("synthetic", tmp_path / "b", "--model", "heartmula", "--shards", "3", "--seed", "7", check_rc=0)
    run_cli("synthetic", tmp_path / "c", "--model", "heartmula", "--shards", "3", "--seed", "8", check_rc=0)
    for shard in shards:
        assert (tmp_path / "b" / LM / shard.name).read_bytes() == shard.read_bytes()
        assert (tmp_path / "c" / LM / shard.name).read_bytes() != shard.read_bytes()


def test_synthetic_full_asks_for_the_real_shapes(tmp_path, monkeypatch):
    # A full-size checkpoint is 22 GB (the benchmark writes one): here only what the option asks of
    # the writer is checked; the full shapes themselves are checked by tests/test_oracles.py.
    calls = []
    from heartmula_burn import _synthetic

    monkeypatch.setattr(_synthetic, "write_synthetic_checkpoint", lambda *a, **k: calls.append(k) or Path(a[0]))
    run_cli("synthetic", tmp_path / "full", "--full", "--dtype", "bf16", check_rc=0)
    assert [c["full"] for c in calls] == [True] and calls[0]["dtype"].upper() == "BF16"
    assert cli.main(["synthetic", str(tmp_path / "tiny")]) == 0
    assert [c["full"] for c in calls] == [True, False]


@pytest.fixture(scope="module")
def lm_pack(tiny_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sanity") / "heartmula.bpk"
    run_cli("pack", tiny_root, "--subdir", LM, "-o", out, "-q", check_rc=0)
    return out


def _sanity(*args: object) -> dict:
    proc = run_cli("sanity", *args, "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_sanity_subdir_picks_the_reference_model(lm_pack, tiny_root):
    pytest.importorskip("torch")
    report = _sanity(lm_pack, "--reference", tiny_root, "--subdir", LM, "--device", "cpu", "--frames", "1")
    assert report["ok"] and report["reference"] == str(tiny_root)
    # The codec folder as the reference of the LM pack is refused, naming the mismatch.
    proc = run_cli("sanity", lm_pack, "--reference", tiny_root, "--subdir", CODEC, "--device", "cpu")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr


def test_sanity_device_auto_and_frames(lm_pack):
    torch = pytest.importorskip("torch")
    report = _sanity(lm_pack)  # --device auto is the default
    assert report["device"] == ("cuda" if torch.cuda.is_available() else "cpu")
    none = _sanity(lm_pack, "--frames", "0", "--device", "cpu")
    assert report["ok"] and none["ok"] and (report["frames"], none["frames"]) == (2, 0)
    assert len(report["figures"]["greedy_codes"]) == 2 and none["figures"]["greedy_codes"] == []


def test_output_piped_into_a_reader_that_left_is_not_a_failure(tiny_ckpt, tmp_path):
    """`inspect PACK | head -3` under `set -o pipefail`: `head` leaves while the last of our output
    is still in Python's buffer. Written only at interpreter exit, the EPIPE could not be caught
    (CI saw "Exception ignored ... BrokenPipeError", exit 120); the command must exit 0 without a
    traceback. The child's stdout gets a 1 MiB buffer (the whole listing stays in it until the
    end) and the pipe's read end is closed first, so the outcome does not depend on timing."""
    pack = tmp_path / "heartmula.bpk"
    run_cli("pack", tiny_ckpt, "-o", pack, "-q", check_rc=0)
    child = (
        "import io, sys\n"
        "sys.stdout = io.TextIOWrapper(io.open(1, 'wb', buffering=1 << 20, closefd=False))\n"
        "from heartmula_burn._cli import main\n"
        "raise SystemExit(main(sys.argv[1:]))\n"
    )
    for command in (["inspect", pack], ["verify", pack]):
        read_end, write_end = os.pipe()
        os.close(read_end)  # every write to the pipe now fails
        try:
            proc = subprocess.run(
                [sys.executable, "-c", child, *map(str, command)],
                stdout=write_end,
                stderr=subprocess.PIPE,
                text=True,
                timeout=120,
                check=False,
            )
        finally:
            os.close(write_end)
        assert (proc.returncode, proc.stderr) == (0, ""), command
