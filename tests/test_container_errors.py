"""The container check of `verify` and the reader, on packs crafted byte by byte: a tensor off the
256-byte grid, two tensors sharing bytes, data past the end of the file; and what `--burn-version`
0.20 and 0.22 change in the bytes (the format reference: only Bool's spelling, for 0.20)."""

from __future__ import annotations

import json
from pathlib import Path

import cbor2
import numpy as np
import pytest
from conftest import assert_clean_failure, run_cli
from heartmula_burn import PackFileError, open_pack
from safetensors.numpy import save_file

A = np.arange(1, 5, dtype="<f4")  # 'a' [4] F32, 16 bytes
B = np.arange(5, 9, dtype="<f4")


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    """A pack written by `pack`: 'a' at data offset 0, 'b' at 256 (the next 256-byte boundary)."""
    folder = tmp_path_factory.mktemp("container")
    save_file({"a": A, "b": B}, str(folder / "m.safetensors"))
    run_cli("pack", folder / "m.safetensors", "--any-model", "--no-extras", "-q", "-o", folder / "good.bpk", check_rc=0)
    return folder / "good.bpk"


def split(raw: bytes) -> tuple[dict, bytes]:
    """The decoded CBOR metadata and the data section (after the padding to 256) of a 0.20+ pack."""
    assert raw[:6] == b"NRUB\x01\x00"
    size = int.from_bytes(raw[6:10], "little")
    start = -(-(10 + size) // 256) * 256
    return cbor2.loads(raw[10 : 10 + size]), raw[start:]


def craft(doc: dict, data: bytes) -> bytes:
    """A pack: magic, version 1, metadata size, the CBOR of `doc`, zeros to 256, `data`."""
    cbor = cbor2.dumps(doc)
    head = b"NRUB\x01\x00" + len(cbor).to_bytes(4, "little") + cbor
    return head + b"\x00" * (-len(head) % 256) + data


def test_crafting_reproduces_a_written_pack(good):
    raw = good.read_bytes()
    doc, data = split(raw)
    assert craft(doc, data) == raw  # cbor2 encodes the metadata exactly as the writer did
    assert {n: t["data_offsets"] for n, t in doc["tensors"].items()} == {"a": [0, 16], "b": [256, 272]}
    assert data == A.tobytes() + b"\x00" * 240 + B.tobytes()
    assert "ok, the container is sound" in run_cli("verify", good, check_rc=0).stdout


def variant(good: Path, tmp_path: Path, offsets: dict[str, list[int]], data: bytes) -> Path:
    doc, _ = split(good.read_bytes())
    for name, pair in offsets.items():
        doc["tensors"][name]["data_offsets"] = pair
    path = tmp_path / "crafted.bpk"
    path.write_bytes(craft(doc, data))
    return path


def test_a_tensor_off_the_256_byte_grid_is_named_by_verify(good, tmp_path):
    # 'b' right after 'a', as 0.19 wrote it, in a file whose size says 0.20+ (aligned): Burn reads
    # it (so does the reader), but the writer never produces it.
    bad = variant(good, tmp_path, {"b": [16, 32]}, A.tobytes() + B.tobytes())
    with open_pack(bad) as pack:
        assert pack.info("b").file_offset == 256 + 16
        assert pack["b"].tolist() == B.tolist()
    proc = run_cli("verify", bad)
    assert proc.returncode == 1 and proc.stdout == ""
    assert "tensor 'b': starts at 272, not on a 256-byte boundary" in proc.stderr
    assert "tensor 'a'" not in proc.stderr


def test_overlapping_tensors_are_refused_by_the_reader_and_verify(good, tmp_path):
    bad = variant(good, tmp_path, {"b": [8, 24]}, A.tobytes() + B.tobytes()[:8])
    with pytest.raises(PackFileError, match="tensor 'b'.*overlaps tensor 'a'"):
        open_pack(bad)
    assert_clean_failure(run_cli("verify", bad), str(bad), "tensor 'b': overlaps tensor 'a'")
    # Sharing a single byte is enough.
    bad = variant(good, tmp_path, {"b": [15, 31]}, A.tobytes() + B.tobytes()[:15])
    assert_clean_failure(run_cli("verify", bad), "tensor 'b': overlaps tensor 'a'")


def test_data_past_the_end_of_the_file_is_refused(good, tmp_path):
    raw = good.read_bytes()
    assert len(raw) == 528  # 256 of header, metadata and padding; 'a', zeros to 256, 'b'
    cut = tmp_path / "cut.bpk"
    cut.write_bytes(raw[:-4])  # 'b' ends 4 bytes past the end
    message = "truncated: the 0.20+ (256-byte aligned) layout needs 528 bytes but the file has 524"
    with pytest.raises(PackFileError) as err:
        open_pack(cut)
    assert str(err.value) == f"{cut}: {message}"
    assert_clean_failure(run_cli("verify", cut), f"{cut}: {message}")
    # An offset past the data, in a file of the right length for the tensors before it.
    far = variant(good, tmp_path, {"b": [512, 528]}, A.tobytes() + b"\x00" * 240 + B.tobytes())
    assert_clean_failure(run_cli("verify", far), f"{far}: truncated:", "needs 784 bytes but the file has 528")


def test_bytes_after_the_last_tensor_are_refused(good, tmp_path):
    longer = tmp_path / "longer.bpk"
    longer.write_bytes(good.read_bytes() + b"\x00" * 8)
    assert_clean_failure(run_cli("verify", longer), str(longer), "8 unexpected bytes after the last tensor")


# ---- --burn-version: the bytes each target gets ------------------------------------------------------


def cbor_text(s: str) -> bytes:
    assert len(s) < 24
    return bytes([0x60 + len(s)]) + s.encode()


def bool_manifest(folder: Path) -> Path:
    """The format reference's example: a Bool tensor `mask` [3] = [true, false, true], param_id 7."""
    save_file({"m": np.array([True, False, True])}, str(folder / "b.safetensors"))
    tensor = {
        "name": "mask",
        "source": {"file": "b.safetensors", "key": "m"},
        "source_dtype": "Bool",
        "dtype": "Bool",
        "shape": [3],
        "param_id": 7,
    }
    doc = {
        "format": "heartmula-burn-manifest",
        "format_version": 1,
        "metadata": {"format": "burnpack", "producer": "burn", "version": "0.21.0"},
        "tensors": [tensor],
    }
    (folder / "bool.json").write_text(json.dumps(doc))
    return folder / "bool.json"


def bool_pack(dtype_cbor: bytes) -> bytes:
    cbor = (
        b"\xa2"
        + cbor_text("tensors")
        + b"\xa1"
        + cbor_text("mask")
        + b"\xa4"
        + cbor_text("dtype")
        + dtype_cbor
        + cbor_text("shape")
        + b"\x81\x03"
        + cbor_text("data_offsets")
        + b"\x82\x00\x03"
        + cbor_text("param_id")
        + b"\x07"
        + cbor_text("metadata")
        + b"\xa3"
        + cbor_text("format")
        + cbor_text("burnpack")
        + cbor_text("producer")
        + cbor_text("burn")
        + cbor_text("version")
        + cbor_text("0.21.0")
    )
    head = b"NRUB\x01\x00" + len(cbor).to_bytes(4, "little") + cbor
    return head + b"\x00" * (256 - len(head)) + b"\x01\x00\x01"


BOOL_021 = bool_pack(b"\xa1" + cbor_text("Bool") + cbor_text("Native"))  # {"Bool": "Native"}
BOOL_020 = bool_pack(cbor_text("Bool"))  # "Bool", a unit variant before 0.21


def test_bool_is_spelled_per_target_and_022_writes_021s_bytes(tmp_path):
    assert len(BOOL_021) == len(BOOL_020) == 259
    assert BOOL_021[6:10] == (124).to_bytes(4, "little") and BOOL_020[6:10] == (116).to_bytes(4, "little")
    manifest = bool_manifest(tmp_path)
    written = {}
    for version in ("0.20", "0.21", "0.22"):
        out = tmp_path / f"{version}.bpk"
        run_cli("pack", "--manifest", manifest, "--burn-version", version, "-o", out, "-q", check_rc=0)
        written[version] = out.read_bytes()
    assert written["0.21"] == BOOL_021
    assert written["0.22"] == BOOL_021  # 0.22 added only `scalars`, absent without quantized tensors
    assert written["0.20"] == BOOL_020
    for version in ("0.20", "0.21"):
        with open_pack(tmp_path / f"{version}.bpk") as pack:
            assert pack["mask"].tolist() == [True, False, True]


def test_without_bool_020_021_and_022_write_the_same_bytes(good, tmp_path):
    source = good.parent / "m.safetensors"
    written = set()
    for version in ("0.20", "0.21", "0.22"):
        out = tmp_path / f"{version}.bpk"
        run_cli("pack", source, "--any-model", "--no-extras", "-q", "--burn-version", version, "-o", out, check_rc=0)
        written.add(out.read_bytes())
    assert written == {good.read_bytes()}
