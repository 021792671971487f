"""The benchmark's baselines write the same pack as ours, byte for byte, so that timing them
against each other compares the same work."""

import json
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
    for dtype in ("f32", "bf16", "q8"):
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


@pytest.mark.parametrize(
    ("binary_name", "feature", "dtype"),
    [
        # Burn 0.21.0's writer given the F32 manifest's tensors.
        ("burn_writer_bench", "burn-021", "f32"),
        # Burn 0.22.1 quantizing (Tensor::quantize_dynamic) and writing the q8 manifest's tensors itself.
        ("burn_q8_bench", "burn-022", "q8"),
    ],
)
def test_burn_bench_writes_our_bytes(manifests, tmp_path, binary_name, feature, dtype):
    binary = REPO / "rust" / "burn-compat" / "target" / "release" / binary_name
    if not binary.exists():
        if os.environ.get("HEARTMULA_BURN_COMPAT") == "1":  # tests/run.sh builds it: missing is a failure
            pytest.fail(f"{binary} not built")
        pytest.skip(
            f"build it with: cargo build --release --features {feature} --bin {binary_name} "
            "--manifest-path rust/burn-compat/Cargo.toml"
        )
    manifest, ours = manifests[dtype]
    theirs = tmp_path / f"{binary_name}.bpk"
    subprocess.run([str(binary), str(manifest), str(theirs)], check=True, timeout=300, capture_output=True)
    assert theirs.read_bytes() == ours.read_bytes()


def test_check_benchmark_runs_and_reports_every_case(tmp_path):
    """bench_check.py end to end on a few MB: it asserts inside that each case did its work."""
    out = tmp_path / "times.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "bench_check.py"), "--workdir", str(tmp_path)]
        + ["--gb", "0.01", "--runs", "1", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    for case in ("sha256sum", "check", "check-1-thread", "check-marked"):
        assert f"| {case} |" in proc.stdout
    report = json.loads(out.read_text())
    assert report["bytes"] == 10_000_000 and report["files"] == 1
    assert not (tmp_path / "bench-check").exists(), "the blobs are deleted afterwards"
