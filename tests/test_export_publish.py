"""The two-step raw export (one .npy per tensor + manifest) and the publishable folder."""

import hashlib
import json
import shutil

import ml_dtypes
import numpy as np
import pytest
from conftest import assert_clean_failure, run_cli
from heartmula_burn import open_pack
from safetensors.numpy import load_file


@pytest.mark.parametrize("dtype", ["f32", "bf16"])
def test_export_raw_then_pack_equals_the_direct_pack(tiny_ckpt, tmp_path, dtype):
    root = tmp_path / "artifacts" / "heartmula-oss-3b"
    run_cli("export-raw", "--checkpoint-root", tiny_ckpt, "--output-root", root, "--dtype", dtype, "-q", check_rc=0)
    raw = root / f"heartmula_raw_{dtype}"
    assert len(list(raw.glob("*.npy"))) == 289
    assert sorted(p.name for p in root.iterdir()) == ["gen_config.json", f"heartmula_raw_{dtype}", "tokenizer.json"]
    # numpy reads the files; bf16 is stored as <u2 holding the bfloat16 bits.
    source = {}
    for shard in sorted((tiny_ckpt / "HeartMuLa-oss-3B").glob("*.safetensors")):
        source.update(load_file(shard))
    head = np.load(raw / "audio_head.npy")
    if dtype == "bf16":
        assert head.dtype == np.dtype("<u2")
        np.testing.assert_array_equal(head.view(ml_dtypes.bfloat16), source["audio_head"].astype(ml_dtypes.bfloat16))
    else:
        np.testing.assert_array_equal(head, source["audio_head"])
    direct = tmp_path / "direct" / "heartmula.bpk"
    direct.parent.mkdir()
    run_cli("pack", tiny_ckpt, "-o", direct, "--dtype", dtype, "-q", check_rc=0)
    two_step = tmp_path / "two-step" / "heartmula.bpk"
    two_step.parent.mkdir()
    run_cli("pack", "--manifest", raw / "manifest.json", "-o", two_step, "-q", check_rc=0)
    assert two_step.read_bytes() == direct.read_bytes()
    for extra in ("tokenizer.json", "gen_config.json"):
        assert (two_step.parent / extra).read_bytes() == (tiny_ckpt / extra).read_bytes()


def test_export_raw_keeps_an_existing_export_unless_forced(tiny_ckpt, tmp_path):
    root = tmp_path / "out"
    run_cli("export-raw", "--checkpoint-root", tiny_ckpt, "--output-root", root, "-q", check_rc=0)
    marker = root / "heartmula_raw_f32" / "manifest.json"
    before = marker.read_bytes()
    proc = run_cli("export-raw", "--checkpoint-root", tiny_ckpt, "--output-root", root, "-q")
    assert_clean_failure(proc, "heartmula_raw_f32", "--force")
    assert marker.read_bytes() == before
    run_cli("export-raw", "--checkpoint-root", tiny_ckpt, "--output-root", root, "-q", "--force", check_rc=0)
    assert not [p for p in root.iterdir() if p.name.startswith(".")], "no temporary folder left"


def test_a_lying_npy_is_refused(tiny_ckpt, tmp_path):
    root = tmp_path / "out"
    run_cli("export-raw", "--checkpoint-root", tiny_ckpt, "--output-root", root, "-q", check_rc=0)
    victim = root / "heartmula_raw_f32" / "muq_linear.bias.npy"
    victim.write_bytes(victim.read_bytes()[:-4])
    proc = run_cli("pack", "--manifest", root / "heartmula_raw_f32" / "manifest.json", "-o", tmp_path / "x.bpk")
    assert_clean_failure(proc, "muq_linear.bias.npy", "truncated")
    assert not (tmp_path / "x.bpk").exists()


def card_facts(card: str) -> dict:
    facts = {}
    for line in card.splitlines():
        if line.startswith("- Tensors:"):
            facts["tensors"] = line
        if line.startswith("| `heartmula.bpk` |"):
            facts["pack_row"] = line
        if line.startswith("| backbone |"):
            facts["backbone"] = line
    return facts


def test_publish_layout_card_is_read_from_the_pack(tiny_ckpt, tmp_path):
    f32 = tmp_path / "f32" / "heartmula.bpk"
    f32.parent.mkdir()
    run_cli("pack", tiny_ckpt, "-o", f32, "-q", check_rc=0)
    out = tmp_path / "repo"
    run_cli("publish-layout", out, "--pack", f32, "-q", check_rc=0)
    assert sorted(p.name for p in out.iterdir()) == [
        ".gitattributes",
        "README.md",
        "gen_config.json",
        "heartmula.bpk",
        "tokenizer.json",
    ]
    assert "*.bpk filter=lfs diff=lfs merge=lfs -text" in (out / ".gitattributes").read_text()
    card = (out / "README.md").read_text()
    # Synthetic weights are never presented as the upstream model.
    assert "license: apache-2.0" in card and "base_model: []\n" in card
    assert "# Synthetic HeartMuLa-oss-3B-shaped weights for Burn" in card
    assert "**Not a trained model.** `heartmula.bpk`: random weights" in card
    with open_pack(f32) as pack:
        params = sum(int(np.prod(t.shape)) for t in pack.tensors)
        size = pack.file_size
    assert f"- Tensors: 289 ({params:,} parameters), dtype F32" in card
    digest = hashlib.sha256((out / "heartmula.bpk").read_bytes()).hexdigest()
    assert f"| `heartmula.bpk` | {size:,} | `{digest}` |" in card
    tok = (out / "tokenizer.json").read_bytes()
    assert f"| `tokenizer.json` | {len(tok):,} | `{hashlib.sha256(tok).hexdigest()}` |" in card
    # The architecture, read from the tiny checkpoint's shapes (28 x 32 x 64 backbone, 3 x 16 x 48 decoder).
    assert "| backbone | 28 layers, hidden size 32, intermediate size 64 |" in card
    assert "| decoder | 3 layers, hidden size 16, intermediate size 48 |" in card
    assert "| audio | 8 codebooks of 37 codes |" in card and "| text vocabulary | 300 |" in card
    assert "0.21.0 and 0.22.1" in card

    # Change the pack: the card follows.
    bf16 = tmp_path / "bf16" / "heartmula.bpk"
    bf16.parent.mkdir()
    run_cli("pack", tiny_ckpt, "-o", bf16, "--dtype", "bf16", "-q", check_rc=0)
    assert_clean_failure(run_cli("publish-layout", out, "--pack", bf16, "-q"), str(out), "--force")
    run_cli("publish-layout", out, "--pack", bf16, "-q", "--force", check_rc=0)
    new_card = (out / "README.md").read_text()
    assert "parameters), dtype BF16;" in new_card and "parameters), dtype F32" not in new_card
    assert card_facts(new_card)["pack_row"] != card_facts(card)["pack_row"]
    assert card_facts(new_card)["backbone"] == card_facts(card)["backbone"]
    assert (out / "heartmula.bpk").read_bytes() == bf16.read_bytes()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_publish_layout_needs_the_runtime_files(tiny_ckpt, tmp_path):
    pack = tmp_path / "heartmula.bpk"
    run_cli("pack", tiny_ckpt, "-o", pack, "-q", "--no-extras", check_rc=0)
    proc = run_cli("publish-layout", tmp_path / "repo", "--pack", pack)
    assert_clean_failure(proc, "tokenizer.json", "not found")
    assert not (tmp_path / "repo").exists()


def test_a_runtime_file_no_pack_reads_is_refused_by_name(tiny_root, tmp_path):
    """--tokenizer with only a codec pack: no pack given has a model that reads it, so the run stops
    naming the file (it used to be dropped silently), and nothing is written."""
    codec = tmp_path / "heartcodec.bpk"
    run_cli("pack", tiny_root, "--subdir", "HeartCodec-oss", "-o", codec, "-q", check_rc=0)
    tokenizer = tmp_path / "my-tokenizer.json"
    tokenizer.write_bytes((tiny_root / "tokenizer.json").read_bytes())
    proc = run_cli("publish-layout", tmp_path / "repo", "--pack", codec, "--tokenizer", tokenizer)
    assert_clean_failure(proc, str(tokenizer), "no pack given has a model that reads it")
    assert not (tmp_path / "repo").exists()


def test_runtime_files_are_found_for_the_model_that_reads_them(tiny_root):
    """Beside both models' folders, the runtime files are the LM's: the codec's checkpoint has none."""
    from heartmula_burn import load_checkpoints

    by_folder = {c.model_dir.name: sorted(c.extras) for c in load_checkpoints(tiny_root)}
    assert by_folder == {"HeartMuLa-oss-3B": ["gen_config.json", "tokenizer.json"], "HeartCodec-oss": []}


def test_publish_layout_card_of_a_real_checkpoint_names_its_base_model(tiny_ckpt, tmp_path):
    real = tmp_path / "ckpt"
    shutil.copytree(tiny_ckpt, real, symlinks=True)
    config_path = real / "HeartMuLa-oss-3B" / "config.json"
    config = json.loads(config_path.read_text())
    del config["heartmula_burn_synthetic"]  # what a real checkpoint's config.json lacks
    config_path.write_text(json.dumps(config))
    run_cli("pack", real, "-o", tmp_path / "heartmula.bpk", "-q", check_rc=0)
    run_cli("publish-layout", tmp_path / "repo", "--pack", tmp_path / "heartmula.bpk", "-q", check_rc=0)
    card = (tmp_path / "repo" / "README.md").read_text()
    assert "base_model:\n- HeartMuLa/HeartMuLa-oss-3B\n" in card and "# HeartMuLa-oss-3B for Burn" in card
    assert "Not a trained model" not in card and "Synthetic" not in card
