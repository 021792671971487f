"""What a user touches first: usage errors that name the subcommand and the option meant, no
abbreviated options, dtypes in any case, names that say what is there."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from conftest import assert_clean_failure, linked, run_cli
from heartmula_burn import open_pack

PACK_USAGE = "usage: python -m heartmula_burn pack "


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["pack", "CKPT", "--dtpye", "bf16"], ["unrecognized arguments: --dtpye bf16", "did you mean --dtype?"]),
        (["pack", "CKPT", "--dtyp", "bf16"], ["unrecognized arguments: --dtyp bf16", "did you mean --dtype?"]),
        (["pack", "CKPT", "--forse"], ["did you mean --force?"]),
        (["pack"], ["give a CKPT_ROOT"]),
        (["pack", "a", "b"], ["unrecognized arguments: b"]),
        (["pack", "CKPT", "--dtype", "bf61"], ["invalid choice: 'bf61'", "did you mean bf16?"]),
        (["pack", "CKPT", "--burn-version", "0.23"], ["invalid choice: '0.23'", "0.21, 0.22, 0.20, 0.19"]),
    ],
)
def test_a_subcommand_error_shows_that_subcommand_usage_and_what_was_meant(args, needles):
    proc = run_cli(*args)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith(PACK_USAGE), proc.stderr
    error = proc.stderr.strip().splitlines()[-1]
    assert error.startswith("python -m heartmula_burn pack: error: "), error
    for needle in needles:
        assert needle in error, error


def test_dtypes_are_taken_in_any_case(tiny_ckpt, tmp_path):
    for spelling in ("bf16", "BF16", "Bf16"):
        run_cli("pack", tiny_ckpt, "-o", tmp_path / f"{spelling}.bpk", "--dtype", spelling, "--no-extras", check_rc=0)
    assert (tmp_path / "BF16.bpk").read_bytes() == (tmp_path / "bf16.bpk").read_bytes()
    assert (tmp_path / "Bf16.bpk").read_bytes() == (tmp_path / "bf16.bpk").read_bytes()
    with open_pack(tmp_path / "BF16.bpk") as pack:
        assert {t.dtype for t in pack.tensors} == {"BF16"}
    run_cli("synthetic", tmp_path / "synth", "--model", "HeartCodec", "--dtype", "bf16", check_rc=0)
    with open_pack(_packed(tmp_path / "synth" / "HeartCodec-oss", tmp_path / "c.bpk")) as pack:
        assert {t.dtype for t in pack.tensors} == {"BF16"}


def _packed(source, out):
    run_cli("pack", source, "--any-model", "--dtype", "source", "-o", out, "-q", check_rc=0)
    return out


def test_a_misspelt_subdir_lists_the_folders_there(tiny_root):
    proc = run_cli("pack", tiny_root, "--subdir", "HeartMula-oss-3B", "-o", "x.bpk")
    assert_clean_failure(proc, "HeartMula-oss-3B", "HeartCodec-oss, HeartMuLa-oss-3B", "did you mean HeartMuLa-oss-3B?")


def test_synthetic_never_writes_into_a_folder_with_files_unasked(tmp_path):
    root = tmp_path / "CKPT_ROOT"
    root.mkdir()
    (root / "tokenizer.json").write_text('{"model": "the real one"}')
    assert_clean_failure(run_cli("synthetic", root), str(root), "not empty", "--force")
    assert (root / "tokenizer.json").read_text() == '{"model": "the real one"}'
    assert sorted(p.name for p in root.iterdir()) == ["tokenizer.json"]
    run_cli("synthetic", root, "--force", check_rc=0)
    assert (root / "tokenizer.json").read_text() != '{"model": "the real one"}'


def test_any_model_packs_are_named_after_their_source(tiny_ckpt, tmp_path):
    mine = tmp_path / "my-model"
    mine.mkdir()
    shard = next((tiny_ckpt / "HeartMuLa-oss-3B").glob("*.safetensors"))
    (mine / "model.safetensors").write_bytes(shard.read_bytes())
    out = tmp_path / "out"
    run_cli("pack", mine, "--any-model", "-o", f"{out}/", "-q", check_rc=0)
    assert sorted(p.name for p in out.iterdir()) == ["my-model.bpk"]


def test_a_narrow_pack_of_any_model_says_which_runtimes_run_it(tiny_ckpt, tmp_path):
    proc = run_cli("pack", tiny_ckpt / "HeartMuLa-oss-3B", "--any-model", "--dtype", "bf16", "-o", tmp_path / "x.bpk")
    assert proc.returncode == 0, proc.stderr
    assert "note: " in proc.stderr and "holds BF16 tensors" in proc.stderr
    assert "runs in runtimes that cast on load" in proc.stderr and "maolan-generate 0.0.19" in proc.stderr


def test_the_installed_package_carries_its_licence():
    from importlib import metadata

    meta = metadata.metadata("heartmula-burn")
    assert meta["License-Expression"] == "Apache-2.0"
    licence = [f for f in metadata.files("heartmula-burn") or [] if f.name == "LICENSE"]
    assert len(licence) == 1
    text = licence[0].read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text and len(text) > 10000


def test_the_python_api_takes_typed_options_and_checks_them_before_any_file(tiny_ckpt, tmp_path):
    import heartmula_burn as hb

    out = tmp_path / "p.bpk"
    out.write_bytes(b"someone else's file")
    with pytest.raises(TypeError, match="pack_checkpoint"):
        hb.pack_checkpoint(tiny_ckpt, out, forse=True)  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="int8"):
        hb.pack_checkpoint(tiny_ckpt, out, dtype="int8")  # not "output exists": the argument is wrong first
    with pytest.raises(ValueError, match="0.23"):
        hb.pack_checkpoint(tiny_ckpt, out, burn_version="0.23")
    assert out.read_bytes() == b"someone else's file"
    # A manifest given by its path, and the same pack as from the checkpoint; dtypes in any case.
    manifest = tmp_path / "m" / "m.json"  # beside a link to the checkpoint: manifests refer inside their folder
    run_cli("manifest", linked(tiny_ckpt, tmp_path / "m"), "--dtype", "bf16", "-o", manifest, check_rc=0)
    hb.pack_manifest(str(manifest), tmp_path / "from-manifest.bpk")
    hb.pack_checkpoint(tiny_ckpt, tmp_path / "from-ckpt.bpk", dtype="BF16")
    assert (tmp_path / "from-manifest.bpk").read_bytes() == (tmp_path / "from-ckpt.bpk").read_bytes()
    assert hb.verify(tmp_path / "from-ckpt.bpk", tiny_ckpt) == []


BASH_COMPLETE = """
source "$1"
complete_words() {
  COMP_WORDS=("$@"); COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 )); COMP_LINE="$*"; COMP_POINT=${#COMP_LINE}
  COMPREPLY=()
  _shtab_heartmula_burn heartmula-burn "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}"
  echo "${COMPREPLY[*]}"
}
complete -p heartmula-burn
complete_words heartmula-burn p
complete_words heartmula-burn pack --dt
complete_words heartmula-burn pack --dtype b
complete_words heartmula-burn download x --lm-re
complete_words heartmula-burn download x --lm-release HeartMuLa-oss-3B-h
"""


def test_bash_completion_completes_subcommands_options_and_choices(tmp_path):
    script = tmp_path / "heartmula-burn.bash"
    script.write_text(run_cli("completion", "bash", check_rc=0).stdout)
    proc = subprocess.run(
        ["bash", "-c", BASH_COMPLETE, "bash", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "complete -o bashdefault -F _shtab_heartmula_burn heartmula-burn",
        "pack publish-layout",
        "--dtype",
        "bf16",
        "--lm-repo --lm-release --lm-revision",
        "HeartMuLa-oss-3B-happy-new-year",
    ]


def test_zsh_completion_is_a_zsh_completion_function():
    script = run_cli("completion", "ZSH", check_rc=0).stdout
    assert script.startswith("#compdef heartmula-burn")
    for needle in ("download", "publish-layout", "--dtype", "bf16", "--lm-revision"):
        assert needle in script
    if shutil.which("zsh"):
        proc = subprocess.run(["zsh", "-n"], input=script, capture_output=True, text=True, timeout=60, check=False)
        assert proc.returncode == 0, proc.stderr
