"""Model folders are found by their config.json, whatever their name, and the Hub options name
each model's releases: the model is the unit, not the folder name upstream happened to use."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import assert_clean_failure, run_cli
from heartmula_burn import open_pack

# Upstream's releases on the Hub, written out by hand (heartlib's README and the model cards).
LM_RELEASES = (
    "HeartMuLa/HeartMuLa-oss-3B",
    "HeartMuLa/HeartMuLa-RL-oss-3B-20260123",
    "HeartMuLa/HeartMuLa-oss-3B-happy-new-year",
)
CODEC_RELEASES = ("HeartMuLa/HeartCodec-oss", "HeartMuLa/HeartCodec-oss-20260123")


def tensors_of(path: Path) -> dict[str, tuple[str, tuple[int, ...], bytes]]:
    with open_pack(path) as pack:
        return {t.name: (t.dtype, tuple(t.shape), bytes(pack.raw_bytes(t.name))) for t in pack.tensors}


@pytest.fixture()
def root(tiny_root: Path, tmp_path: Path) -> Path:
    """A writable copy of the two-model CKPT_ROOT."""
    copy = tmp_path / "root"
    shutil.copytree(tiny_root, copy)
    return copy


def test_a_model_folder_of_any_name_is_found_by_its_config(root, tiny_root, tmp_path):
    # Names that sort the codec first: the LM is still the first pack (the one `-o FILE` names).
    (root / "HeartMuLa-oss-3B").rename(root / "lm-7B")
    (root / "HeartCodec-oss").rename(root / "codec")
    # A folder of something else, with shards and a config no preset knows, is left alone.
    other = root / "text-encoder"
    other.mkdir()
    (other / "config.json").write_text('{"model_type": "bert"}')
    shutil.copy(next((tiny_root / "HeartCodec-oss").glob("*.safetensors")), other / "model.safetensors")
    out, want = tmp_path / "out", tmp_path / "want"
    out.mkdir()
    run_cli("pack", root, "-o", out / "lm.bpk", "-q", check_rc=0)
    run_cli("pack", tiny_root, "-o", f"{want}/", "-q", check_rc=0)
    assert sorted(p.name for p in out.iterdir()) == ["gen_config.json", "heartcodec.bpk", "lm.bpk", "tokenizer.json"]
    assert tensors_of(out / "lm.bpk") == tensors_of(want / "heartmula.bpk")
    assert tensors_of(out / "heartcodec.bpk") == tensors_of(want / "heartcodec.bpk")


def test_a_folder_named_as_upstream_ships_a_model_is_checked_even_with_a_broken_config(root, tmp_path):
    (root / "HeartCodec-oss" / "config.json").write_text("{not json")
    proc = run_cli("pack", root, "-o", f"{tmp_path / 'out'}/", "-q")
    assert_clean_failure(proc, "HeartCodec-oss/config.json", "not valid JSON")
    assert not (tmp_path / "out").exists()


def test_two_checkpoints_of_one_model_are_refused_naming_both(root, tmp_path):
    shutil.copytree(root / "HeartCodec-oss", root / "HeartCodec-oss-20260123")
    proc = run_cli("pack", root, "-o", f"{tmp_path / 'out'}/", "-q")
    assert_clean_failure(
        proc, "holds 2 HeartCodec checkpoints", "HeartCodec-oss/", "HeartCodec-oss-20260123/", "--subdir"
    )
    assert not (tmp_path / "out").exists()
    # One at a time, as the message says.
    run_cli("pack", root, "--subdir", "HeartCodec-oss-20260123", "-o", tmp_path / "c.bpk", "-q", check_rc=0)
    assert tensors_of(tmp_path / "c.bpk") == tensors_of_codec(root, tmp_path)


def tensors_of_codec(root: Path, tmp_path: Path) -> dict[str, tuple[str, tuple[int, ...], bytes]]:
    run_cli("pack", root, "--subdir", "HeartCodec-oss", "-o", tmp_path / "ref.bpk", "-q", check_rc=0)
    return tensors_of(tmp_path / "ref.bpk")


def test_help_lists_every_release_and_the_default():
    text = " ".join(run_cli("download", "--help", check_rc=0).stdout.split())
    for repo in LM_RELEASES + CODEC_RELEASES:
        assert repo.split("/")[1] in text
    assert "(default HeartMuLa/HeartMuLa-oss-3B)" in text and "(default HeartMuLa/HeartCodec-oss)" in text
    assert "HeartMuLa-oss-3B-happy-new-year (recommended upstream)" in text


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--lm-release", "HeartMuLa-oss-3B-happy-new-yaer"], "did you mean HeartMuLa-oss-3B-happy-new-year"),
        (["--lm-release", "HeartMuLa-oss-3B", "--lm-repo", "a/b"], "give --lm-repo or --lm-release, not both"),
        (["--gen-release", "x"], "unrecognized arguments: --gen-release"),
    ],
)
def test_release_options_refuse_what_makes_no_sense(tmp_path, args, needle):
    proc = run_cli("download", tmp_path / "ckpt", *args)
    assert proc.returncode == 2 and needle in proc.stderr, proc.stderr
    assert not (tmp_path / "ckpt").exists()


def test_a_pack_that_names_no_model_is_told_by_its_tensors(tiny_root, tmp_path):
    from heartmula_burn._presets import preset_for_pack

    run_cli("pack", tiny_root, "-o", f"{tmp_path}/", "-q", check_rc=0)
    for pack_name, model in (("heartmula.bpk", "heartmula"), ("heartcodec.bpk", "heartcodec")):
        names = set(tensors_of(tmp_path / pack_name))
        found = preset_for_pack({}, names)
        assert found is not None and found.name == model
        assert preset_for_pack({"model": "heartcodec"}, names).name == "heartcodec"  # the metadata wins
        # One tensor short of what only that model has, and nothing says which: none.
        assert preset_for_pack({}, names - {"audio_head", "scalar_model.decoder.0.bias"}) is None


def test_the_codec_pack_beside_the_lm_pack_joins_it_and_not_the_other_way(tmp_path):
    from heartmula_burn._publish import packs_beside

    lm, codec = tmp_path / "heartmula.bpk", tmp_path / "heartcodec.bpk"
    lm.write_bytes(b"lm")
    assert packs_beside(lm) == []  # nothing beside it yet
    codec.write_bytes(b"codec")
    assert packs_beside(lm) == [codec]
    assert packs_beside(codec) == []  # the codec alone is published alone
    (tmp_path / "other.bpk").write_bytes(b"x")
    assert packs_beside(tmp_path / "other.bpk") == []
    codec.unlink()
    codec.symlink_to(lm)  # the same file under the codec's name is not a second pack
    assert packs_beside(lm) == []
