"""HeartCodec: the preset (against the figures derived from heartlib and against the real libraries
heartlib builds on), packing it F32-only into the runtime folder beside HeartMuLa, and every command
on a codec pack."""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from conftest import REPO, assert_clean_failure, linked, load_json, residual_vq, run_cli
from heartmula_burn import open_pack
from heartmula_burn._fields import Fields
from heartmula_burn._presets.heartcodec import HeartCodec, parse_config
from heartmula_burn._presets.heartcodec.synthetic import FULL_CONFIG as CODEC_FULL_CONFIG
from heartmula_burn._synthetic import value_scale, write_synthetic_checkpoint
from safetensors.numpy import load_file, save_file

CODEC = "HeartCodec-oss"
RUNTIME_FOLDER = ["gen_config.json", "heartcodec.bpk", "heartmula.bpk", "tokenizer.json"]


def codec_tensors(root: Path, folder: str = CODEC) -> dict[str, np.ndarray]:
    """Every tensor of a codec checkpoint, read by the safetensors library (not by us)."""
    tensors: dict[str, np.ndarray] = {}
    for shard in sorted((root / folder).glob("*.safetensors")):
        tensors.update(load_file(shard))
    return tensors


def copy_root(root: Path, dest: Path) -> Path:
    shutil.copytree(root, dest)
    return dest


def rewrite(root: Path, change, folder: str = CODEC) -> None:
    """Rewrites the codec checkpoint's tensors through `change(dict) -> dict` as one shard, no index."""
    tensors = change(codec_tensors(root, folder))
    for p in (root / folder).glob("model*"):
        p.unlink()
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(root / folder / "model.safetensors"))


# ---- the preset -----------------------------------------------------------------------------------


def test_the_released_config_implies_818_tensors_and_6_64_gb():
    # Figures derived by hand from heartlib's modules (the reference's count, independent of this code).
    shapes = HeartCodec().expected_tensors(Fields(CODEC_FULL_CONFIG, Path("config.json")))
    assert len(shapes) == 818
    assert sum(math.prod(s) for s in shapes.values()) == 1_659_568_725
    assert sum(1 for n in shapes if ".parametrizations.weight.original" in n) == 228
    assert not [n for n in shapes if n.endswith((".weight_g", ".weight_v", "num_batches_tracked"))]
    # heartlib's defaults are the released config: an empty config.json means the same model.
    assert HeartCodec().expected_tensors(Fields({"model_type": "heartcodec"}, Path("c.json"))) == shapes
    assert shapes["flow_matching.estimator.transformer_blocks.0.mlp.gate.weight"] == (4096, 1536)
    assert shapes["flow_matching.estimator.transformer_blocks_2.5.mlp.down.weight"] == (3072, 8192)
    assert shapes["flow_matching.estimator.connection_proj.ffn_1.weight"] == (3072, 2560, 3)
    assert shapes["flow_matching.estimator.adaln_single_2.linear.weight"] == (18432, 3072)
    assert shapes["scalar_model.decoder.0.parametrizations.weight.original1"] == (2048, 128, 5)
    assert shapes["scalar_model.decoder.1.up_conv.layer.parametrizations.weight.original0"] == (2048, 1, 1)
    assert shapes["scalar_model.decoder.1.up_conv.layer.parametrizations.weight.original1"] == (2048, 1024, 10)
    assert shapes["scalar_model.decoder.6.conv.weight"] == (64, 64, 7)
    assert shapes["scalar_model.decoder.7.parametrizations.weight.original1"] == (1, 64, 7)
    assert shapes["flow_matching.vq_embed.layers.7._codebook.initted"] == (1,)


def test_vq_names_and_shapes_are_vector_quantize_pytorchs():
    c = CODEC_FULL_CONFIG
    rvq = residual_vq(c)
    theirs = {f"flow_matching.vq_embed.{k}": tuple(v.shape) for k, v in rvq.state_dict().items()}
    ours = {n: s for n, s in HeartCodec().expected_tensors(Fields(c, Path("c.json"))).items() if ".vq_embed." in n}
    assert set(ours) == set(theirs)
    # `initted` is [1] in the released files; current vector-quantize-pytorch registers it 0-d.
    assert {n: s for n, s in theirs.items() if not n.endswith("initted")} == {
        n: s for n, s in ours.items() if not n.endswith("initted")
    }


@pytest.mark.parametrize(
    "config, key, message",
    [
        ({"upsample_kernel_sizes": [10, 8]}, "upsample_kernel_sizes", "one entry per upsample_factors"),
        ({"upsample_kernel_sizes": [9, 8, 8, 8, 6]}, "upsample_kernel_sizes", "twice upsample_factors"),
        ({"num_layers": -1}, "num_layers", "an integer >= 0"),
        ({"dim": "512"}, "dim", "an integer >= 1"),
        ({"use_cosine_sim": True}, "use_cosine_sim", "not supported"),
        ({"downsample_factors": [3, 0]}, "downsample_factors", "a list of integers >= 1"),
    ],
)
def test_a_config_that_makes_no_sense_is_named_key_by_key(config, key, message):
    with pytest.raises(Exception) as err:
        parse_config(Fields({**CODEC_FULL_CONFIG, **config}, Path("/ckpt/config.json")))
    assert f"/ckpt/config.json: '{key}'" in str(err.value) and message in str(err.value)


def test_synthetic_values_are_at_realistic_scales(tiny_root):
    tensors = codec_tensors(tiny_root)
    codec = HeartCodec().synthetic_value_scale
    for name, array in tensors.items():
        mean, std = value_scale(name, array.shape, codec)
        if array.size >= 1000 and std > 0:  # enough values for the sample std to be within 20%
            assert abs(float(array.mean()) - mean) < 4 * std / math.sqrt(array.size) + 1e-6, name
            assert 0.8 * std < float(array.std()) < 1.2 * std, name
    assert value_scale("flow_matching.estimator.proj_in.ffn_2.weight", (16, 16)) == (0.0, 0.25)
    assert value_scale("scalar_model.decoder.0.parametrizations.weight.original0", (64, 1, 1)) == (1.0, 0.1)
    assert value_scale("flow_matching.estimator.transformer_blocks.0.attn_norm.weight", (16,)) == (1.0, 0.1)
    # The codec's own names (PReLU slopes, VQ codebooks) by its rules; without them, by the layer kind.
    prelu = "scalar_model.decoder.1.activation.weight"
    assert (value_scale(prelu, (64,), codec), value_scale(prelu, (64,))) == ((0.25, 0.05), (0.0, 0.02))
    codebook = "vq_embed.layers.0._codebook.embed"
    assert (value_scale(codebook, (8, 4), codec), value_scale(codebook, (8, 4))) == ((0.0, 1.0), (0.0, 0.5))


# ---- packing ------------------------------------------------------------------------------------


def test_pack_root_writes_the_four_file_runtime_folder(tiny_root, tmp_path):
    out = tmp_path / "runtime"
    out.mkdir()
    proc = run_cli("pack", tiny_root, "-o", out, "--json", check_rc=0)
    summary = json.loads(proc.stdout)
    assert sorted(p.name for p in out.iterdir()) == RUNTIME_FOLDER
    assert [(r["model"], r["tensors"]) for r in summary["packs"]] == [("heartmula", 289), ("heartcodec", 818)]
    source = codec_tensors(tiny_root)
    with open_pack(out / "heartcodec.bpk") as pack:
        assert {t.name for t in pack.tensors} == set(source)
        for t in pack.tensors:
            assert t.dtype == "F32" and t.shape == source[t.name].shape, t.name
            assert bytes(pack.raw_bytes(t.name)) == source[t.name].tobytes(), t.name
        assert pack.metadata["model"] == "heartcodec" and pack.metadata["source_model"] == CODEC
        assert json.loads(pack.metadata["config"]) == load_json(tiny_root / CODEC / "config.json")
    for extra in ("tokenizer.json", "gen_config.json"):
        assert (out / extra).read_bytes() == (tiny_root / extra).read_bytes()


def test_convert_sh_writes_the_runtime_folder(tiny_root, tmp_path):
    env = dict(os.environ, HEARTMULA_OUT_DIR=str(tmp_path), PYTHON=sys.executable)
    proc = subprocess.run(
        ["bash", REPO / "convert.sh", tiny_root], env=env, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == RUNTIME_FOLDER


def test_a_failure_in_the_second_pack_leaves_no_half_folder(tiny_root, tmp_path):
    root = copy_root(tiny_root, tmp_path / "root")
    shard = max((root / CODEC).glob("*.safetensors"))
    shard.write_bytes(shard.read_bytes()[:-100])  # the codec's last shard is truncated
    out = tmp_path / "out"
    out.mkdir()
    assert_clean_failure(run_cli("pack", root, "-o", out), shard.name, "truncated")
    assert list(out.iterdir()) == []
    # And over an existing folder with --force: the old files stay as they were.
    (out / "heartmula.bpk").write_bytes(b"old pack")
    assert_clean_failure(run_cli("pack", root, "-o", out, "--force"), shard.name)
    assert (
        sorted(p.name for p in out.iterdir()) == ["heartmula.bpk"]
        and (out / "heartmula.bpk").read_bytes() == b"old pack"
    )


def test_the_codec_is_f32_only(tiny_root, tmp_path):
    codec = tiny_root / CODEC
    for dtype in ("bf16", "f16", "source"):
        proc = run_cli("pack", codec, "-o", tmp_path / "c.bpk", "--dtype", dtype)
        line = assert_clean_failure(proc, f"--dtype {dtype} refused", "F32 only", "silently replaced", "bf16 degrades")
        assert str(codec) in line
    assert not (tmp_path / "c.bpk").exists()
    # Beside the LM, --dtype applies to the LM; the codec stays F32, and the run says so.
    out = tmp_path / "out"
    out.mkdir()
    proc = run_cli("pack", tiny_root, "-o", out, "--dtype", "bf16", check_rc=0)
    assert f"note: {out / 'heartcodec.bpk'}: packed in F32, not BF16" in proc.stderr
    assert f"note: {out / 'heartmula.bpk'}: holds BF16 tensors. Burn 0.22 loads them" in proc.stderr
    with open_pack(out / "heartmula.bpk") as lm, open_pack(out / "heartcodec.bpk") as codec_pack:
        assert {t.dtype for t in lm.tensors} == {"BF16"} and {t.dtype for t in codec_pack.tensors} == {"F32"}
    help_text = run_cli("pack", "--help", check_rc=0).stdout
    flowing = " ".join(help_text.split())  # argparse wraps lines
    assert "cast on load" in flowing and "HeartCodec packs are F32 only" in flowing
    assert "packed beside another model's pack, it stays F32, with a note" in flowing


def test_a_bf16_codec_checkpoint_is_widened_to_f32_exactly(tmp_path):
    root = write_synthetic_checkpoint(tmp_path / "bf16", dtype="BF16", models=("heartcodec",))
    source = codec_tensors(root)
    run_cli("pack", root, "-o", tmp_path / "c.bpk", check_rc=0)
    with open_pack(tmp_path / "c.bpk") as pack:
        assert pack.metadata["source_dtype"] == "BF16" and pack.metadata["dtype"] == "F32"
        for name, array in source.items():
            assert array.dtype == ml_dtypes.bfloat16
            assert bytes(pack.raw_bytes(name)) == array.astype(np.float32).tobytes(), name


def test_the_preset_lists_every_missing_unexpected_misshaped_and_folded_tensor(tiny_root, tmp_path):
    root = copy_root(tiny_root, tmp_path / "root")
    folded = "scalar_model.decoder.3.convs.2.conv1"

    def damage(t):
        del t["flow_matching.zero_cond_embedding1"]
        t["flow_matching.estimator.proj_in.ffn_2.weight"] = t["flow_matching.estimator.proj_in.ffn_2.weight"][:, :3]
        g = t.pop(f"{folded}.parametrizations.weight.original0")
        v = t.pop(f"{folded}.parametrizations.weight.original1")
        t[f"{folded}.weight"] = g * v / np.linalg.norm(v.reshape(len(v), -1), axis=1)[:, None, None]
        return t

    rewrite(root, damage)
    line = assert_clean_failure(run_cli("pack", root / CODEC, "-o", tmp_path / "c.bpk"), "HeartCodec")
    assert "3 missing: flow_matching.zero_cond_embedding1" in line
    assert f"{folded}.parametrizations.weight.original0, {folded}.parametrizations.weight.original1" in line
    assert f"1 unexpected: {folded}.weight" in line
    assert "1 mis-shaped: flow_matching.estimator.proj_in.ffn_2.weight [16, 3] (expected [16, 16])" in line
    assert not (tmp_path / "c.bpk").exists()


def test_a_codec_tensor_that_cannot_be_f32_exactly_is_refused(tiny_root, tmp_path):
    root = copy_root(tiny_root, tmp_path / "root")

    def integers(t):
        t["flow_matching.vq_embed.layers.0._codebook.initted"] = np.ones(1, np.int64)
        return t

    rewrite(root, integers)
    assert_clean_failure(run_cli("pack", root / CODEC, "-o", tmp_path / "c.bpk"), "initted", "dtype I64", "F32")


def test_the_preset_is_chosen_from_config_json(tiny_root, tmp_path):
    root = copy_root(tiny_root, tmp_path / "root")
    config_path = root / CODEC / "config.json"
    config = load_json(config_path)
    del config["model_type"]  # still recognised by its keys
    config_path.write_text(json.dumps(config))
    run_cli("pack", root / CODEC, "-o", tmp_path / "a.bpk", check_rc=0)
    config["model_type"] = "something-else"
    config_path.write_text(json.dumps(config))
    assert_clean_failure(run_cli("pack", root / CODEC, "-o", tmp_path / "b.bpk"), "config.json", "does not describe")


def test_the_other_folder_name_and_a_single_file_work(tiny_root, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(tiny_root / CODEC, root / "HeartCodec-oss-20260123")
    rewrite(root, lambda t: t, folder="HeartCodec-oss-20260123")  # one model.safetensors, no index
    assert [p.name for p in (root / "HeartCodec-oss-20260123").glob("*.safetensors")] == ["model.safetensors"]
    run_cli("pack", root, "-o", tmp_path / "c.bpk", check_rc=0)
    with open_pack(tmp_path / "c.bpk") as pack:
        assert len(pack) == 818 and pack.metadata["source_model"] == "HeartCodec-oss-20260123"


# ---- inspect, verify, unpack, export-raw, publish-layout on a codec pack --------------------------


@pytest.fixture(scope="module")
def runtime(tiny_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("runtime")
    run_cli("pack", tiny_root, "-o", out, "-q", check_rc=0)
    return out


def test_inspect_and_verify_a_codec_pack(runtime, tiny_root, tmp_path):
    doc = json.loads(run_cli("inspect", runtime / "heartcodec.bpk", "--json", check_rc=0).stdout)
    assert len(doc["tensors"]) == 818 and doc["metadata"]["model"] == "heartcodec"
    # Against the CKPT_ROOT holding both models, the codec's folder is the one compared.
    run_cli("verify", runtime / "heartcodec.bpk", "--against", tiny_root, check_rc=0)
    run_cli("verify", runtime / "heartmula.bpk", "--against", tiny_root, check_rc=0)
    bad = tmp_path / "bad.bpk"
    raw = bytearray((runtime / "heartcodec.bpk").read_bytes())
    with open_pack(runtime / "heartcodec.bpk") as pack:
        target = pack.info("scalar_model.decoder.7.bias")
    raw[target.file_offset] ^= 0x40
    bad.write_bytes(raw)
    proc = run_cli("verify", bad, "--against", tiny_root, "-q")
    assert proc.returncode == 1 and "tensor 'scalar_model.decoder.7.bias': element 0 differs" in proc.stderr


def test_unpack_then_pack_gives_back_the_codec_pack(runtime, tmp_path):
    run_cli("unpack", runtime / "heartcodec.bpk", "-o", tmp_path / "u", "-q", check_rc=0)
    run_cli("pack", tmp_path / "u", "--any-model", "--dtype", "source", "-o", tmp_path / "again.bpk", "-q", check_rc=0)
    assert (tmp_path / "again.bpk").read_bytes() == (runtime / "heartcodec.bpk").read_bytes()


def test_export_raw_exports_both_models_and_packs_back_identically(runtime, tiny_root, tmp_path):
    out = tmp_path / "artifacts"
    run_cli("export-raw", "--checkpoint-root", tiny_root, "--output-root", out, "-q", check_rc=0)
    assert sorted(p.name for p in out.iterdir()) == [
        "gen_config.json",
        "heartcodec_raw_f32",
        "heartmula_raw_f32",
        "tokenizer.json",
    ]
    assert len(list((out / "heartcodec_raw_f32").glob("*.npy"))) == 818
    for model in ("heartmula", "heartcodec"):
        folder = tmp_path / model
        folder.mkdir()
        run_cli("pack", "--manifest", out / f"{model}_raw_f32" / "manifest.json", "-o", folder, "-q", check_rc=0)
        assert (folder / f"{model}.bpk").read_bytes() == (runtime / f"{model}.bpk").read_bytes()


def test_publish_layout_assembles_the_four_files_and_describes_the_codec(runtime, tmp_path):
    repo = tmp_path / "repo"
    proc = run_cli("publish-layout", repo, "--pack", runtime / "heartmula.bpk", check_rc=0)
    assert f"including {runtime / 'heartcodec.bpk'}" in proc.stderr
    assert sorted(p.name for p in repo.iterdir()) == [".gitattributes", "README.md", *RUNTIME_FOLDER]
    card = (repo / "README.md").read_text()
    codec = (repo / "heartcodec.bpk").read_bytes()
    assert f"| `heartcodec.bpk` | {len(codec):,} | `{hashlib.sha256(codec).hexdigest()}` |" in card
    assert "`heartmula.bpk`, `heartcodec.bpk`: random weights" in card and "## `heartcodec.bpk` (HeartCodec)" in card
    # The architecture, from the tiny codec's config and shapes.
    assert "| residual VQ | 8 codebooks of 32 codes, dim 4 -> 16 |" in card
    assert "| flow-matching estimator | 24 + 6 LLaMA-style blocks, width 16 / 32, MLP 256 / 256" in card
    assert "upsampling 5 x 4 x 4 x 4 x 3 x 2 = 1920" in card and "| sample rate | 48000 Hz |" in card
    assert "g * v / ||v||" in card and "get_all_snapshots" in card
    # A codec pack alone needs no runtime files.
    run_cli("publish-layout", tmp_path / "codec-only", "--pack", runtime / "heartcodec.bpk", "-q", check_rc=0)
    assert sorted(p.name for p in (tmp_path / "codec-only").iterdir()) == [
        ".gitattributes",
        "README.md",
        "heartcodec.bpk",
    ]


def test_a_manifest_of_the_codec_keeps_its_checks(tiny_root, tmp_path):
    ckpt = linked(tiny_root, tmp_path)
    run_cli("manifest", ckpt, "--subdir", CODEC, "-o", tmp_path / "m.json", check_rc=0)
    doc = load_json(tmp_path / "m.json")
    assert len(doc["tensors"]) == 818 and {t["dtype"] for t in doc["tensors"]} == {"F32"}
    assert doc["metadata"]["model"] == "heartcodec"
    assert_clean_failure(run_cli("manifest", ckpt, "-o", tmp_path / "both.json"), "several models", "as subdir")


def test_any_model_packs_of_a_root_are_named_by_their_folders(tiny_root, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    run_cli("pack", tiny_root, "--any-model", "-o", out, "-q", check_rc=0)
    assert sorted(p.name for p in out.iterdir()) == RUNTIME_FOLDER
    with open_pack(out / "heartcodec.bpk") as pack:
        assert len(pack) == 818 and "model" not in pack.metadata
