"""ACE-Step packs in the runtime users run: rust/runtime-check builds maolan-generate 0.0.19's own
ACE-Step modules (from crates.io) from a folder's configs, loads every pack with `load_from` as the
runtime does, reports what was missing or unused, and saves each loaded module back as a pack, so
that the values the runtime holds can be compared with upstream's.

The runtime's build (Burn with wgpu) takes about 45 minutes from scratch, so this runs only with
HEARTMULA_RUNTIME=1 (before any change to a model's packs). CARGO_TARGET_DIR may point at an earlier
release build of maolan-generate 0.0.19 (rust/runtime-check/Cargo.lock is its lock file), which
makes the build a minute."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, run_cli
from heartmula_burn._packfile import open_pack
from heartmula_burn._presets.acestep.synthetic import write_checkpoint
from test_acestep_folder import SFT_FILES, TURBO_FILES, expected_pack

pytestmark = pytest.mark.skipif(
    os.environ.get("HEARTMULA_RUNTIME") != "1",
    reason="set HEARTMULA_RUNTIME=1 to build maolan-generate 0.0.19 and load the ACE-Step packs into it",
)
CRATE = REPO / "rust" / "runtime-check"


@pytest.fixture(scope="module")
def checker() -> Path:
    subprocess.run(
        ["cargo", "build", "--release", "--locked", "--manifest-path", str(CRATE / "Cargo.toml")], check=True
    )
    target = Path(os.environ.get("CARGO_TARGET_DIR", CRATE / "target"))
    return target / "release" / "acestep_load_check"


def runtime_check(checker: Path, folder: Path, out: Path, prefix: str = "", *options: str) -> dict[str, dict[str, Any]]:
    out.mkdir()
    args = [str(checker), "check", str(folder), str(out), *(["--prefix", prefix] if prefix else []), *options]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=1800, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return {d["pack"]: d for d in map(json.loads, proc.stdout.splitlines())}


@pytest.mark.parametrize(
    ("model", "prefix", "files"), [("acestep-turbo", "", TURBO_FILES), ("acestep-sft", "sft-", SFT_FILES)]
)
def test_every_pack_loads_into_the_runtime_with_upstream_values(
    checker: Path, tmp_path: Path, model: str, prefix: str, files: set[str]
) -> None:
    root = write_checkpoint(tmp_path / "ckpt")
    folder = tmp_path / "runtime"
    run_cli("pack", root, "--model", model, "--planner", "all" if not prefix else "4B", "-o", folder, "-q", check_rc=0)
    reports = runtime_check(checker, folder, tmp_path / "loaded", prefix)
    packs = sorted(f for f in files if f.endswith(".bpk"))
    if not prefix:
        packs += ["acestep-lm-1.7b.bpk", "acestep-lm-4b.bpk"]
    assert sorted(reports) == sorted(packs)
    for name in packs:
        report = reports[name]
        assert report["missing"] == [] and report["unused"] == [] and report["errors"] == [], report
        assert set(report["dtypes"]) == {"F32"}, report
    # What the runtime's modules hold after loading, saved by Burn's own writer, is upstream's widened.
    sft_dit = "acestep-v15-sft/model.safetensors"
    sources = {
        f"{prefix}acestep-dit.bpk": ("acestep-dit.bpk", sft_dit if prefix else None),
        f"{prefix}acestep-condition.bpk": ("acestep-condition.bpk", sft_dit if prefix else None),
        "acestep-vae.bpk": ("acestep-vae.bpk", None),
        "qwen3-encoder.bpk": ("qwen3-encoder.bpk", None),
    }
    if not prefix:
        sources |= {"acestep-lm.bpk": ("acestep-lm.bpk", None), "acestep-lm-1.7b.bpk": ("acestep-lm-1.7b.bpk", None)}
    for pack_name, (kind, source) in sources.items():
        expected = expected_pack(root, kind, source)
        with open_pack(tmp_path / "loaded" / pack_name) as loaded:
            assert set(loaded) == set(expected), pack_name
            for tensor, values in expected.items():
                assert loaded.numpy(tensor).tobytes() == values.tobytes(), (pack_name, tensor)


@pytest.mark.skipif(
    not any(Path("/usr/share/vulkan/icd.d").glob("*.json")), reason="no Vulkan driver (Mesa's lavapipe serves)"
)
def test_the_turbo_folder_loads_onto_the_runtimes_vulkan_device(checker: Path, tmp_path: Path) -> None:
    """The runtime's default backend: every pack loads onto wgpu pinned to Vulkan, set up as
    maolan-generate sets it up, nothing missing or unused, and reads back as upstream's widened."""
    root = write_checkpoint(tmp_path / "ckpt")
    folder = tmp_path / "runtime"
    run_cli("pack", root, "--model", "acestep-turbo", "-o", folder, "-q", check_rc=0)
    reports = runtime_check(checker, folder, tmp_path / "loaded", "", "--vulkan", "--skip-from-burnpack")
    assert sorted(reports) == sorted(f for f in TURBO_FILES if f.endswith(".bpk"))
    for report in reports.values():
        assert report["missing"] == [] and report["unused"] == [] and report["errors"] == [], report
        assert set(report["dtypes"]) == {"F32"}, report
    for kind in ("acestep-dit.bpk", "acestep-condition.bpk", "acestep-vae.bpk", "qwen3-encoder.bpk", "acestep-lm.bpk"):
        expected = expected_pack(root, kind, None)
        with open_pack(tmp_path / "loaded" / kind) as loaded:
            assert set(loaded) == set(expected), kind
            for tensor, values in expected.items():
                assert loaded.numpy(tensor).tobytes() == values.tobytes(), (kind, tensor)
