"""verify (bit for bit against the source, plus the container) and unpack (pack -> safetensors -> pack)."""

import json
import shutil

import numpy as np
import pytest
from conftest import assert_clean_failure, linked, run_cli
from heartmula_burn import open_pack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.numpy import load_file


@pytest.fixture(scope="module")
def packs(tiny_ckpt, tmp_path_factory):
    folder = tmp_path_factory.mktemp("verify")
    for dtype in ("f32", "bf16"):
        run_cli("pack", tiny_ckpt, "-o", folder / f"{dtype}.bpk", "--dtype", dtype, "-q", "--no-extras", check_rc=0)
    run_cli("manifest", linked(tiny_ckpt, folder), "-o", folder / "manifest.json", "--dtype", "bf16", check_rc=0)
    return folder


@pytest.mark.parametrize("dtype", ["f32", "bf16"])
def test_good_packs_verify(packs, tiny_ckpt, dtype):
    proc = run_cli("verify", packs / f"{dtype}.bpk", "--against", tiny_ckpt, check_rc=0)
    assert proc.stdout == f"{packs / f'{dtype}.bpk'}: ok, every tensor matches {tiny_ckpt}\n"  # the verdict, on stdout
    proc = run_cli("verify", packs / f"{dtype}.bpk", check_rc=0)
    assert "ok, the container is sound" in proc.stdout


def test_verify_against_a_manifest(packs):
    run_cli("verify", packs / "bf16.bpk", "--against", packs / "manifest.json", check_rc=0)
    # The F32 pack is not what the BF16 manifest describes: every tensor's dtype differs.
    proc = run_cli("verify", packs / "f32.bpk", "--against", packs / "manifest.json")
    assert proc.returncode == 1 and "dtype F32, expected BF16" in proc.stderr and "Traceback" not in proc.stderr


def test_verify_json_reports_the_verdict_and_each_problem(packs, tiny_ckpt, tmp_path):
    good = run_cli("verify", packs / "f32.bpk", "--against", tiny_ckpt, "--json", "-q", check_rc=0)
    assert json.loads(good.stdout) == {
        "pack": str(packs / "f32.bpk"),
        "against": str(tiny_ckpt),
        "ok": True,
        "problems": [],
    }
    raw = bytearray((packs / "f32.bpk").read_bytes())
    with open_pack(packs / "f32.bpk") as pack:
        last = pack.tensors[-1]
    raw[last.file_offset] ^= 1
    (tmp_path / "bad.bpk").write_bytes(raw)
    bad = run_cli("verify", tmp_path / "bad.bpk", "--against", tiny_ckpt, "--json", "-q")
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    doc = json.loads(bad.stdout)
    assert doc["ok"] is False and len(doc["problems"]) == 1 and f"tensor '{last.name}'" in doc["problems"][0]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_verify_finds_a_flipped_bit_in_any_tensor(packs, tiny_ckpt, tmp_path_factory, data):
    dtype = data.draw(st.sampled_from(["f32", "bf16"]))
    with open_pack(packs / f"{dtype}.bpk") as pack:
        tensor = data.draw(st.sampled_from(pack.tensors))
        offset = tensor.file_offset + data.draw(st.integers(0, tensor.nbytes - 1))
    bit = data.draw(st.integers(0, 7))
    bad = tmp_path_factory.mktemp("flip") / "p.bpk"
    raw = bytearray((packs / f"{dtype}.bpk").read_bytes())
    raw[offset] ^= 1 << bit
    bad.write_bytes(raw)
    proc = run_cli("verify", bad, "--against", tiny_ckpt, "-q")
    assert proc.returncode == 1, proc.stderr
    problems = [line for line in proc.stderr.splitlines() if "tensor '" in line]
    assert len(problems) == 1 and f"tensor '{tensor.name}'" in problems[0], proc.stderr


def test_verify_reports_dirty_padding_and_missing_tensors(packs, tiny_ckpt, tmp_path):
    raw = bytearray((packs / "f32.bpk").read_bytes())
    with open_pack(packs / "f32.bpk") as pack:
        second = pack.tensors[1]
        data_start = pack.data_start
    raw[data_start - 1] = 7
    raw[second.file_offset - 1] = 7
    bad = tmp_path / "dirty.bpk"
    bad.write_bytes(raw)
    for against in (["--against", tiny_ckpt], []):  # the container is checked with or without a source
        proc = run_cli("verify", bad, *against)
        assert proc.returncode == 1 and proc.stdout == ""
        assert "padding after the metadata is not zero" in proc.stderr
        assert f"tensor '{second.name}': padding before this tensor is not zero" in proc.stderr
    # A checkpoint with a tensor the pack lacks.
    other = tmp_path / "ckpt"
    shutil.copytree(tiny_ckpt, other)
    index_path = other / "HeartMuLa-oss-3B" / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    shard = index["weight_map"]["muq_linear.bias"]
    proc = run_cli("pack", other, "-o", tmp_path / "less.bpk", "-q", "--no-extras", check_rc=0)
    from safetensors.numpy import save_file

    tensors = load_file(other / "HeartMuLa-oss-3B" / shard)
    tensors["extra.weight"] = np.zeros(2, np.float32)
    save_file(tensors, other / "HeartMuLa-oss-3B" / shard)
    index["weight_map"]["extra.weight"] = shard
    index_path.write_text(json.dumps(index))
    proc = run_cli("verify", tmp_path / "less.bpk", "--against", other)
    assert proc.returncode == 1 and "tensor 'extra.weight': missing from the pack" in proc.stderr


@pytest.mark.parametrize("dtype", ["f32", "bf16"])
@pytest.mark.parametrize("max_shard", ["100MB", "150KB"])
def test_pack_unpack_pack_is_identical(packs, tmp_path, dtype, max_shard):
    original = packs / f"{dtype}.bpk"
    out = tmp_path / "unpacked"
    run_cli("unpack", original, "-o", out, "--max-shard-size", max_shard, "-q", check_rc=0)
    shards = sorted(out.glob("*.safetensors"))
    if max_shard == "100MB":
        assert [p.name for p in shards] == ["model.safetensors"]
    else:
        assert len(shards) > 1 and (out / "model.safetensors.index.json").exists()
        assert all(p.stat().st_size <= 150_000 + 65536 for p in shards)
    # The safetensors library reads what unpack wrote, bit for bit.
    with open_pack(original) as pack:
        seen = {}
        for shard in shards:
            seen.update(load_file(shard))
        assert set(seen) == {t.name for t in pack.tensors}
        for t in pack.tensors:
            assert seen[t.name].tobytes() == bytes(pack.raw_bytes(t.name)), t.name
    repacked = tmp_path / "repacked.bpk"
    run_cli("pack", out, "--any-model", "--dtype", "source", "-o", repacked, "-q", check_rc=0)
    assert repacked.read_bytes() == original.read_bytes()


def test_unpack_keeps_param_ids(tmp_path):
    from safetensors.numpy import save_file

    save_file({"a": np.ones(3, np.float32), "b": np.arange(4, dtype=np.int64)}, str(tmp_path / "m.safetensors"))
    run_cli("manifest", tmp_path / "m.safetensors", "--any-model", "-o", tmp_path / "m.json", check_rc=0)
    doc = json.loads((tmp_path / "m.json").read_text())
    doc["tensors"][0]["param_id"] = 2**63 + 11
    (tmp_path / "m.json").write_text(json.dumps(doc))
    run_cli("pack", "--manifest", tmp_path / "m.json", "-o", tmp_path / "p.bpk", "-q", check_rc=0)
    run_cli("unpack", tmp_path / "p.bpk", "-o", tmp_path / "u", "-q", check_rc=0)
    run_cli("pack", tmp_path / "u", "--any-model", "--dtype", "source", "-o", tmp_path / "q.bpk", "-q", check_rc=0)
    assert (tmp_path / "q.bpk").read_bytes() == (tmp_path / "p.bpk").read_bytes()


def test_unpack_refuses_an_existing_folder(packs, tmp_path):
    out = tmp_path / "u"
    out.mkdir()
    (out / "keep").write_text("x")
    assert_clean_failure(run_cli("unpack", packs / "f32.bpk", "-o", out), str(out), "--force")
    assert [p.name for p in out.iterdir()] == ["keep"]
    assert run_cli("unpack", packs / "f32.bpk", "-o", out, "--max-shard-size", "lots").returncode == 2


def test_verify_against_the_other_model_says_so_in_one_line(tiny_root, tmp_path):
    run_cli("pack", tiny_root, "-o", f"{tmp_path}/", "-q", check_rc=0)
    proc = run_cli("verify", tmp_path / "heartcodec.bpk", "--against", tiny_root, "--subdir", "HeartMuLa-oss-3B")
    assert_clean_failure(proc, "heartcodec.bpk", "is a HeartCodec pack", "holds HeartMuLa")
