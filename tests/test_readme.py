"""Every command in the README and docs/ runs as written: each `python -m heartmula_burn ...` line of
their shell blocks is run here on the synthetic checkpoint (CKPT_ROOT replaced by it, optional `[...]`
parts left out), each in a fresh folder holding what it reads; every other line names the test or
script that runs it. A command added to the README without either fails this test."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys

import pytest
from conftest import REPO, crosscheck, run_cli

README = REPO / "README.md"
DOCS = [README, *sorted((REPO / "docs").glob("*.md"))]
RUN_HERE = "python -m heartmula_burn "
# Lines run elsewhere: the line's start -> where (a test function, or a script CI runs).
COVERED = {
    # ACE-Step 1.5 (its own synthetic checkpoint and Hub repositories).
    "python -m heartmula_burn pack CKPT_ROOT --model acestep": "test_turbo_folder_holds_exactly_the_runtime_files",
    "python -m heartmula_burn pack --hub --stream --model acestep": "test_pack_hub_stream_writes_what_the_local_folder_gives",
    "python -m heartmula_burn pack --hub --model acestep": "test_pack_hub_writes_what_the_local_folder_gives",
    "python -m heartmula_burn download CKPT_ROOT --model acestep": "test_download_then_pack_sft_with_a_fine_tuned_dit",
    "python -m heartmula_burn verify ace/": "test_verify_against_passes_and_fails_on_one_flipped_byte",
    "./convert.sh CKPT_ROOT --model": "test_convert_sh_writes_the_folder_of_a_model_named",
    "python -m heartmula_burn publish-layout hf-repo --pack ace/": "test_publish_layout_takes_the_whole_folder_and_its_json_files",
    "HEARTMULA_RUNTIME=1": "tests/test_runtime_acestep.py",
    "python benchmarks/bench_acestep.py": "benchmarks/bench_acestep.py",
    "python3 -m venv .venv && . .venv/bin/activate && pip install . && ": "test_convert_sh_one_step",
    "bash tests/run.sh": ".ci/run",
    "python -m heartmula_burn pack --hub -o runtime/ --lm-release": "test_a_named_release_is_fetched_from_its_repository",
    "python -m heartmula_burn pack --hub": "test_pack_hub_goes_from_nothing_to_the_runtime_folder",
    "python -m heartmula_burn download CKPT_ROOT --lm-repo": "test_a_pinned_revision_is_fetched_and_recorded",
    "python -m heartmula_burn download CKPT_ROOT": "test_download_lays_out_upstream_layout_then_packs_like_the_local_folder",
    "python -m heartmula_burn publish-layout hf-repo --pack runtime/heartmula.bpk --push": (
        "test_push_uploads_the_folder_in_one_commit_and_downloads_back_identical"
    ),
    "./convert.sh CKPT_ROOT": "test_convert_sh_one_step",
    "pip install '.[sanity]'": "tests/run.sh",
    "PYTHON=.venv/bin/python bash rust/core/fuzz/run.sh": "tests/run.sh",
    "scripts/build-wheels.sh dist/": "tests/run.sh",
    "pip install dist/heartmula_burn-*manylinux_2_17_x86_64.whl": "tests/wheel_smoke.sh",
    "cargo build --release --features burn-021 --bin burn_writer_bench": "tests/run.sh",
    # 45 minutes on full-size checkpoints: run by hand (its baselines' bytes are tested in test_bench_baselines).
    "python benchmarks/bench_pack.py": "benchmarks/bench_pack.py",
}


def readme_commands() -> list[str]:
    """The command lines of the README's shell blocks, comments and continuation lines joined."""
    commands = []
    blocks = [b for doc in DOCS for b in re.findall(r"```sh\n(.*?)```", doc.read_text(), re.DOTALL)]
    for block in blocks:
        for line in block.replace("\\\n", "").splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                commands.append(line)
    return commands


def test_every_readme_command_is_run_somewhere():
    tests = "\n".join(p.read_text() for p in (REPO / "tests").glob("*.py"))
    for command in readme_commands():
        if command.startswith(RUN_HERE) and not any(command.startswith(k) for k in COVERED):
            continue
        where = next((w for k, w in COVERED.items() if command.startswith(k)), None)
        assert where is not None, f"README command run nowhere: {command}"
        if where.startswith("test_"):
            assert f"def {where}(" in tests, f"{command}: no test named {where}"
        else:
            assert (REPO / where).is_file(), f"{command}: {where} does not exist"


def runnable() -> list[str]:
    return [c for c in readme_commands() if c.startswith(RUN_HERE) and not any(c.startswith(k) for k in COVERED)]


@pytest.fixture(scope="module")
def prepared(tiny_root, tmp_path_factory):
    """What the README's commands read: the packs in runtime/, a BF16 pack, a manifest, an export."""
    base = tmp_path_factory.mktemp("readme")
    run_cli("pack", tiny_root, "-o", f"{base}/runtime/", "-q", check_rc=0)
    run_cli(
        "pack", tiny_root, "--subdir", "HeartMuLa-oss-3B", "--dtype", "bf16", "-o", base / "heartmula-bf16.bpk", "-q"
    )
    run_cli("export-raw", "--checkpoint-root", tiny_root, "--output-root", base / "artifacts/heartmula-oss-3b", "-q")
    return base


@pytest.mark.parametrize("command", runnable(), ids=lambda c: c.split("  #")[0][len(RUN_HERE) :])
def test_readme_command_runs_as_written(command, tiny_root, prepared, tmp_path):
    if " sanity " in command:
        crosscheck("torch")
    ckpt = tmp_path / "CKPT_ROOT"
    shutil.copytree(tiny_root, ckpt, symlinks=True)
    if "codec-manifest.json -o custom.bpk" in command:
        run_cli("manifest", ckpt, "--subdir", "HeartCodec-oss", "-o", ckpt / "codec-manifest.json", check_rc=0)
    words = shlex.split(re.sub(r"\[[^\]]*\]", "", command.split("  #")[0]))
    written = [words[i + 1] for i, w in enumerate(words[:-1]) if w in ("-o", "--output-root")]
    for name in ("heartmula-bf16.bpk", "artifacts", "runtime"):
        if any(out.startswith(name) for out in written):
            continue  # what the command writes is not there before it
        source = prepared / name
        (shutil.copytree if source.is_dir() else shutil.copy)(source, tmp_path / name)
    args = [w.replace("CKPT_ROOT", str(ckpt)) for w in words[3:]]
    proc = subprocess.run(
        [sys.executable, "-m", "heartmula_burn", *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, f"{command}\n{proc.stderr}"
    for out in re.findall(r"-o (\S+)", command):  # what it says it writes is there
        assert (tmp_path / out).exists(), out
