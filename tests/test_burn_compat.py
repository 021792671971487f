"""Burn compatibility, shown by Burn itself (rust/burn-compat builds against burn-store 0.21.0,
0.22.1 and the 0.23.0-pre.1 pre-release, one release per build).

This module writes fixtures (packs made by our CLI plus the tensors they must hold), runs the Rust
checks 1-3 over them, then does check 4 here: the packs Burn's writer produced read back through
`open_pack` with the same names, dtypes, shapes, bytes, param_ids and metadata.

Building the Burn crates takes minutes, so these run only with HEARTMULA_BURN_COMPAT=1
(tests/run.sh, and so CI, sets it); the pre-releases also need HEARTMULA_BURN_PRERELEASE=1."""

import json
import os
import random
import shutil
import subprocess

import ml_dtypes
import numpy as np
import pytest
from conftest import REPO, run_cli
from heartmula_burn import open_pack
from hypothesis import given, settings
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


def pack_via_manifest(fix, name, arrays, order, param_ids, metadata):
    """Writes the arrays as a shard, edits the manifest (order, param_ids, metadata), packs it."""
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


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory, tiny_ckpt, tiny_root):
    fix = tmp_path_factory.mktemp("compat")
    cases = heartmula_cases(fix, tiny_ckpt) + [codec_case(fix, tiny_root), edge_case(fix)] + hypothesis_cases(fix)
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


def test_checks_1_2_3_ran_on_every_case(compat):
    _fix, cases, out, version = compat
    assert "check 1 ok (burn " + version + "): tiny_codec (818 tensors)" in out
    for c in cases:
        assert f"check 1 ok (burn {version}): {c['name']} " in out
        assert f"check 2 ok (burn {version}): {c['name']} " in out
    for name in ("tiny_f32", "tiny_bf16"):
        assert f"check 3 ok (burn {version}): {name} " in out


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


def test_check_4_we_read_burns_packs(compat):
    fix, cases, _out, version = compat
    for c in cases:
        expected = load_file(fix / c["expected"])
        with open_pack(fix / f"burn_written_{version}" / f"{c['name']}.bpk") as pack:
            assert pack.metadata == c["metadata"], c["name"]
            assert pack.layout == "0.20+"
            assert sorted(t.name for t in pack.tensors) == sorted(expected), c["name"]
            for t in pack.tensors:
                want = expected[t.name]
                assert t.shape == want.shape, (c["name"], t.name)
                assert pack[t.name].dtype == want.dtype, (c["name"], t.name)
                assert bytes(pack.raw_bytes(t.name)) == want.tobytes(), (c["name"], t.name)
                assert t.param_id == c["param_ids"].get(t.name), (c["name"], t.name)
