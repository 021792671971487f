"""The CLI end to end on tiny synthetic HeartMuLa checkpoints, checked against the safetensors
library's own reader (not ours)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from conftest import REPO, assert_clean_failure, linked, load_json, run_cli
from heartmula_burn import open_pack
from heartmula_burn._fields import Fields
from heartmula_burn._presets.heartmula import HeartMuLa
from safetensors.numpy import load_file, save_file


def source_tensors(ckpt: Path) -> dict[str, np.ndarray]:
    """Every tensor of the checkpoint, read by the safetensors library (bf16 arrives as ml_dtypes)."""
    tensors = {}
    for shard in sorted((ckpt / "HeartMuLa-oss-3B").glob("*.safetensors")):
        tensors.update(load_file(shard))
    return tensors


def test_f32_pack_holds_every_tensor_byte_for_byte(tiny_ckpt, tmp_path):
    out = tmp_path / "heartmula.bpk"
    proc = run_cli("pack", tiny_ckpt, "-o", out, "--json", check_rc=0)
    summary = json.loads(proc.stdout)
    (report,) = summary["packs"]
    assert report["tensors"] == 289 and report["file_size"] == out.stat().st_size and report["model"] == "heartmula"
    assert sorted(summary["extras"]) == sorted(str(tmp_path / n) for n in ("tokenizer.json", "gen_config.json"))
    source = source_tensors(tiny_ckpt)
    config = load_json(tiny_ckpt / "HeartMuLa-oss-3B" / "config.json")
    shapes = HeartMuLa().expected_tensors(Fields(config, Path("config.json")))
    with open_pack(out) as pack:
        assert len(pack) == 289
        assert {t.name for t in pack.tensors} == set(source) == set(shapes)
        for t in pack.tensors:
            assert t.dtype == "F32"
            assert t.shape == shapes[t.name]
            assert bytes(pack.raw_bytes(t.name)) == source[t.name].tobytes(), t.name
            assert t.file_offset % 256 == 0
        assert pack.metadata["format"] == "burnpack"
        assert pack.metadata["producer"] == "heartmula-burn"
        assert pack.metadata["source_model"] == "HeartMuLa-oss-3B"
        assert pack.metadata["source_dtype"] == "F32"
        assert pack.layout == "0.20+"
        # Linear weights keep the upstream [out, in] layout: q_proj of the tiny backbone is [32, 32],
        # k_proj [16, 32] (2 kv heads x head_dim 8 out, 32 in); audio_head stays [in, out] per codebook.
        assert pack.info("backbone.layers.0.attn.k_proj.weight").shape == (16, 32)
        assert pack.info("audio_head").shape == (7, 16, 37)
    for extra in ("tokenizer.json", "gen_config.json"):
        assert (tmp_path / extra).read_bytes() == (tiny_ckpt / extra).read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gen_config.json", "heartmula.bpk", "tokenizer.json"]


def test_data_order_follows_the_checkpoint_on_disk(tiny_ckpt, tmp_path):
    out = tmp_path / "p.bpk"
    run_cli("pack", tiny_ckpt, "-o", out, "-q", check_rc=0)
    on_disk = []
    for shard in sorted((tiny_ckpt / "HeartMuLa-oss-3B").glob("*.safetensors")):
        header_len = int.from_bytes(shard.read_bytes()[:8], "little")
        header = json.loads(shard.read_bytes()[8 : 8 + header_len])
        header.pop("__metadata__", None)
        on_disk += sorted(header, key=lambda n: header[n]["data_offsets"][0])
    with open_pack(out) as pack:
        assert [t.name for t in pack.tensors] == on_disk


@pytest.mark.parametrize("dtype", ["bf16", "f16"])
def test_narrowing_matches_round_to_nearest_even(tiny_ckpt, tmp_path, dtype):
    out = tmp_path / f"{dtype}.bpk"
    run_cli("pack", tiny_ckpt, "-o", out, "--dtype", dtype, "-q", check_rc=0)
    target = np.dtype(ml_dtypes.bfloat16) if dtype == "bf16" else np.dtype("<f2")
    source = source_tensors(tiny_ckpt)
    with open_pack(out) as pack:
        assert pack.metadata["dtype"] == dtype.upper()
        for t in pack.tensors:
            assert t.dtype == dtype.upper()
            assert bytes(pack.raw_bytes(t.name)) == source[t.name].astype(target).tobytes(), t.name
    assert out.stat().st_size < (tiny_ckpt / "HeartMuLa-oss-3B").stat().st_size + 2 * 10**6


def test_bf16_checkpoint_widens_exactly_or_stays(tiny_ckpt_bf16, tmp_path):
    source = source_tensors(tiny_ckpt_bf16)
    run_cli("pack", tiny_ckpt_bf16, "-o", tmp_path / "f32.bpk", "-q", check_rc=0)
    run_cli("pack", tiny_ckpt_bf16, "-o", tmp_path / "src.bpk", "--dtype", "source", "-q", check_rc=0)
    with open_pack(tmp_path / "f32.bpk") as f32, open_pack(tmp_path / "src.bpk") as src:
        assert f32.metadata["source_dtype"] == "BF16"
        for name, array in source.items():
            assert array.dtype == ml_dtypes.bfloat16
            np.testing.assert_array_equal(f32[name], array.astype(np.float32))
            assert bytes(src.raw_bytes(name)) == array.tobytes()


def test_manifest_edit_then_pack(tiny_ckpt, tmp_path):
    manifest_path = tmp_path / "m" / "manifest.json"
    run_cli("manifest", linked(tiny_ckpt, manifest_path.parent), "-o", manifest_path, check_rc=0)
    doc = load_json(manifest_path)
    assert len(doc["tensors"]) == 289
    assert not os.path.isabs(doc["tensors"][0]["source"]["file"]), "paths are relative to the manifest"
    # Keep three tensors, rename one, reverse their order, cast one, give one a param_id and set metadata.
    picked = [t for t in doc["tensors"] if t["name"] in ("audio_head", "muq_linear.bias", "backbone.norm.scale")]
    picked.reverse()
    picked[0]["name"] = "renamed." + picked[0]["name"]
    picked[1]["dtype"] = "BF16"
    picked[2]["param_id"] = 2**64 - 1
    doc["tensors"] = picked
    doc["metadata"] = {"producer": "me", "z": "last", "a": "first"}
    manifest_path.write_text(json.dumps(doc))
    out = tmp_path / "edited.bpk"
    # Run from another folder: sources resolve from the manifest's folder, not the working directory.
    run_cli("pack", "--manifest", manifest_path, "-o", out, "-q", "--no-extras", cwd=tmp_path, check_rc=0)
    source = source_tensors(tiny_ckpt)
    with open_pack(out) as pack:
        assert [t.name for t in pack.tensors] == [t["name"] for t in picked]
        assert pack.metadata == {"producer": "me", "z": "last", "a": "first"}
        first = pack.tensors[0]
        assert bytes(pack.raw_bytes(first.name)) == source[picked[0]["source"]["key"]].tobytes()
        assert pack.tensors[1].dtype == "BF16"
        assert (
            bytes(pack.raw_bytes(pack.tensors[1].name))
            == source[picked[1]["name"]].astype(ml_dtypes.bfloat16).tobytes()
        )
        assert pack.tensors[2].param_id == 2**64 - 1
        assert pack.tensors[0].param_id is None


def test_manifest_that_lies_about_a_shape_is_refused(tiny_ckpt, tmp_path):
    manifest_path = tmp_path / "manifest.json"
    run_cli("manifest", linked(tiny_ckpt, tmp_path), "-o", manifest_path, check_rc=0)
    doc = load_json(manifest_path)
    doc["tensors"][5]["shape"] = [1, 2, 3]
    manifest_path.write_text(json.dumps(doc))
    out = tmp_path / "x.bpk"
    proc = run_cli("pack", "--manifest", manifest_path, "-o", out)
    assert_clean_failure(proc, doc["tensors"][5]["name"], "expected shape [1, 2, 3]", ".safetensors")
    assert not out.exists()


def test_existing_output_needs_force_and_survives_failures(tiny_ckpt, tmp_path):
    out = tmp_path / "heartmula.bpk"
    out.write_bytes(b"precious")
    proc = run_cli("pack", tiny_ckpt, "-o", out, "-q")
    assert_clean_failure(proc, str(out), "--force")
    assert out.read_bytes() == b"precious"
    run_cli("pack", tiny_ckpt, "-o", out, "-q", "--force", check_rc=0)
    assert out.read_bytes()[:4] == b"NRUB"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gen_config.json", "heartmula.bpk", "tokenizer.json"]


def make_broken_copy(ckpt: Path, tmp_path: Path) -> Path:
    broken = tmp_path / "broken"
    shutil.copytree(ckpt, broken)
    return broken


def test_preset_lists_missing_unexpected_and_misshaped(tiny_ckpt, tmp_path):
    broken = make_broken_copy(tiny_ckpt, tmp_path)
    model = broken / "HeartMuLa-oss-3B"
    index = load_json(model / "model.safetensors.index.json")
    shard = index["weight_map"]["muq_linear.bias"]
    tensors = load_file(model / shard)
    tensors.pop("muq_linear.bias")
    tensors["extra.weight"] = np.zeros(3, np.float32)
    moved = next(n for n in tensors if n.endswith("q_proj.weight"))
    tensors[moved] = np.ascontiguousarray(tensors[moved][:, :5])
    save_file(tensors, model / shard)
    del index["weight_map"]["muq_linear.bias"]
    index["weight_map"]["extra.weight"] = shard
    (model / "model.safetensors.index.json").write_text(json.dumps(index))
    out = tmp_path / "x.bpk"
    proc = run_cli("pack", broken, "-o", out)
    assert_clean_failure(proc, "1 missing: muq_linear.bias", "1 unexpected: extra.weight", f"1 mis-shaped: {moved}")
    assert not out.exists()
    # --any-model packs it as it is.
    run_cli("pack", broken, "-o", out, "--any-model", "-q", check_rc=0)
    with open_pack(out) as pack:
        assert "extra.weight" in pack and "muq_linear.bias" not in pack and "model" not in pack.metadata


def test_index_is_the_truth(tiny_ckpt, tmp_path):
    broken = make_broken_copy(tiny_ckpt, tmp_path)
    model = broken / "HeartMuLa-oss-3B"
    index_path = model / "model.safetensors.index.json"
    index = load_json(index_path)
    # The index places a tensor in the wrong shard: refused, naming both.
    name = "audio_head"
    right = index["weight_map"][name]
    wrong = next(s for s in set(index["weight_map"].values()) if s != right)
    index["weight_map"][name] = wrong
    index_path.write_text(json.dumps(index))
    proc = run_cli("pack", broken, "-o", tmp_path / "x.bpk")
    assert_clean_failure(proc, right, f"'{name}'")
    # The index names a shard that does not exist.
    index["weight_map"][name] = "model-00009-of-00004.safetensors"
    index_path.write_text(json.dumps(index))
    proc = run_cli("pack", broken, "-o", tmp_path / "x.bpk")
    assert_clean_failure(proc, "model-00009-of-00004.safetensors", "does not exist")
    assert not (tmp_path / "x.bpk").exists()


def test_single_file_and_unindexed_shards(tiny_ckpt, tmp_path):
    source = source_tensors(tiny_ckpt)
    single = tmp_path / "single"
    single.mkdir()
    shutil.copy(tiny_ckpt / "HeartMuLa-oss-3B" / "config.json", single)
    save_file(source, single / "model.safetensors")
    run_cli("pack", single, "-o", tmp_path / "single.bpk", "-q", check_rc=0)
    unindexed = make_broken_copy(tiny_ckpt, tmp_path)
    (unindexed / "HeartMuLa-oss-3B" / "model.safetensors.index.json").unlink()
    run_cli("pack", unindexed, "-o", tmp_path / "unindexed.bpk", "-q", check_rc=0)
    with open_pack(tmp_path / "single.bpk") as a, open_pack(tmp_path / "unindexed.bpk") as b:
        assert len(a) == len(b) == 289
        for name, array in source.items():
            assert bytes(a.raw_bytes(name)) == bytes(b.raw_bytes(name)) == array.tobytes()


def test_unindexed_duplicate_tensor_is_refused(tiny_ckpt, tmp_path):
    broken = make_broken_copy(tiny_ckpt, tmp_path)
    model = broken / "HeartMuLa-oss-3B"
    (model / "model.safetensors.index.json").unlink()
    save_file({"audio_head": np.zeros(1, np.float32)}, model / "model-00005-of-00005.safetensors")
    proc = run_cli("pack", broken, "-o", tmp_path / "x.bpk")
    assert_clean_failure(proc, "'audio_head'", "also in")


def test_bad_input_errors_are_one_line(tiny_ckpt, tmp_path):
    assert_clean_failure(run_cli("pack", tmp_path / "nope", "-o", tmp_path / "x.bpk"), "nope", "does not exist")
    broken = make_broken_copy(tiny_ckpt, tmp_path)
    (broken / "HeartMuLa-oss-3B" / "config.json").write_text("{not json")
    assert_clean_failure(run_cli("pack", broken, "-o", tmp_path / "x.bpk"), "config.json", "not valid JSON")
    shard = sorted((tiny_ckpt / "HeartMuLa-oss-3B").glob("*.safetensors"))[1]
    truncated = make_broken_copy(tiny_ckpt, tmp_path / "t")
    target = truncated / "HeartMuLa-oss-3B" / shard.name
    target.write_bytes(shard.read_bytes()[:-10])
    assert_clean_failure(run_cli("pack", truncated, "-o", tmp_path / "x.bpk"), shard.name, "truncated")
    assert_clean_failure(
        run_cli("pack", tiny_ckpt, "-o", tmp_path / "missing-dir" / "x.bpk", "--no-extras"),
        "missing-dir",
        "does not exist",
    )
    assert not (tmp_path / "x.bpk").exists()


def test_usage_errors_exit_2_and_help_explains():
    assert run_cli("pack", "--dtype", "f8").returncode == 2
    assert run_cli().returncode == 2
    for command, needles in {
        "pack": ["--dtype", "--force", "--manifest", "--any-model", "--burn-version", "--json"],
        "manifest": ["--output"],
        "inspect": ["--json"],
        "synthetic": ["--full"],
    }.items():
        proc = run_cli(command, "--help", check_rc=0)
        for needle in needles:
            assert needle in proc.stdout, (command, needle)


def test_inspect_shows_layout_and_tensors(tiny_ckpt, tmp_path):
    out = tmp_path / "p.bpk"
    run_cli("pack", tiny_ckpt, "-o", out, "-q", check_rc=0)
    doc = json.loads(run_cli("inspect", out, "--json", check_rc=0).stdout)
    assert doc["layout"] == "0.20+" and len(doc["tensors"]) == 289 and doc["file_size"] == out.stat().st_size
    text = run_cli("inspect", out, check_rc=0).stdout
    assert "289 tensors" in text and "backbone.layers.27.mlp.w3.weight" in text
    out.write_bytes(b"XXXX" + out.read_bytes()[4:])
    assert_clean_failure(run_cli("inspect", out), str(out), "bad magic")


def test_convert_sh_one_step(tiny_ckpt, tmp_path):
    env = dict(os.environ, HEARTMULA_OUT_DIR=str(tmp_path), PYTHON=sys.executable)
    proc = subprocess.run(
        ["bash", REPO / "convert.sh", tiny_ckpt], env=env, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gen_config.json", "heartmula.bpk", "tokenizer.json"]
    with open_pack(tmp_path / "heartmula.bpk") as pack:
        assert len(pack) == 289
    proc = subprocess.run(["bash", REPO / "convert.sh"], env=env, capture_output=True, text=True, check=False)
    assert proc.returncode == 2 and "usage" in proc.stderr.lower()


def test_an_output_without_slash_or_suffix_is_the_first_pack_and_a_note_says_so(tiny_root, tmp_path):
    proc = run_cli("pack", tiny_root, "-o", tmp_path / "runtime", check_rc=0)
    assert (tmp_path / "runtime").is_file() and (tmp_path / "heartcodec.bpk").is_file()
    assert f"for a runtime folder end the path with '/': -o {tmp_path / 'runtime'}/" in proc.stderr
    # Named as a pack, or a folder: no note.
    (tmp_path / "a").mkdir()
    named = run_cli("pack", tiny_root, "-o", tmp_path / "a" / "lm.bpk", check_rc=0)
    folder = run_cli("pack", tiny_root, "-o", f"{tmp_path / 'b'}/", check_rc=0)
    assert "end the path with '/'" not in named.stderr + folder.stderr
    assert (tmp_path / "b" / "heartmula.bpk").is_file()
