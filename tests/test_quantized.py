"""Q8 packs: Burn 0.22's Q8S block quantization (one i8 per value, one F32 scale per block along the
last dimension), from the CLI and the manifest down to the bytes, and everything that reads packs.

The expected values come from a hand-written table (Burn's own per-block example and edge rules)
and from the numpy quantizer in `_packfile`, which is written apart from the Rust core's; Burn
itself checks both in test_burn_compat.py."""

import json
import math
import re
import struct

import cbor2
import ml_dtypes
import numpy as np
import pytest
from conftest import rewrite_tensor, run_cli
from heartmula_burn import open_pack, safe_open
from heartmula_burn._packfile import dequantize, quantize
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.numpy import load_file, save_file

# Upstream's Linear weights, written out here rather than read from the preset.
LINEAR_WEIGHT = re.compile(
    r"(backbone|decoder)\.layers\.\d+\.(attn\.(q|k|v|output)_proj|mlp\.w[123])\.weight"
    r"|projection\.weight|codebook0_head\.weight"
)


def test_numpy_quantizer_matches_burns_worked_example_and_rules():
    # burn-flex 0.22.1 test_per_block_quantize_dequantize: scales 6/254 and 14/254.
    values, scales = quantize(np.arange(8, dtype=np.float32).reshape(1, 8), 4)
    assert scales.tolist() == [np.float32(6) / np.float32(254), np.float32(14) / np.float32(254)]
    assert values.tolist() == [[0, 42, 85, 127, 73, 91, 109, 127]]
    # Zeros: the smallest normal float as the scale. Ties: away from zero. A NaN or an infinity:
    # a NaN or infinite scale, replaced by the smallest normal float: NaN and zeros store 0, every
    # other value saturates.
    values, scales = quantize(
        np.array([[0, -0.0, 0, 0], [1, 0.5, -0.5, 0.25], [np.nan, 1, -0.5, 0], [np.inf, 1e-30, -2, 0]], np.float32), 4
    )
    tiny = np.finfo(np.float32).tiny
    assert scales.tolist() == [tiny, np.float32(2) / np.float32(254), tiny, tiny]
    assert values.tolist() == [[0, 0, 0, 0], [127, 64, -64, 32], [0, 127, -127, 0], [127, 127, -127, 0]]


def test_dequantize_is_scale_times_value():
    values = np.array([[127, -64, 0, 1]], np.int8)
    scales = np.array([0.5, 2.0], np.float32)
    assert dequantize(values, scales, 2).tolist() == [[63.5, -32.0, 0.0, 2.0]]


# cubecl-common 0.11's QuantStore as serde writes it, by hand: a unit variant as its name, a newtype
# variant as a one-entry map.
STORES = {"": {"PackedU32": 0}, "_NATIVE": "Native"}


def descriptors(pack_path):
    """The pack's tensor descriptors, decoded with cbor2 from the bytes (not through our reader)."""
    raw = pack_path.read_bytes()
    assert raw[:4] == b"NRUB"
    (size,) = struct.unpack_from("<I", raw, 6)
    return cbor2.loads(raw[10 : 10 + size])["tensors"]


def q8_scheme(block, store):
    """Burn's `QFloat` descriptor for Q8S in `block`s, F32 scales, written out by hand."""
    return {
        "QFloat": {
            "value": "Q8S",
            "store": STORES[store],
            "mode": "Symmetric",
            "tensor": None,
            "block": {"size": {"storage": [block, 1, 1, 1, 1], "len": int(block != 1)}, "dtype": "F32"},
        }
    }


def q8_manifest_pack(tmp_path, arrays, blocks, name="q", stores=None):
    """Packs `arrays` through a manifest whose tensors named in `blocks` are Q8S in those blocks
    (stored as `stores` says: "" for PackedU32(0), "_NATIVE" for Native; default packed)."""
    src = tmp_path / f"{name}.safetensors"
    save_file(arrays, str(src))
    manifest = tmp_path / f"{name}.json"
    run_cli("manifest", src, "--any-model", "--dtype", "source", "-o", manifest, check_rc=0)
    doc = json.loads(manifest.read_text())
    for t in doc["tensors"]:
        if t["name"] in blocks:
            t["dtype"] = f"Q8S_B{blocks[t['name']]}{(stores or {}).get(t['name'], '')}"
    manifest.write_text(json.dumps(doc))
    out = tmp_path / f"{name}.bpk"
    run_cli("pack", "--manifest", manifest, "-o", out, "-q", check_rc=0)
    return src, manifest, out


@st.composite
def quantizable(draw):
    """Matrices of float32/bfloat16/float16 from raw bytes (so NaN, infinities and subnormals
    come up), each with a block that divides its last dimension and a store (PackedU32(0): the last
    dimension a multiple of 4 too)."""
    count = draw(st.integers(1, 4))
    arrays, blocks, stores = {}, {}, {}
    for i in range(count):
        dtype = draw(st.sampled_from([np.dtype("<f4"), np.dtype(ml_dtypes.bfloat16), np.dtype("<f2")]))
        block = draw(st.sampled_from([1, 2, 5, 16, 32, 255]))
        store = draw(st.sampled_from(sorted(STORES)))
        rows, per_row = draw(st.integers(0, 3)), draw(st.integers(1, 3))
        if store == "":
            per_row *= 4 // math.gcd(block, 4)
        stores[f"t{i}"] = store
        n = rows * block * per_row
        raw = draw(st.binary(min_size=n * dtype.itemsize, max_size=n * dtype.itemsize))
        arrays[f"t{i}"] = np.frombuffer(raw, np.uint8).view(dtype).reshape(rows, block * per_row).copy()
        blocks[f"t{i}"] = block
    return arrays, blocks, stores


@settings(max_examples=30, deadline=None)
@given(quantizable())
def test_quantized_packs_round_trip_byte_for_byte(tmp_path_factory, case):
    arrays, blocks, stores = case
    tmp = tmp_path_factory.mktemp("q8")
    _src, manifest, out = q8_manifest_pack(tmp, arrays, blocks, stores=stores)
    described = descriptors(out)
    with open_pack(out) as pack:
        for name, array in arrays.items():
            assert described[name]["dtype"] == q8_scheme(blocks[name], stores[name]), name
            assert pack.info(name).dtype == f"Q8S_B{blocks[name]}{stores[name]}"
            values, scales = quantize(array.astype(np.float32), blocks[name])
            assert bytes(pack.raw_bytes(name)) == values.tobytes() + scales.tobytes(), name
            stored_values, stored_scales = pack.quantized(name)
            assert np.array_equal(stored_values, values)
            assert stored_scales.shape == (*array.shape[:-1], array.shape[-1] // blocks[name])
            np.testing.assert_array_equal(pack.get_tensor(name), dequantize(values, scales, blocks[name]))
            assert pack.get_slice(name).get_dtype() == "F32"
    assert run_cli("verify", out, "--against", manifest).returncode == 0
    back = tmp / "back"
    run_cli("unpack", out, "-o", back, check_rc=0)
    unpacked = load_file(back / "model.safetensors")
    for name, array in arrays.items():
        values, scales = quantize(array.astype(np.float32), blocks[name])
        np.testing.assert_array_equal(unpacked[name], dequantize(values, scales, blocks[name]))


def test_the_two_stores_hold_the_same_bytes_and_a_pack_converts_between_them(tmp_path):
    """Q8S under PackedU32(0) and under Native: byte for byte the same tensor data, only the
    descriptor differs; a pack of one store packs into the other by copying (verify passes)."""
    rng = np.random.default_rng(3)
    arrays = {"w": (rng.standard_normal((8, 64)) * 0.02).astype("<f4"), "b": rng.standard_normal(8).astype("<f4")}
    _src, _manifest, packed = q8_manifest_pack(tmp_path, arrays, {"w": 32}, name="packed")
    _src, _manifest, native = q8_manifest_pack(tmp_path, arrays, {"w": 32}, name="native", stores={"w": "_NATIVE"})
    assert descriptors(packed)["w"]["dtype"] == q8_scheme(32, "")
    assert descriptors(native)["w"]["dtype"] == q8_scheme(32, "_NATIVE")
    with open_pack(packed) as p, open_pack(native) as n:
        assert bytes(p.raw_bytes("w")) == bytes(n.raw_bytes("w"))
        assert p.info("w").file_offset == n.info("w").file_offset
    values, scales = quantize(arrays["w"], 32)
    for path in (packed, native):  # read as safetensors files are, dequantized as Burn reads them
        with safe_open(path) as f:
            np.testing.assert_array_equal(f.get_tensor("w"), dequantize(values, scales, 32))
            assert f.get_slice("w").get_dtype() == "F32"
    # Native -> PackedU32(0) from the pack itself, through a manifest whose sources are its tensors.
    manifest = tmp_path / "repack.json"
    doc = json.loads((tmp_path / "native.json").read_text())
    for t in doc["tensors"]:
        t["source"]["file"] = "native.bpk"
        t["source_dtype"] = t["dtype"]
        if t["name"] == "w":
            assert (t["source_dtype"], t["dtype"]) == ("Q8S_B32_NATIVE", "Q8S_B32_NATIVE")
            t["dtype"] = "Q8S_B32"
    manifest.write_text(json.dumps(doc))
    repacked = tmp_path / "repacked.bpk"
    run_cli("pack", "--manifest", manifest, "-o", repacked, "-q", check_rc=0)
    assert descriptors(repacked)["w"]["dtype"] == q8_scheme(32, "")
    with open_pack(repacked) as r, open_pack(packed) as p:
        assert bytes(r.raw_bytes("w")) == bytes(p.raw_bytes("w"))
    assert run_cli("verify", repacked, "--against", manifest).returncode == 0
    # verify is exact on the store: the Native pack is not the PackedU32(0) pack the manifest asks for.
    proc = run_cli("verify", native, "--against", manifest)
    assert proc.returncode == 1 and "dtype Q8S_B32_NATIVE, expected Q8S_B32" in proc.stdout + proc.stderr


def test_verify_finds_one_changed_value_or_scale(tmp_path):
    rng = np.random.default_rng(5)
    arrays = {"w": rng.standard_normal((4, 64)).astype("<f4")}
    _src, manifest, out = q8_manifest_pack(tmp_path, arrays, {"w": 32})
    with open_pack(out) as pack:
        start = pack.info("w").file_offset
    data = bytearray(out.read_bytes())
    for at, expected in ((start + 70, "element 70 is not the exact quantization of"),
                         (start + 4 * 64 + 4 * 5 + 1, "the scale of block 5 (elements from 160) is not the exact")):  # fmt: skip
        changed = bytearray(data)
        changed[at] ^= 0x01
        out.write_bytes(changed)
        proc = run_cli("verify", out, "--against", manifest)
        assert proc.returncode == 1 and expected in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    out.write_bytes(data)
    assert run_cli("verify", out, "--against", manifest).returncode == 0


def test_pack_q8_quantizes_exactly_the_linear_weights_and_keeps_the_codec_f32(tiny_root, tmp_path):
    proc = run_cli("pack", tiny_root, "-o", f"{tmp_path}/", "--dtype", "q8", check_rc=0)
    # The tiny decoder is 16 wide: its Linear weights do not divide into blocks of 32.
    assert re.search(
        r"heartmula\.bpk: 21 tensor\(s\) stay F32, their last dimension not a multiple of the block 32", proc.stderr
    )
    assert "heartcodec.bpk: packed in F32, not Q8" in proc.stderr
    with open_pack(tmp_path / "heartmula.bpk") as pack:
        quantized = {t.name for t in pack.tensors if t.dtype == "Q8S_B32"}
        want = {t.name for t in pack.tensors if LINEAR_WEIGHT.fullmatch(t.name) and t.shape[-1] % 32 == 0}
        assert quantized == want and len(want) == 28 * 7 + 2  # the backbone's Linears, projection, codebook0_head
        assert {t.dtype for t in pack.tensors} - {"Q8S_B32"} == {"F32"}
        assert pack.metadata["dtype"] == "F32,Q8S_B32"
        # Every quantized tensor is n bytes of values and n/32 scales.
        for t in pack.tensors:
            n = math.prod(t.shape)
            assert t.nbytes == (n + n // 32 * 4 if t.name in quantized else 4 * n), t.name
    with open_pack(tmp_path / "heartcodec.bpk") as codec:
        assert {t.dtype for t in codec.tensors} == {"F32"}
    verify = run_cli("verify", tmp_path / "heartmula.bpk", "--against", tiny_root)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    stores = [d["dtype"]["QFloat"]["store"] for d in descriptors(tmp_path / "heartmula.bpk").values() if d["dtype"] != "F32"]  # fmt: skip
    assert len(stores) == len(want) and all(store == {"PackedU32": 0} for store in stores)
    shown = run_cli("inspect", tmp_path / "heartmula.bpk", check_rc=0).stdout
    assert (
        "Q8S_B32: Burn QFloat {Q8S, PackedU32(0), Symmetric, block [32] F32}: one i8 per value (four to a u32" in shown
    )
    assert "1.125 bytes per parameter" in shown
    summary = json.loads(run_cli("inspect", tmp_path / "heartmula.bpk", "--json", check_rc=0).stdout)
    assert summary["dtypes"]["Q8S_B32"]["tensors"] == len(want)


def test_block_16_quantizes_the_decoder_too(tiny_ckpt, tmp_path):
    run_cli("pack", tiny_ckpt, "-o", tmp_path / "lm.bpk", "--dtype", "q8", "--q-block", "16", "-q", check_rc=0)
    with open_pack(tmp_path / "lm.bpk") as pack:
        assert sum(t.dtype == "Q8S_B16" for t in pack.tensors) == 28 * 7 + 3 * 7 + 2


def test_q8_native_writes_the_same_pack_under_the_native_descriptor(tiny_ckpt, tmp_path):
    run_cli("pack", tiny_ckpt, "-o", tmp_path / "packed.bpk", "--dtype", "q8", "-q", check_rc=0)
    run_cli("pack", tiny_ckpt, "-o", tmp_path / "native.bpk", "--dtype", "q8-native", "-q", check_rc=0)
    packed, native = descriptors(tmp_path / "packed.bpk"), descriptors(tmp_path / "native.bpk")
    assert packed.keys() == native.keys()
    quantized = [name for name, d in packed.items() if "QFloat" in d["dtype"]]
    assert len(quantized) == 28 * 7 + 2
    for name, d in packed.items():
        if name in quantized:
            assert d["dtype"] == q8_scheme(32, "") and native[name]["dtype"] == q8_scheme(32, "_NATIVE"), name
        else:
            assert d == native[name], name
    with open_pack(tmp_path / "packed.bpk") as p, open_pack(tmp_path / "native.bpk") as n:
        for name in packed:
            assert bytes(p.raw_bytes(name)) == bytes(n.raw_bytes(name)), name
        assert n.metadata["dtype"] == "F32,Q8S_B32_NATIVE"
    shown = run_cli("inspect", tmp_path / "native.bpk", check_rc=0).stdout
    assert "Q8S_B32_NATIVE: Burn QFloat {Q8S, Native, Symmetric, block [32] F32}: one i8 per value (Flex runs" in shown
    verify = run_cli("verify", tmp_path / "native.bpk", "--against", tiny_ckpt)
    assert verify.returncode == 0, verify.stdout + verify.stderr


def pack_one_tensor_as(tmp_path, array, dtype):
    """Packs `array` as tensor "w" through a manifest that asks for `dtype`; the CLI's result."""
    src = tmp_path / "s.safetensors"
    save_file({"w": array}, str(src))
    manifest = tmp_path / "m.json"
    run_cli("manifest", src, "--any-model", "-o", manifest, check_rc=0)
    doc = json.loads(manifest.read_text())
    doc["tensors"][0]["dtype"] = dtype
    manifest.write_text(json.dumps(doc))
    return run_cli("pack", "--manifest", manifest, "-o", tmp_path / "p.bpk")


def test_a_packed_store_needs_the_last_dimension_in_whole_words(tmp_path):
    """Block 2 divides a last dimension of 6, four values to a u32 do not: PackedU32(0) is refused
    before a byte is written, naming the tensor; Native takes it."""
    arrays = {"w": np.arange(12, dtype="<f4").reshape(2, 6)}
    proc = pack_one_tensor_as(tmp_path, arrays["w"], "Q8S_B2")
    assert proc.returncode == 1, proc.stderr
    assert (
        "tensor 'w' cannot be Q8S_B2: its last dimension (6) is not a multiple of 4, as PackedU32(0) needs"
        in proc.stderr
    )
    assert "Traceback" not in proc.stderr and not (tmp_path / "p.bpk").exists()
    assert not list(tmp_path.glob(".*partial*"))
    _src, _manifest, out = q8_manifest_pack(tmp_path, arrays, {"w": 2}, name="n", stores={"w": "_NATIVE"})
    assert descriptors(out)["w"]["dtype"] == q8_scheme(2, "_NATIVE")


@pytest.mark.parametrize(
    ("args", "rc", "needle"),
    [
        (["--dtype", "q8", "--q-block", "0"], 2, "a block is 1 to 255 values"),
        (["--dtype", "q8", "--q-block", "256"], 2, "a block is 1 to 255 values"),
        (["--dtype", "q8", "--burn-version", "0.21"], 2, "Burn 0.22 and later read"),
        (["--dtype", "q8", "--any-model"], 1, "a model's preset says which tensors are quantized"),
        (["--dtype", "q8-native", "--burn-version", "0.21"], 2, "Burn 0.22 and later read"),
    ],
)
def test_q8_usage_errors_are_one_line(tiny_ckpt, tmp_path, args, rc, needle):
    proc = run_cli("pack", tiny_ckpt, "-o", tmp_path / "lm.bpk", *args)
    assert proc.returncode == rc and needle in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "lm.bpk").exists()


def test_a_quantized_manifest_refuses_an_older_burn_release(tmp_path):
    arrays = {"w": np.ones((2, 32), "<f4")}
    _src, manifest, _out = q8_manifest_pack(tmp_path, arrays, {"w": 32})
    proc = run_cli("pack", "--manifest", manifest, "-o", tmp_path / "old.bpk", "--burn-version", "0.21")
    assert proc.returncode == 2 and "quantized tensors are written for Burn 0.22" in proc.stderr, proc.stderr
    assert not (tmp_path / "old.bpk").exists()


def test_a_block_that_does_not_divide_a_manifest_tensor_is_refused_naming_it(tmp_path):
    proc = pack_one_tensor_as(tmp_path, np.ones((2, 48), "<f4"), "Q8S_B32")
    assert proc.returncode == 1, proc.stderr
    assert "tensor 'w' cannot be Q8S_B32: its last dimension (48) is not a whole number of blocks of 32" in proc.stderr
    assert not (tmp_path / "p.bpk").exists()


def test_export_raw_offers_no_quantized_dtype(tiny_root, tmp_path):
    proc = run_cli("export-raw", tiny_root, "-o", tmp_path / "raw", "--dtype", "q8")
    assert proc.returncode == 2 and "invalid choice" in proc.stderr


def test_unpack_says_quantized_tensors_come_out_as_f32(tiny_ckpt, tmp_path):
    run_cli("pack", tiny_ckpt, "-o", tmp_path / "lm.bpk", "--dtype", "q8", "-q", check_rc=0)
    proc = run_cli("unpack", tmp_path / "lm.bpk", "-o", tmp_path / "back", check_rc=0)
    assert "198 quantized tensor(s) written dequantized to F32" in proc.stderr
    meta = load_file(tmp_path / "back" / "model.safetensors")
    assert {str(a.dtype) for a in meta.values()} == {"float32"}


@pytest.mark.parametrize("dtype", ["q8", "q8-native"])
def test_sanity_against_the_reference_is_exact_and_a_changed_value_fails(tiny_ckpt, tmp_path, dtype):
    pytest.importorskip("torch")
    pack = tmp_path / "lm.bpk"
    run_cli("pack", tiny_ckpt, "-o", pack, "--dtype", dtype, "-q", check_rc=0)
    good = run_cli("sanity", pack, "--reference", tiny_ckpt, "--device", "cpu", "--json")
    assert good.returncode == 0, good.stdout + good.stderr
    with open_pack(pack) as p:
        t = p.info("backbone.layers.0.mlp.w2.weight")
    data = bytearray(pack.read_bytes())
    data[t.file_offset + 3] = (data[t.file_offset + 3] + 1) % 256  # one i8 value one step off
    pack.write_bytes(data)
    bad = run_cli("sanity", pack, "--reference", tiny_ckpt, "--device", "cpu")
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert re.search(r"FAIL\s+reference cast to the pack's dtypes \(198 tensors\): h_last", bad.stdout + bad.stderr)


def test_sanity_judges_the_quantization_loss_and_a_transposed_weight_fails_it(tiny_ckpt, tmp_path):
    """Against the unquantized reference, each float output of the q8 forward is judged by its
    cosine similarity (the bound measured on the full-size shapes); the greedy codes are reported."""
    pytest.importorskip("torch")
    from heartmula_burn._presets.heartmula.sanity import HeartMuLaRunner

    label = "vs the uncast reference (quantized: cosine >= 0.999 judged): "
    pack = tmp_path / "lm.bpk"
    run_cli("pack", tiny_ckpt, "-o", pack, "--dtype", "q8", "-q", check_rc=0)
    good = run_cli("sanity", pack, "--reference", tiny_ckpt, "--device", "cpu", "--json")
    assert good.returncode == 0, good.stdout + good.stderr
    report = json.loads(good.stdout)
    judged = {c["name"].removeprefix(label): c["ok"] for c in report["checks"] if c["name"].startswith(label)}
    floats = [n for n in HeartMuLaRunner.compared if n != "greedy_codes"]
    assert judged == {**dict.fromkeys(floats, True), "greedy_codes": None}
    cosines = [report["figures"][f"{label}{n}: cosine"] for n in floats]
    assert 0.999 <= min(cosines) and max(cosines) < 1.0  # the quantization shows, within the bound

    # Negative control: a square weight transposed in the pack's source, the reference intact.
    broken = rewrite_tensor(tiny_ckpt, "backbone.layers.3.attn.output_proj.weight", lambda a: a.T)
    run_cli("pack", broken, "-o", tmp_path / "t.bpk", "--dtype", "q8", "-q", check_rc=0)
    bad = run_cli("sanity", tmp_path / "t.bpk", "--reference", tiny_ckpt, "--device", "cpu", "--json")
    assert bad.returncode == 1, bad.stdout + bad.stderr
    failed = {c["name"] for c in json.loads(bad.stdout)["checks"] if c["ok"] is False}
    assert {f"{label}h_last", f"{label}c0_logits"} <= failed


def test_sanity_weights_dequantize_on_read_as_burn_reads_them(tiny_ckpt, tmp_path):
    """sanity holds quantized weights as stored and dequantizes them on each read: the values are
    the numpy dequantization of the stored ones, bit for bit, in every tensor's shape."""
    torch = pytest.importorskip("torch")
    from heartmula_burn._weights import PackArrays, load_weights

    pack = tmp_path / "lm.bpk"
    run_cli("pack", tiny_ckpt, "-o", pack, "--dtype", "q8", "--q-block", "16", "-q", check_rc=0)
    arrays = PackArrays(pack)
    try:
        names = [t.name for t in arrays.pack.tensors]
        weights = load_weights(arrays, names, torch.device("cpu"))
        quantized = [n for n in names if LINEAR_WEIGHT.fullmatch(n)]
        assert quantized and len(weights) == len(names)
        for name in quantized:
            values, scales = arrays.quantized(name)
            expected = dequantize(values, scales, 16)
            assert weights[name].dtype == torch.float32
            assert weights[name].numpy().tobytes() == expected.tobytes(), name
    finally:
        arrays.close()
