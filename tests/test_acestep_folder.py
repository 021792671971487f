"""`pack --model acestep-turbo|acestep-sft`: the runtime's ACE-Step 1.5 folder from a synthetic
upstream checkpoint with upstream's names (heartmula_burn._presets.acestep.upstream, checked
against the real files' sizes in test_acestep_upstream.py).

Expected values come from outside the code under test: the runtime's file lists are copied from
maolan-generate 0.0.19's src/acestep/pipeline.rs (`required_relative_files`), the renames from
the runtime's module paths (../shared reference table, written out again below), the values read
from the upstream files by a safetensors parser of this file's own and widened with ml_dtypes."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import struct
import zipfile
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import pytest
from conftest import assert_clean_failure, run_cli
from heartmula_burn._packfile import open_pack
from heartmula_burn._presets.acestep.synthetic import write_checkpoint

# maolan-generate 0.0.19 src/acestep/pipeline.rs, `required_relative_files` (turbo, SFT) and
# `required_relative_files_for_lm` (the turbo planners' names).
TURBO_FILES = {
    "qwen3-encoder.bpk", "qwen3_config.json", "tokenizer.json", "acestep-vae.bpk", "vae_config.json",
    "silence_latent.bpk", "acestep-lm.bpk", "lm_config.json", "lm_tokenizer.json", "acestep-dit.bpk",
    "dit_config.json", "acestep-condition.bpk",
}  # fmt: skip
SFT_FILES = {
    "qwen3-encoder.bpk", "qwen3_config.json", "tokenizer.json", "acestep-vae.bpk", "vae_config.json",
    "silence_latent.bpk", "sft-acestep-lm.bpk", "sft-lm_config.json", "sft-lm_tokenizer.json",
    "sft-acestep-dit.bpk", "sft-dit_config.json", "sft-acestep-condition.bpk",
}  # fmt: skip
PLANNER_FILES = {
    "1.7B": {"acestep-lm-1.7b.bpk", "lm_config-1.7b.json", "lm_tokenizer-1.7b.json"},
    "4B": {"acestep-lm-4b.bpk", "lm_config-4b.json", "lm_tokenizer-4b.json"},
}

# pack -> (upstream file relative to CKPT_ROOT, [(upstream prefix, pack prefix)], upstream names left out)
DIT = "Ace-Step1.5/acestep-v15-turbo/model.safetensors"
SOURCES: dict[str, tuple[str, list[tuple[str, str]], set[str]]] = {
    "qwen3-encoder.bpk": ("Ace-Step1.5/Qwen3-Embedding-0.6B/model.safetensors", [("model.", ""), ("", "")], set()),
    "acestep-lm.bpk": ("acestep-5Hz-lm-0.6B/model.safetensors", [("model.", ""), ("", "")], set()),
    "acestep-lm-1.7b.bpk": ("Ace-Step1.5/acestep-5Hz-lm-1.7B/model.safetensors", [("model.", ""), ("", "")], set()),
    "acestep-dit.bpk": (
        DIT,
        [("decoder.proj_in.1.", "proj_in.conv."), ("decoder.proj_out.1.", "proj_out.conv."), ("decoder.", "")],
        set(),
    ),
    "acestep-condition.bpk": (
        DIT,
        [
            ("encoder.text_projector.", "text_projector."),
            ("encoder.lyric_encoder.", "lyric_encoder."),
            ("encoder.timbre_encoder.", "timbre_encoder."),
            ("detokenizer.", "detokenizer."),
            ("tokenizer.quantizer.project_in.", "quantizer.project_in."),
            ("tokenizer.quantizer.project_out.", "quantizer.project_out."),
        ],
        {"encoder.timbre_encoder.special_token"},
    ),
    "acestep-vae.bpk": ("Ace-Step1.5/vae/diffusion_pytorch_model.safetensors", [("decoder.", "")], set()),
}


def read_upstream(path: Path) -> dict[str, np.ndarray[Any, Any]]:
    """Every tensor of a safetensors file, widened to float32 (a parser of its own: 8-byte length,
    JSON header, little-endian data)."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    kinds = {"BF16": np.dtype(ml_dtypes.bfloat16), "F32": np.dtype("<f4"), "F16": np.dtype("<f2")}
    out = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        start, end = entry["data_offsets"]
        values = np.frombuffer(raw[8 + n + start : 8 + n + end], kinds[entry["dtype"]])
        out[name] = values.astype(np.float32).reshape(entry["shape"])
    return out


def expected_pack(root: Path, pack: str, source: str | None = None) -> dict[str, np.ndarray[Any, Any]]:
    """The tensors a pack must hold, read from `source` (default the pack's upstream file)."""
    default, renames, dropped = SOURCES[pack]
    source = source or default
    files = [root / source] if (root / source).exists() else sorted((root / source).parent.glob("model-*.safetensors"))
    out = {}
    for f in files:
        for name, values in read_upstream(f).items():
            if name in dropped or name.startswith("lm_head."):
                continue
            new = next((new + name[len(old) :] for old, new in renames if name.startswith(old)), None)
            if new is not None:
                out[new] = values
    return out


@pytest.fixture(scope="module")
def ace_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("acestep"))


@pytest.fixture(scope="module")
def turbo(ace_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("turbo") / "runtime"
    run_cli("pack", ace_root, "--model", "acestep-turbo", "-o", f"{out}/", "-q", check_rc=0)
    return out


def test_turbo_folder_holds_exactly_the_runtime_files(turbo: Path) -> None:
    assert {p.name for p in turbo.iterdir()} == TURBO_FILES


def test_every_tensor_is_f32_and_upstream_widened(ace_root: Path, turbo: Path) -> None:
    for pack_name in (
        "qwen3-encoder.bpk",
        "acestep-lm.bpk",
        "acestep-dit.bpk",
        "acestep-condition.bpk",
        "acestep-vae.bpk",
    ):
        expected = expected_pack(ace_root, pack_name)
        with open_pack(turbo / pack_name) as pack:
            assert set(pack) == set(expected), pack_name
            for name, values in expected.items():
                assert pack.info(name).dtype == "F32", (pack_name, name)
                found = pack.numpy(name)
                assert found.shape == values.shape and found.tobytes() == values.tobytes(), (pack_name, name)


def test_silence_latent_is_transposed_to_frames_by_channels(ace_root: Path, turbo: Path) -> None:
    torch = pytest.importorskip("torch")
    source = torch.load(ace_root / "Ace-Step1.5/acestep-v15-turbo/silence_latent.pt", weights_only=True)
    with open_pack(turbo / "silence_latent.bpk") as pack:
        assert list(pack) == ["silence_latent"]
        assert pack.info("silence_latent").dtype == "F32"
        assert np.array_equal(pack.numpy("silence_latent"), source.transpose(1, 2).numpy())


def test_json_files_are_copied_unchanged(ace_root: Path, turbo: Path) -> None:
    pairs = {
        "qwen3_config.json": "Ace-Step1.5/Qwen3-Embedding-0.6B/config.json",
        "tokenizer.json": "Ace-Step1.5/Qwen3-Embedding-0.6B/tokenizer.json",
        "lm_config.json": "acestep-5Hz-lm-0.6B/config.json",
        "lm_tokenizer.json": "acestep-5Hz-lm-0.6B/tokenizer.json",
        "dit_config.json": "Ace-Step1.5/acestep-v15-turbo/config.json",
        "vae_config.json": "Ace-Step1.5/vae/config.json",
    }
    for name, source in pairs.items():
        assert (turbo / name).read_bytes() == (ace_root / source).read_bytes(), name


def test_every_planner_under_the_runtime_names(ace_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "all"
    run_cli("pack", ace_root, "--model", "acestep-turbo", "--planner", "all", "-o", out, "-q", check_rc=0)
    assert {p.name for p in out.iterdir()} == TURBO_FILES | PLANNER_FILES["1.7B"] | PLANNER_FILES["4B"]
    expected = expected_pack(ace_root, "acestep-lm-1.7b.bpk")  # upstream's names carry no `model.` there
    with open_pack(out / "acestep-lm-1.7b.bpk") as pack:
        assert set(pack) == set(expected)
    # The 4B planner comes in two shards: its pack holds the tensors of both.
    sharded = {**read_upstream(ace_root / "acestep-5Hz-lm-4B/model-00001-of-00002.safetensors")}
    sharded |= read_upstream(ace_root / "acestep-5Hz-lm-4B/model-00002-of-00002.safetensors")
    with open_pack(out / "acestep-lm-4b.bpk") as pack:
        assert set(pack) == {n.removeprefix("model.") for n in sharded}
        name = "layers.1.mlp.down_proj.weight"
        assert pack.numpy(name).tobytes() == sharded["model." + name].tobytes()


def test_sft_folder_has_the_sft_names_and_the_4b_planner(ace_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "sft"
    run_cli("pack", ace_root, "--model", "acestep-sft", "-o", out, "-q", check_rc=0)
    assert {p.name for p in out.iterdir()} == SFT_FILES
    sft_dit = read_upstream(ace_root / "acestep-v15-sft/model.safetensors")
    with open_pack(out / "sft-acestep-dit.bpk") as pack:
        assert pack.numpy("norm_out.weight").tobytes() == sft_dit["decoder.norm_out.weight"].tobytes()
    with open_pack(out / "sft-acestep-lm.bpk") as pack:
        assert (
            json.loads(pack.metadata["config"])["hidden_size"]
            == json.loads((ace_root / "acestep-5Hz-lm-4B/config.json").read_text())["hidden_size"]
        )


def test_the_tensors_left_out_are_counted(ace_root: Path, tmp_path: Path) -> None:
    proc = run_cli("pack", ace_root, "--model", "acestep-turbo", "-o", tmp_path / "o", check_rc=0)
    dit = read_upstream(ace_root / DIT)
    used = set(expected_pack(ace_root, "acestep-dit.bpk")) | set(expected_pack(ace_root, "acestep-condition.bpk"))
    assert f"{len(dit) - len(used)} of {len(dit)} tensors left out" in proc.stderr


def test_verify_against_passes_and_fails_on_one_flipped_byte(ace_root: Path, turbo: Path, tmp_path: Path) -> None:
    for pack in sorted(turbo.glob("*.bpk")):
        run_cli("verify", pack, "--against", ace_root, "-q", check_rc=0)
    for name, tensor in (
        ("acestep-condition.bpk", "quantizer.project_in.weight"),
        ("silence_latent.bpk", "silence_latent"),
    ):
        copy = tmp_path / name
        shutil.copyfile(turbo / name, copy)
        with open_pack(copy) as pack:
            offset = pack.info(tensor).file_offset + 5
        with open(copy, "r+b") as f:
            f.seek(offset)
            byte = f.read(1)
            f.seek(offset)
            f.write(bytes([byte[0] ^ 0x01]))
        proc = run_cli("verify", copy, "--against", ace_root, "-q")
        assert proc.returncode == 1 and f"tensor '{tensor}'" in proc.stderr, proc.stderr


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


def _hostile_archive(marker: Path) -> bytes:
    """A torch.save-shaped archive whose pickle would run a shell command when loaded by pickle."""
    path = marker.parent / "evil.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps(_RunsCode(marker), protocol=2))
        archive.writestr("archive/byteorder", "little")
    return path.read_bytes()


def test_a_pickle_that_would_run_code_is_refused_with_nothing_written(ace_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "ckpt"
    shutil.copytree(ace_root, root, symlinks=True)
    marker = tmp_path / "ran"
    silence = root / "Ace-Step1.5/acestep-v15-turbo/silence_latent.pt"
    silence.write_bytes(_hostile_archive(marker))
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(_RunsCode(control), protocol=2))  # the control: plain pickle runs the payload
    assert control.exists()
    out = tmp_path / "out"
    proc = run_cli("pack", root, "--model", "acestep-turbo", "-o", f"{out}/")
    assert_clean_failure(proc, silence, "posix.system")
    assert not marker.exists()
    assert not out.exists()


def test_a_tensor_its_config_does_not_imply_stops_the_run_before_writing(ace_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "ckpt"
    shutil.copytree(ace_root, root, symlinks=True)
    config = root / "Ace-Step1.5/vae/config.json"
    doc = json.loads(config.read_text())
    config.write_text(json.dumps({**doc, "decoder_channels": doc["decoder_channels"] * 2}))
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    proc = run_cli("pack", root, "--model", "acestep-turbo", "-o", out)
    assert_clean_failure(proc, root / "Ace-Step1.5/vae", "mis-shaped", "decoder.conv1.weight_v")
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_a_missing_upstream_folder_is_named(ace_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "ckpt"
    shutil.copytree(ace_root, root, symlinks=True)
    shutil.rmtree(root / "acestep-5Hz-lm-4B")
    proc = run_cli("pack", root, "--model", "acestep-sft", "-o", tmp_path / "out")
    assert_clean_failure(proc, root / "acestep-5Hz-lm-4B", "does not exist")


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--model", "acestep-turbo", "--dtype", "bf16"], "F32"),
        (["--model", "acestep-sft", "--planner", "0.6B"], "4B planner"),
        (["--planner", "1.7B"], "--planner goes with --model"),
        (["--model", "acestep-turbo", "--any-model"], "--any-model"),
    ],
)
def test_options_that_do_not_fit_are_usage_errors(ace_root: Path, tmp_path: Path, args: list[str], needle: str) -> None:
    proc = run_cli("pack", ace_root, *args, "-o", tmp_path / "out")
    assert proc.returncode == 2 and needle in proc.stderr, proc.stderr
    assert not (tmp_path / "out").exists()


def test_two_packs_bringing_different_files_of_one_name_are_refused(ace_root: Path, tmp_path: Path) -> None:
    """Runtime files are the packs' own: two packs of one run that bring different files under one
    name (two tokenizer.json) stop the run, naming both, instead of keeping the first silently."""
    from heartmula_burn._errors import OutputError
    from heartmula_burn._manifest import Manifest, ManifestTensor
    from heartmula_burn._packing import Job, pack_manifests

    shard = ace_root / "Ace-Step1.5/vae/diffusion_pytorch_model.safetensors"
    header = read_upstream(shard)
    name = next(iter(sorted(header)))
    jobs = []
    for i, folder in enumerate(("Ace-Step1.5/Qwen3-Embedding-0.6B", "acestep-5Hz-lm-0.6B")):
        tensor = ManifestTensor(name, shard, name, "BF16", "F32", header[name].shape)
        extras = {"tokenizer.json": ace_root / folder / "tokenizer.json"}
        jobs.append(Job(Manifest([tensor], {"model": "acestep-1.5"}, extras), tmp_path / "out" / f"{i}.bpk"))
    (ace_root / "acestep-5Hz-lm-0.6B/tokenizer.json").write_text('{"model": {"type": "BPE"}}')
    try:
        with pytest.raises(OutputError, match="two packs bring different files under this name") as caught:
            pack_manifests(jobs)
        assert "Qwen3-Embedding-0.6B" in str(caught.value) and "acestep-5Hz-lm-0.6B" in str(caught.value)
        assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())
    finally:
        write_checkpoint(ace_root, folders=["acestep-5Hz-lm-0.6B"])  # the module's checkpoint as it was


def test_publish_layout_takes_the_whole_folder_and_its_json_files(turbo: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    run_cli("publish-layout", repo, "--pack", turbo / "acestep-condition.bpk", "-q", check_rc=0)
    assert {p.name for p in repo.iterdir()} == TURBO_FILES | {"README.md", ".gitattributes"}
    for name in TURBO_FILES:
        assert (repo / name).read_bytes() == (turbo / name).read_bytes(), name
    card = (repo / "README.md").read_text()
    assert "license: other" in card and "Not a trained model" in card
    assert "`silence_latent.bpk`" in card.split("Not a trained model")[1].split("\n")[0]  # synthetic too
    # A JSON file the runtime reads beside a pack is missing: one line naming it, nothing written.
    copy = tmp_path / "copy"
    shutil.copytree(turbo, copy)
    (copy / "lm_config.json").unlink()
    proc = run_cli("publish-layout", tmp_path / "repo2", "--pack", copy / "acestep-dit.bpk", "-q")
    assert_clean_failure(proc, copy / "lm_config.json", "not found beside acestep-lm.bpk")
    assert not (tmp_path / "repo2").exists()


def test_synthetic_writes_a_checkpoint_pack_reads(tmp_path: Path) -> None:
    run_cli("synthetic", tmp_path / "ckpt", "--model", "acestep", check_rc=0)
    for folder in ("Ace-Step1.5/acestep-v15-turbo", "Ace-Step1.5/vae", "acestep-5Hz-lm-4B", "acestep-v15-sft"):
        assert (tmp_path / "ckpt" / folder / "config.json").is_file(), folder
    run_cli("pack", tmp_path / "ckpt", "--model", "acestep-sft", "-o", tmp_path / "out", "-q", check_rc=0)
    assert {p.name for p in (tmp_path / "out").iterdir()} == SFT_FILES
    proc = run_cli("synthetic", tmp_path / "other", "--model", "acestep", "--dtype", "f16")
    assert proc.returncode == 2 and "BF16" in proc.stderr


def test_convert_sh_writes_the_folder_of_a_model_named(ace_root: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    from conftest import REPO

    env = dict(os.environ, HEARTMULA_OUT_DIR=str(tmp_path / "ace"), PYTHON=sys.executable)
    cmd = ["bash", str(REPO / "convert.sh"), str(ace_root), "--model", "acestep-turbo", "-q"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert {p.name for p in (tmp_path / "ace").iterdir()} == TURBO_FILES


def test_burn_version_reaches_every_pack_of_the_folder(ace_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "old"
    run_cli("pack", ace_root, "--model", "acestep-turbo", "--burn-version", "0.19", "-o", out, "-q", check_rc=0)
    for pack in sorted(out.glob("*.bpk")):
        with open_pack(pack) as opened:
            assert opened.layout == "0.19", pack.name  # no alignment padding, as Burn 0.19 wrote


def test_the_python_api_writes_the_same_folder(ace_root: Path, tmp_path: Path) -> None:
    import heartmula_burn as hb

    result = hb.pack_acestep(ace_root, tmp_path / "api", model="acestep-sft")
    assert {p.name for p in (tmp_path / "api").iterdir()} == SFT_FILES
    assert len(result.packs) == 6 and all(r.dtype == "F32" for r in result.packs)
    with pytest.raises(ValueError, match="unknown model 'acestep-base'"):
        hb.pack_acestep(ace_root, tmp_path / "x", model="acestep-base")
    with pytest.raises(ValueError, match="not '1.7B'"):
        hb.pack_acestep(ace_root, tmp_path / "x", model="acestep-sft", planner="1.7B")
    assert not (tmp_path / "x").exists()
