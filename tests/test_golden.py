"""A small golden file whose every byte is checked against the format reference by hand-written
expectations (the reference's worked example: what Burn 0.21's BurnpackStore writes for one F32
tensor `weight` [2,2] = [1,2,3,4] with param_id 42)."""

import json

import numpy as np
from conftest import run_cli
from safetensors.numpy import save_file

METADATA = {"format": "burnpack", "producer": "burn", "version": "0.21.0"}


def golden_manifest(tmp_path, **extra):
    save_file({"w": np.array([[1, 2], [3, 4]], np.float32)}, str(tmp_path / "m.safetensors"))
    tensor = {
        "name": "weight",
        "source": {"file": "m.safetensors", "key": "w"},
        "source_dtype": "F32",
        "dtype": "F32",
        "shape": [2, 2],
        "param_id": 42,
    }
    tensor.update(extra)
    doc = {"format": "heartmula-burn-manifest", "format_version": 1, "metadata": METADATA, "tensors": [tensor]}
    (tmp_path / "manifest.json").write_text(json.dumps(doc))
    return tmp_path / "manifest.json"


def cbor_text(s: str) -> bytes:
    assert len(s) < 24
    return bytes([0x60 + len(s)]) + s.encode()


def expected_metadata(version: str) -> bytes:
    return (
        b"\xa2"
        + cbor_text("tensors")
        + b"\xa1"
        + cbor_text("weight")
        + b"\xa4"
        + cbor_text("dtype")
        + cbor_text("F32")
        + cbor_text("shape")
        + b"\x82\x02\x02"
        + cbor_text("data_offsets")
        + b"\x82\x00\x10"
        + cbor_text("param_id")
        + b"\x18\x2a"
        + cbor_text("metadata")
        + b"\xa3"
        + cbor_text("format")
        + cbor_text("burnpack")
        + cbor_text("producer")
        + cbor_text("burn")
        + cbor_text("version")
        + cbor_text(version)
    )


F32_1234 = bytes.fromhex("0000803f 00000040 00004040 00008040".replace(" ", ""))


def test_golden_burn_021_file(tmp_path):
    out = tmp_path / "golden.bpk"
    run_cli("pack", "--manifest", golden_manifest(tmp_path), "-o", out, "-q", check_rc=0)
    data = out.read_bytes()
    assert data[0:4] == b"NRUB"  # magic 0x4255524E little-endian
    assert data[4:6] == b"\x01\x00"  # version 1
    assert data[6:10] == (119).to_bytes(4, "little")  # metadata size
    assert data[10:129] == expected_metadata("0.21.0")
    assert data[129:256] == b"\x00" * 127  # zero padding to the 256-aligned data section
    assert data[256:272] == F32_1234
    assert len(data) == 272


def test_golden_burn_019_layout(tmp_path):
    out = tmp_path / "golden019.bpk"
    METADATA["version"] = "0.19.1"
    try:
        run_cli("pack", "--manifest", golden_manifest(tmp_path), "-o", out, "-q", "--burn-layout", "0.19", check_rc=0)
    finally:
        METADATA["version"] = "0.21.0"
    data = out.read_bytes()
    assert data[:10] == b"NRUB\x01\x00" + (119).to_bytes(4, "little")
    assert data[10:129] == expected_metadata("0.19.1")
    assert data[129:] == F32_1234  # no padding anywhere in 0.19
    doc = json.loads(run_cli("inspect", out, "--json", check_rc=0).stdout)
    assert doc["layout"] == "0.19" and doc["tensors"][0]["file_offset"] == 129


def test_without_param_id_the_descriptor_has_three_fields(tmp_path):
    manifest = golden_manifest(tmp_path)
    doc = json.loads(manifest.read_text())
    del doc["tensors"][0]["param_id"]
    doc["metadata"] = {}
    manifest.write_text(json.dumps(doc))
    out = tmp_path / "plain.bpk"
    run_cli("pack", "--manifest", manifest, "-o", out, "-q", check_rc=0)
    data = out.read_bytes()
    cbor = (
        b"\xa1"
        + cbor_text("tensors")
        + b"\xa1"
        + cbor_text("weight")
        + b"\xa3"
        + cbor_text("dtype")
        + cbor_text("F32")
        + cbor_text("shape")
        + b"\x82\x02\x02"
        + cbor_text("data_offsets")
        + b"\x82\x00\x10"
    )
    assert len(cbor) == 53
    assert data == b"NRUB\x01\x00" + (53).to_bytes(4, "little") + cbor + b"\x00" * (256 - 63) + F32_1234
