"""The benchmark's baselines write the same pack as ours, byte for byte, so that timing them
against each other compares the same work."""

import os
import subprocess
import sys

import pytest
from conftest import REPO, linked, run_cli


@pytest.fixture()
def manifests(tiny_ckpt, tmp_path):
    """(manifest, our pack) for each target dtype."""
    out = {}
    ckpt = linked(tiny_ckpt, tmp_path)
    for dtype in ("f32", "bf16"):
        manifest = tmp_path / f"{dtype}.json"
        run_cli("manifest", ckpt, "--dtype", dtype, "-o", manifest, check_rc=0)
        pack = tmp_path / f"ours-{dtype}.bpk"
        run_cli("pack", "--manifest", manifest, "-o", pack, "--no-extras", "-q", check_rc=0)
        out[dtype] = (manifest, pack)
    return out


@pytest.mark.parametrize("dtype", ["f32", "bf16"])
def test_python_packer_writes_our_bytes(manifests, tmp_path, dtype):
    pytest.importorskip("torch")
    pytest.importorskip("cbor2")
    manifest, ours = manifests[dtype]
    theirs = tmp_path / f"python-{dtype}.bpk"
    subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "python_packer.py"), str(manifest), str(theirs)],
        check=True,
        timeout=300,
    )
    assert theirs.read_bytes() == ours.read_bytes()


def test_burn_writer_bench_writes_our_bytes(manifests, tmp_path):
    binary = REPO / "rust" / "burn-compat" / "target" / "release" / "burn_writer_bench"
    if not binary.exists():
        if os.environ.get("HEARTMULA_BURN_COMPAT") == "1":  # tests/run.sh builds it: missing is a failure
            pytest.fail(f"{binary} not built")
        pytest.skip(
            "build it with: cargo build --release --features burn-021 --bin burn_writer_bench "
            "--manifest-path rust/burn-compat/Cargo.toml"
        )
    manifest, ours = manifests["f32"]
    theirs = tmp_path / "burn.bpk"
    subprocess.run([str(binary), str(manifest), str(theirs)], check=True, timeout=300, capture_output=True)
    assert theirs.read_bytes() == ours.read_bytes()
