"""A pack read as safetensors files are read: the `safe_open` protocol and Mapping behaviour,
checked against the real `safetensors.safe_open` on the same tensors unpacked to safetensors."""

from __future__ import annotations

import gc

import heartmula_burn as hb
import ml_dtypes
import numpy as np
import pytest
from conftest import crosscheck, run_cli
from safetensors import safe_open as st_safe_open


@pytest.fixture(scope="module")
def packed(tiny_ckpt_bf16, tmp_path_factory):
    """A BF16 pack (the dtype numpy has no name for) and the same tensors as safetensors shards."""
    folder = tmp_path_factory.mktemp("safe_open")
    run_cli("pack", tiny_ckpt_bf16, "-o", folder / "p.bpk", "--dtype", "source", "-q", check_rc=0)
    run_cli("unpack", folder / "p.bpk", "-o", folder / "unpacked", "--max-shard-size", "300KB", "-q", check_rc=0)
    return folder


def reference(folder):
    """name -> (dtype, shape, bytes) read by safetensors itself from the unpacked shards."""
    torch = crosscheck("torch")
    tensors = {}
    for shard in sorted((folder / "unpacked").glob("*.safetensors")):
        with st_safe_open(shard, framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 (safetensors' handle is not iterable)
                t = f.get_tensor(name)
                tensors[name] = (
                    str(t.dtype),
                    tuple(t.shape),
                    t.view(-1).view(torch.uint8).numpy().tobytes(),
                )
    return tensors


def test_tensor_by_tensor_as_safetensors_reads_them(packed):
    torch = crosscheck("torch")
    want = reference(packed)
    with hb.safe_open(packed / "p.bpk", framework="pt") as f:
        assert sorted(f.keys()) == sorted(want)
        for name in f.keys():  # noqa: SIM118
            t = f.get_tensor(name)
            assert isinstance(t, torch.Tensor)
            got = (str(t.dtype), tuple(t.shape), t.view(-1).view(torch.uint8).numpy().tobytes())
            assert got == want[name], name
        assert f.metadata()["producer"] == "heartmula-burn" and f.metadata() == dict(f.metadata)
    with hb.safe_open(packed / "p.bpk") as f:  # numpy by default: bfloat16 as ml_dtypes'
        head = f.get_tensor("audio_head")
        assert head.dtype == ml_dtypes.bfloat16 and head.tobytes() == want["audio_head"][2]


def test_slices_read_only_what_is_asked(packed):
    with hb.open_pack(packed / "p.bpk") as pack:
        whole = np.array(pack["audio_head"])
        part = pack.get_slice("audio_head")
        assert part.get_shape() == list(whole.shape) and part.get_dtype() == "BF16"
        for index in (np.s_[0], np.s_[1:3, :, 2:5], np.s_[..., -1], np.s_[::2, 1]):
            assert part[index].tobytes() == whole[index].tobytes()


def test_a_pack_is_a_mapping_of_names(packed):
    with hb.open_pack(packed / "p.bpk") as pack:
        names = [t.name for t in pack.tensors]
        assert list(pack) == names and list(pack.keys()) == names and len(pack) == len(names)
        as_dict = dict(pack)
        assert list(as_dict) == names
        assert all(as_dict[n].tobytes() == pack[n].tobytes() for n in names)
        assert [n for n, _ in pack.items()] == names
        assert "audio_head" in pack and "nope" not in pack and pack.get("nope") is None
        assert repr(pack.tensors[0]).startswith("PackTensor(")


def test_owned_tensors_outlive_the_pack_views_do_not_alias(packed):
    with hb.open_pack(packed / "p.bpk") as pack:
        owned = pack.get_tensor("muq_linear.weight")
        expected = bytes(pack.raw_bytes("muq_linear.weight"))
    del pack
    gc.collect()
    assert owned.tobytes() == expected and owned.flags.owndata and owned.flags.writeable


def test_framework_and_device_are_checked(packed):
    with pytest.raises(ValueError, match="framework 'jax'"):
        hb.safe_open(packed / "p.bpk", framework="jax")
    with pytest.raises(ValueError, match="CPU"):
        hb.safe_open(packed / "p.bpk", device="cuda")
