"""Burn compatibility, shown by Burn itself (rust/burn-compat builds against burn-store 0.21.0,
0.22.1 and the 0.23.0-pre.1 pre-release, one release per build).

This module writes fixtures (packs made by our CLI plus the tensors they must hold), runs the Rust
checks 1-3 over them, then does check 4 here: the packs Burn's writer produced read back through
`open_pack` with the same names, dtypes, shapes, bytes, param_ids and metadata.

Building the Burn crates takes minutes, so these run only with HEARTMULA_BURN_COMPAT=1
(tests/run.sh, and so CI, sets it); the pre-releases also need HEARTMULA_BURN_PRERELEASE=1, and
Burn 0.22.1's wgpu backend (the runtime's default path, run on whatever Vulkan device there is:
Mesa's lavapipe on a machine without a GPU) HEARTMULA_BURN_WGPU=1."""

import json
import os
import random
import re
import shutil
import subprocess

import ml_dtypes
import numpy as np
import pytest
from conftest import REPO, run_cli
from heartmula_burn import open_pack
from heartmula_burn._packfile import dequantize, quantize
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.numpy import load_file, save_file
from test_roundtrip import tensor_sets

COMPAT = REPO / "rust" / "burn-compat"

pytestmark = pytest.mark.skipif(
    os.environ.get("HEARTMULA_BURN_COMPAT") != "1",
    reason="set HEARTMULA_BURN_COMPAT=1 to build the Burn crates and run the compatibility checks",
)


def source_of(ckpt):
    tensors = {}
    for shard in sorted((ckpt / "HeartMuLa-oss-3B").glob("*.safetensors")):
        tensors.update(load_file(shard))
    return tensors


def pack_via_manifest(fix, name, arrays, order, param_ids, metadata, quantize=None, native=()):
    """Writes the arrays as a shard, edits the manifest (order, param_ids, metadata, and the
    tensors `quantize` names: Q8S in blocks of that many, stored Native where `native` names
    them, else PackedU32(0)), packs it."""
    src = fix / f"{name}.src.safetensors"
    save_file(arrays, str(src))
    manifest = fix / f"{name}.manifest.json"
    run_cli("manifest", src, "--any-model", "--dtype", "source", "-o", manifest, check_rc=0)
    doc = json.loads(manifest.read_text())
    by_name = {t["name"]: t for t in doc["tensors"]}
    doc["tensors"] = [by_name[n] for n in order]
    for t in doc["tensors"]:
        if t["name"] in param_ids:
            t["param_id"] = param_ids[t["name"]]
        if t["name"] in (quantize or {}):
            t["dtype"] = f"Q8S_B{quantize[t['name']]}" + ("_NATIVE" if t["name"] in native else "")
    doc["metadata"] = metadata
    manifest.write_text(json.dumps(doc))
    run_cli("pack", "--manifest", manifest, "-o", fix / f"{name}.bpk", "-q", check_rc=0)
    shutil.copy(src, fix / f"{name}.expected.safetensors")


def edge_case(fix):
    rng = np.random.default_rng(7)
    arrays = {
        "z.last_in_key_order": rng.standard_normal((3, 2)).astype("<f4"),
        "B.upper": rng.standard_normal(5).astype("<f8"),
        "a.lower": rng.standard_normal((2, 2)).astype("<f2"),
        "layers.10.w": rng.standard_normal(3).astype(ml_dtypes.bfloat16),
        "layers.2.w": rng.integers(-9, 9, (2, 3)).astype("<i8"),
        "scalar": np.array(3, "<i4"),
        "empty": np.zeros((0, 4), "<f4"),
        "i16": np.array([-3, 7], "<i2"),
        "i8": np.array([-1, 1, 2], "i1"),
        "u64": np.array([2**63 + 5], "<u8"),
        "u32": np.array([1, 2], "<u4"),
        "u16": np.array([65535], "<u2"),
        "u8": np.array([0, 255], "u1"),
        "mask": np.array([True, False, True]),
        "ünïcode.ß": np.ones(1, "<f4"),
    }
    order = list(arrays)  # write order differs from the byte order the CBOR map sorts keys in
    param_ids = {n: random.Random(n).getrandbits(64) for n in order[::2]}
    param_ids["scalar"] = 0
    metadata = {f"key{i:02d}": f"value {i}" for i in range(40)} | {"format": "burnpack", "Z": "", "é": "ü"}
    pack_via_manifest(fix, "edge", arrays, order, param_ids, metadata)
    return {"name": "edge", "order": order, "param_ids": param_ids, "metadata": metadata}


def hypothesis_cases(fix):
    cases = []

    @settings(max_examples=4, derandomize=True, database=None, deadline=None)
    @given(tensor_sets())
    def export(case):
        tensors, _ = case
        name = f"hyp{len(cases)}"
        arrays = {n: a for n, (_d, a) in tensors.items()}
        order = list(arrays)
        rnd = random.Random(len(cases))
        param_ids = {n: rnd.getrandbits(64) for n in order if rnd.random() < 0.7}
        metadata = {f"m{rnd.getrandbits(16)}": str(rnd.random()) for _ in range(rnd.randint(0, 6))}
        pack_via_manifest(fix, name, arrays, order, param_ids, metadata)
        cases.append({"name": name, "order": order, "param_ids": param_ids, "metadata": metadata})

    export()
    return cases


def heartmula_cases(fix, ckpt):
    source = source_of(ckpt)
    shutil.copy(ckpt / "HeartMuLa-oss-3B" / "config.json", fix / "config.json")
    cases = []
    for dtype, cast in (("f32", None), ("bf16", ml_dtypes.bfloat16)):
        name = f"tiny_{dtype}"
        run_cli("pack", ckpt, "-o", fix / f"{name}.bpk", "--dtype", dtype, "-q", "--no-extras", check_rc=0)
        expected = {n: (a.astype(cast) if cast else a) for n, a in source.items()}
        save_file(expected, str(fix / f"{name}.expected.safetensors"))
        with open_pack(fix / f"{name}.bpk") as pack:
            order = [t.name for t in pack.tensors]
            metadata = dict(pack.metadata)
        cases.append(
            {"name": name, "order": order, "param_ids": {}, "metadata": metadata, "heartmula_config": "config.json"}
        )
    return cases


# Upstream's Linear weights, written out here (not read from the preset): the tensors a q8 pack quantizes.
LINEAR_WEIGHT = re.compile(
    r"(backbone|decoder)\.layers\.\d+\.(attn\.(q|k|v|output)_proj|mlp\.w[123])\.weight|projection\.weight|codebook0_head\.weight"
)


def q8_cases(fix, ckpt):
    """The tiny HeartMuLa packed with --dtype q8 (PackedU32(0)) at blocks 32 (the tiny decoder's
    width 16 does not divide: those stay F32) and 16 (every Linear weight divides), and with
    --dtype q8-native (Native) at block 32. Burn quantizes the same source values itself; the
    pack must be what its writer makes of them."""
    source = source_of(ckpt)
    cases = []
    for block, dtype, name in ((32, "q8", "tiny_q8_b32"), (16, "q8", "tiny_q8_b16"), (32, "q8-native", "tiny_q8n_b32")):
        run_cli(
            "pack",
            ckpt,
            "-o",
            fix / f"{name}.bpk",
            "--dtype",
            dtype,
            "--q-block",
            block,
            "-q",
            "--no-extras",
            check_rc=0,
        )
        save_file(source, str(fix / f"{name}.expected.safetensors"))
        quantize = {n: block for n, a in source.items() if LINEAR_WEIGHT.fullmatch(n) and a.shape[-1] % block == 0}
        with open_pack(fix / f"{name}.bpk") as pack:
            assert {t.name for t in pack.tensors if t.dtype.startswith("Q8S")} == set(quantize), name
            order = [t.name for t in pack.tensors]
            metadata = dict(pack.metadata)
        cases.append(
            {
                "name": name,
                "order": order,
                "param_ids": {},
                "metadata": metadata,
                "heartmula_config": "config.json",
                "quantize": quantize,
                "native": sorted(quantize) if dtype == "q8-native" else [],
            }
        )
    assert len(cases[0]["quantize"]) < len(cases[1]["quantize"]) == 28 * 7 + 3 * 7 + 2
    return cases


def q8_edge_case(fix):
    """Values where a quantizer's rules show: all-zero blocks, signed zeros, NaN, infinities, the
    largest floats (2 * max overflows), subnormals, exact ties, one outlier per block; from F32,
    BF16, F16 and F64 sources, blocks of 1 to 255."""
    rng = np.random.default_rng(23)
    tiny = np.float32(2.0**-140)
    special = np.array(
        [0.0, -0.0, np.nan, np.inf, -np.inf, 3.4e38, -3.4e38, tiny, -tiny, 1e-45, 0.5, -0.5, 1.5, 127.5, 1e30, -7.0],
        "<f4",
    )
    arrays = {
        "zeros": np.zeros((4, 64), "<f4"),
        "nan_among_values": np.where(np.arange(64) % 5 == 0, np.nan, rng.standard_normal(64))
        .astype("<f4")
        .reshape(2, 32),
        "special": np.resize(special, (6, 32)).astype("<f4"),
        "ties": (np.arange(-64, 64, dtype="<f4") / np.float32(2)).reshape(4, 32),
        "subnormal_block": np.full((2, 16), tiny, "<f4") * np.arange(1, 33, dtype="<f4").reshape(2, 16),
        "outlier": np.where(rng.random((8, 48)) < 0.05, 1e4, rng.standard_normal((8, 48))).astype("<f4"),
        "bf16_source": rng.standard_normal((3, 96)).astype(ml_dtypes.bfloat16),
        "f16_source": rng.standard_normal((5, 24)).astype("<f2"),
        "f64_source": rng.standard_normal((2, 40)).astype("<f8"),
        "block_one": rng.standard_normal((3, 7)).astype("<f4"),
        "block_255": rng.standard_normal((2, 510)).astype("<f4"),
        "kept_f32": rng.standard_normal((2, 3)).astype("<f4"),
    }
    blocks = {
        "zeros": 32, "nan_among_values": 32, "special": 16, "ties": 32, "subnormal_block": 16, "outlier": 48,
        "bf16_source": 32, "f16_source": 8, "f64_source": 20, "block_one": 1, "block_255": 255,
    }  # fmt: skip
    # Native: the last dimensions 7 and 510 are no whole u32 words; "special" and "f16_source" as well,
    # so that both stores meet the edge values.
    native = ["block_one", "block_255", "special", "f16_source"]
    order = list(arrays)
    pack_via_manifest(fix, "q8_edge", arrays, order, {}, {"format": "burnpack"}, quantize=blocks, native=native)
    return {
        "name": "q8_edge",
        "order": order,
        "param_ids": {},
        "metadata": {"format": "burnpack"},
        "quantize": blocks,
        "native": native,
    }


def q8_hypothesis_cases(fix):
    cases = []

    @settings(max_examples=4, derandomize=True, database=None, deadline=None)
    @given(
        st.lists(
            st.tuples(
                st.integers(1, 4),
                st.sampled_from([1, 2, 3, 16, 32, 64]),
                st.integers(1, 3),
                st.sampled_from(["<f4", "<f2"]),
            ),
            min_size=1,
            max_size=4,
        ),
        st.integers(0, 2**32 - 1),
    )
    def export(shapes, seed):
        rng = np.random.default_rng(seed)
        arrays, blocks, native = {}, {}, []
        for i, (rows, block, per_row, dtype) in enumerate(shapes):
            scale = 10.0 ** rng.integers(-30, 30)
            with np.errstate(over="ignore"):  # float16 overflows to infinities: an edge case too
                arrays[f"t{i}"] = (rng.standard_normal((rows, block * per_row)) * scale).astype(dtype)
            blocks[f"t{i}"] = block
            if (block * per_row) % 4 or i % 2:  # Native where u32 words do not fit, and every other one
                native.append(f"t{i}")
        name = f"q8hyp{len(cases)}"
        order = list(arrays)
        pack_via_manifest(fix, name, arrays, order, {}, {}, quantize=blocks, native=native)
        cases.append(
            {"name": name, "order": order, "param_ids": {}, "metadata": {}, "quantize": blocks, "native": native}
        )

    export()
    return cases


def codec_case(fix, root):
    """The tiny HeartCodec pack (all 818 upstream names, weight norm unfolded, VQ buffers, F32)."""
    source = {}
    for shard in sorted((root / "HeartCodec-oss").glob("*.safetensors")):
        source.update(load_file(shard))
    run_cli("pack", root / "HeartCodec-oss", "-o", fix / "tiny_codec.bpk", "-q", check_rc=0)
    save_file(source, str(fix / "tiny_codec.expected.safetensors"))
    with open_pack(fix / "tiny_codec.bpk") as pack:
        assert len(pack) == 818 and {t.dtype for t in pack.tensors} == {"F32"}
        return {
            "name": "tiny_codec",
            "order": [t.name for t in pack.tensors],
            "param_ids": {},
            "metadata": dict(pack.metadata),
        }


# Burn release -> crate feature of rust/burn-compat. 0.21 is what HeartMuLa runtimes use today;
# 0.22 is the newest stable release.
BURN_VERSIONS = {"0.21": "burn-021", "0.22": "burn-022"}
# Pre-releases, spelled out in full so that the test ids say so. Their builds are as long as a
# release's (0.23.0-pre.1: 14 minutes from scratch on 2 cores), so they run only when asked for
# with HEARTMULA_BURN_PRERELEASE=1.
BURN_PRERELEASES = {"0.23.0-pre.1": "burn-023"}
if os.environ.get("HEARTMULA_BURN_PRERELEASE") == "1":
    BURN_VERSIONS |= BURN_PRERELEASES
# 0.22.1 with its wgpu backend beside Flex: q8 tensors stored PackedU32(0) are quantized by Burn on
# wgpu, and the HeartMuLa-shaped module loads and runs there. It needs a Vulkan device (Mesa's
# lavapipe: Debian's mesa-vulkan-drivers) and a build of wgpu (about 25 minutes here), so it runs
# only with HEARTMULA_BURN_WGPU=1.
BURN_WGPU = {"0.22-wgpu": "burn-022,wgpu"}
if os.environ.get("HEARTMULA_BURN_WGPU") == "1":
    BURN_VERSIONS |= BURN_WGPU


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory, tiny_ckpt, tiny_root):
    fix = tmp_path_factory.mktemp("compat")
    cases = heartmula_cases(fix, tiny_ckpt) + [codec_case(fix, tiny_root), edge_case(fix)] + hypothesis_cases(fix)
    cases += q8_cases(fix, tiny_ckpt) + [q8_edge_case(fix)] + q8_hypothesis_cases(fix)
    for c in cases:
        c["pack"] = f"{c['name']}.bpk"
        c["expected"] = f"{c['name']}.expected.safetensors"
    (fix / "cases.json").write_text(json.dumps(cases))
    return fix, cases


@pytest.fixture(scope="module", params=sorted(BURN_VERSIONS))
def compat(request, fixtures):
    fix, cases = fixtures
    version = request.param
    proc = subprocess.run(
        [
            "cargo",
            "test",
            "--release",
            "--locked",
            "--manifest-path",
            str(COMPAT / "Cargo.toml"),
            "--features",
            BURN_VERSIONS[version],
            "--",
            "--test-threads=1",
            "--nocapture",
        ],
        env=dict(os.environ, HEARTMULA_COMPAT_FIXTURES=str(fix)),
        capture_output=True,
        text=True,
        timeout=3600,
        check=False,
    )
    print(proc.stdout[-6000:])
    assert proc.returncode == 0, proc.stdout[-8000:] + proc.stderr[-8000:]
    return fix, cases, proc.stdout, version


def read_by(version, case):
    """Whether that Burn release reads the case's pack (quantized descriptors are 0.22's)."""
    return version != "0.21" or not case.get("quantize")


def quantizes_as_0_22(version, case):
    """Whether Burn's own quantization of the case is 0.22.1's on Flex, which our q8 packs hold
    (0.23.0-pre.1's Flex, and 0.22.1's wgpu kernel, divide by the scale and round ties to even:
    their differences are counted). The wgpu build quantizes Native tensors on Flex."""
    if version == "0.22-wgpu":
        return set(case.get("quantize", {})) <= set(case.get("native", ()))
    return version in ("0.21", "0.22") or not case.get("quantize")


def test_checks_1_2_3_ran_on_every_case(compat):
    _fix, cases, out, version = compat
    assert "check 1 ok (burn " + version + "): tiny_codec (818 tensors)" in out
    for c in cases:
        ran = f"check 1 ok (burn {version}): {c['name']} " in out
        assert ran == read_by(version, c), c["name"]
        assert (f"check 2 ok (burn {version}): {c['name']} " in out) == (ran and quantizes_as_0_22(version, c))
        assert (f"quantized differently (burn {version}): {c['name']}: " in out) == (
            ran and not quantizes_as_0_22(version, c)
        )
    for name in ("tiny_f32", "tiny_bf16", "tiny_q8_b32", "tiny_q8_b16", "tiny_q8n_b32"):
        assert (f"check 3 ok (burn {version}): {name} " in out) == read_by(version, {"quantize": "q8" in name})
    if version.endswith("-wgpu"):
        # PackedU32(0) tensors were quantized by Burn on wgpu itself; Native ones on Flex.
        assert "(quantized on wgpu)" in out and "quantized on flex)" in out
        # cubek-quant's kernel rounds ties to even after dividing: on the tiny model a few values
        # land one step from Flex's (measured: 2 of 259,744 at block 32, 3 of 268,960 at 16).
        for name in ("tiny_q8_b32", "tiny_q8_b16"):
            counted = re.search(
                rf"quantized differently \(burn {version}\): {name}: (\d+) of (\d+) values differ \(largest step (\d+)\), 0 of",
                out,
            )
            assert counted and 0 < int(counted[1]) <= 10 and counted[3] == "1", name


def test_check_3_forward_matches_numpy(compat, tiny_ckpt):
    fix, _cases, _out, version = compat
    forward = json.loads((fix / f"forward_{version}_tiny_f32.json").read_text())
    source = source_of(tiny_ckpt)

    def fixed_input(rows, cols):
        i = np.arange(rows * cols)
        return ((i * 7 % 13).astype(np.float32) / np.float32(13) - np.float32(0.5)).reshape(rows, cols)

    rows = {"backbone.layers.0.attn.k_proj": 3, "projection": 2, "muq_linear": 2}  # as in burn_021.rs
    for name, bias in (
        ("backbone.layers.0.attn.k_proj", None),
        ("projection", None),
        ("muq_linear", "muq_linear.bias"),
    ):
        weight = source[f"{name}.weight"]  # [out, in], as upstream and as in the pack
        x = fixed_input(rows[name], weight.shape[1])
        want = x @ weight.T + (source[bias] if bias else 0)
        got = np.array(forward[name]["values"], np.float32).reshape(forward[name]["shape"])
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6, err_msg=name)
    emb = forward["text_embeddings"]
    got = np.array(emb["out"]["values"], np.float32).reshape(emb["out"]["shape"])
    np.testing.assert_array_equal(got, source["text_embeddings.weight"][emb["ids"]])


def test_check_3_quantized_forward_matches_numpy(compat, tiny_ckpt):
    """Burn's Linear forward with the q8 pack's quantized weight equals x @ W'^T, W' the weight
    quantized and dequantized by the numpy quantizer (written apart from the core's)."""
    fix, _cases, _out, version = compat
    if version == "0.21":
        pytest.skip("Burn 0.21 does not read our quantized packs")
    source = source_of(tiny_ckpt)
    for name, block in (("tiny_q8_b32", 32), ("tiny_q8_b16", 16), ("tiny_q8n_b32", 32)):
        path = fix / f"forward_{version}_{name}.json"
        if version.endswith("-wgpu") and name == "tiny_q8n_b32":
            assert not path.exists()  # WGSL has no i8: a Native weight's matmul does not compile there
            continue
        forward = json.loads(path.read_text())
        weight = source["backbone.layers.0.attn.k_proj.weight"]
        values, scales = quantize(weight, block)
        dequantized = dequantize(values, scales, block)
        i = np.arange(3 * weight.shape[1])
        x = ((i * 7 % 13).astype(np.float32) / np.float32(13) - np.float32(0.5)).reshape(3, weight.shape[1])
        got = forward["backbone.layers.0.attn.k_proj"]
        got = np.array(got["values"], np.float32).reshape(got["shape"])
        np.testing.assert_allclose(got, x @ dequantized.T, rtol=1e-5, atol=1e-6)
        unquantized = x @ weight.T
        assert np.abs(got - unquantized).max() > 1e-4  # a negative control: the quantization shows


def test_check_4_we_read_burns_packs(compat):
    fix, cases, _out, version = compat
    for c in cases:
        if not (read_by(version, c) and quantizes_as_0_22(version, c)):
            continue  # Burn wrote no such pack
        expected = load_file(fix / c["expected"])
        for name, block in c.get("quantize", {}).items():
            # The bytes Burn's writer stored: numpy's quantizer on the values Burn widened to f32.
            values, scales = quantize(expected[name].astype(np.float32), block)
            expected[name] = np.frombuffer(values.tobytes() + scales.tobytes(), np.uint8)
        with open_pack(fix / f"burn_written_{version}" / f"{c['name']}.bpk") as pack:
            assert pack.metadata == c["metadata"], c["name"]
            assert pack.layout == "0.20+"
            assert sorted(t.name for t in pack.tensors) == sorted(expected), c["name"]
            for t in pack.tensors:
                want = expected[t.name]
                if t.name in c.get("quantize", {}):
                    store = "_NATIVE" if t.name in c.get("native", ()) else ""
                    assert t.dtype == f"Q8S_B{c['quantize'][t.name]}{store}", (c["name"], t.name)
                    assert bytes(pack.raw_bytes(t.name)) == want.tobytes(), (c["name"], t.name)
                    assert t.param_id == c["param_ids"].get(t.name), (c["name"], t.name)
                    continue
                assert t.shape == want.shape, (c["name"], t.name)
                assert pack[t.name].dtype == want.dtype, (c["name"], t.name)
                assert bytes(pack.raw_bytes(t.name)) == want.tobytes(), (c["name"], t.name)
                assert t.param_id == c["param_ids"].get(t.name), (c["name"], t.name)


def test_check_4_inspect_and_verify_take_burns_quantized_packs(compat, tiny_ckpt):
    """The q8 packs Burn's own writer made (on the wgpu build: of what Burn quantized on wgpu) are
    read by `inspect` and pass `verify`'s container check; where Burn quantized as our packs do,
    `verify --against` finds every tensor the exact quantization of its source, and where it did
    not (wgpu), it names the tensors whose values differ, as not the exact quantization."""
    fix, cases, out, version = compat
    checked = 0
    for c in cases:
        if not (c.get("quantize") and read_by(version, c)):
            continue
        burn_pack = fix / f"burn_written_{version}" / f"{c['name']}.bpk"
        manifest = fix / f"{c['name']}.manifest.json"
        against = manifest if manifest.exists() else tiny_ckpt
        summary = json.loads(run_cli("inspect", burn_pack, "--json", check_rc=0).stdout)
        stores = {"Native" if n in c.get("native", ()) else "PackedU32(0)" for n in c["quantize"]}
        schemes = " ".join(d.get("scheme", "") for d in summary["dtypes"].values())
        assert all(f"Q8S, {store}, Symmetric" in schemes for store in stores), (c["name"], schemes)
        run_cli("verify", burn_pack, check_rc=0)
        verify = run_cli("verify", burn_pack, "--against", against, "--json")
        if quantizes_as_0_22(version, c):
            assert verify.returncode == 0, (c["name"], verify.stdout + verify.stderr)
        elif f"quantized differently (burn {version}): {c['name']}: 0 of" not in out:
            problems = json.loads(verify.stdout)["problems"]
            assert verify.returncode == 1 and problems, c["name"]
            for problem in problems:  # one line each, naming the tensor
                assert "is not the exact quantization of" in problem, (c["name"], problem)
                assert any(name in problem for name in c["quantize"]), (c["name"], problem)
        checked += 1
    assert checked >= 3 + 1 + 4 if version != "0.21" else checked == 0
