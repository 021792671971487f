"""Hypothesis round trips: random tensor sets -> safetensors (written by the safetensors library)
-> pack (real CLI) -> read back, both through our reader and through an independent parse of the
file with cbor2. Bytes must be equal, or equal to the exact cast."""

import math
import struct
from pathlib import Path

import cbor2
import ml_dtypes
import numpy as np
from conftest import run_cli
from heartmula_burn import _core, open_pack
from heartmula_burn._packfile import numpy_dtypes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.numpy import save_file

NUMPY = numpy_dtypes()  # Burn dtype name -> numpy dtype
FLOATS = ("F64", "F32", "F16", "BF16")

names = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1, max_size=300
)
shapes = st.lists(st.integers(0, 5), min_size=0, max_size=4)


@st.composite
def tensor_sets(draw):
    count = draw(st.integers(1, 8))
    tensor_names = draw(st.lists(names, min_size=count, max_size=count, unique=True))
    tensors = {}
    for name in tensor_names:
        dtype = draw(st.sampled_from(sorted(NUMPY)))
        shape = tuple(draw(shapes))
        n = math.prod(shape)
        raw = draw(st.binary(min_size=n * NUMPY[dtype].itemsize, max_size=n * NUMPY[dtype].itemsize))
        array = (
            np.frombuffer(raw, dtype=np.uint8).view(NUMPY[dtype])
            if dtype != "Bool"
            else (np.frombuffer(raw, dtype=np.uint8) % 2).astype(bool)
        )
        tensors[name] = (dtype, array.reshape(shape).copy())
    num_shards = draw(st.integers(1, min(4, count)))
    return tensors, num_shards


def expected_bytes(dtype: str, array: np.ndarray, target: str) -> bytes:
    if target == "source" or dtype not in FLOATS or dtype == target.upper():
        return array.tobytes()
    with np.errstate(over="ignore", invalid="ignore"):
        return array.astype(NUMPY[target.upper()]).tobytes()


def same_values(got: bytes, want: bytes, dtype: str) -> bool:
    """Bytes equal, except that NaN payloads may differ (torch and ml_dtypes disagree on them)."""
    if got == want:
        return True
    if dtype not in FLOATS:
        return False
    with np.errstate(invalid="ignore"):  # widening a NaN payload warns; the values stay NaN
        a = np.frombuffer(got, NUMPY[dtype]).astype(np.float64)
        b = np.frombuffer(want, NUMPY[dtype]).astype(np.float64)
    both_nan = np.isnan(a) & np.isnan(b)
    return bool(np.all(both_nan | (a.view(np.uint64) == b.view(np.uint64))))


def independent_parse(path: Path) -> tuple[dict, int, bytes]:
    """Header + CBOR decoded with cbor2, data start computed from the spec: not with our code."""
    data = path.read_bytes()
    magic, version, size = struct.unpack("<IHI", data[:10])
    assert (magic, version) == (0x4255524E, 1)
    meta = cbor2.loads(data[10 : 10 + size])
    data_start = -(-(10 + size) // 256) * 256
    assert data[10 + size : data_start] == b"\0" * (data_start - 10 - size), "padding must be zeros"
    return meta, data_start, data


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tensor_sets(), st.sampled_from(["source", "f32", "bf16", "f16"]))
def test_random_tensor_sets_round_trip(tmp_path_factory, case, target):
    tensors, num_shards = case
    folder = tmp_path_factory.mktemp("rt")
    items = list(tensors.items())
    for i in range(num_shards):
        part = {name: array for name, (_dtype, array) in items[i::num_shards]}
        save_file(part, str(folder / f"shard-{i}.safetensors"))
    out = folder / "out.bpk"
    proc = run_cli("pack", folder, "-o", out, "--any-model", "--dtype", target, "-q")
    assert proc.returncode == 0, proc.stderr

    meta, data_start, data = independent_parse(out)
    assert set(meta["tensors"]) == set(tensors)
    assert list(meta["tensors"]) == sorted(tensors, key=lambda n: n.encode()), "CBOR keys in byte order"
    ends = []
    with open_pack(out) as pack:
        for name, (dtype, array) in tensors.items():
            out_dtype = dtype if target == "source" or dtype not in FLOATS else target.upper()
            d = meta["tensors"][name]
            assert d["dtype"] == ({"Bool": "Native"} if out_dtype == "Bool" else out_dtype)
            assert d["shape"] == list(array.shape)
            start, end = d["data_offsets"]
            assert start % 256 == 0
            ends.append(end)
            want = expected_bytes(dtype, array, target)
            assert same_values(data[data_start + start : data_start + end], want, out_dtype), name
            assert bytes(pack.raw_bytes(name)) == data[data_start + start : data_start + end]
            view = pack[name]
            assert view.shape == array.shape and not view.flags.writeable
    assert len(data) == data_start + max(ends), "the file ends right after the last tensor"


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=0, max_size=256).filter(lambda b: len(b) % 4 == 0))
def test_cast_kernel_matches_ml_dtypes_and_numpy(raw):
    values = np.frombuffer(raw, "<f4")
    for target, np_dtype in (("BF16", np.dtype(ml_dtypes.bfloat16)), ("F16", np.dtype("<f2"))):
        got = bytes(_core.cast_bytes(raw, "F32", target))
        with np.errstate(over="ignore", invalid="ignore"):
            want = values.astype(np_dtype).tobytes()
        assert same_values(got, want, target)
        # Widening back is exact.
        assert bytes(_core.cast_bytes(got, target, "F32")) == np.frombuffer(got, np_dtype).astype("<f4").tobytes()


def test_cast_kernel_f64_single_rounding():
    # 1 + 2^-8 + 2^-40 is just above a bf16 tie; rounding through f32 first would land on the tie.
    raw = np.array([1 + 2**-8 + 2**-40, 1 + 2**-8, -(1 + 3 * 2**-8)], "<f8").tobytes()
    got = np.frombuffer(bytes(_core.cast_bytes(raw, "F64", "BF16")), "<u2")
    assert list(got) == [0x3F81, 0x3F80, 0xBF82]
