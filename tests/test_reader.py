"""open_pack: zero-copy, read-only views with the right numpy dtypes; clear errors on bad files."""

import ml_dtypes
import numpy as np
import pytest
from conftest import run_cli
from heartmula_burn import PackFileError, open_pack


@pytest.fixture(scope="module")
def bf16_pack(tiny_ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("reader") / "bf16.bpk"
    run_cli("pack", tiny_ckpt, "-o", out, "--dtype", "bf16", "-q", "--no-extras", check_rc=0)
    return out


def test_views_are_zero_copy_read_only_bfloat16(bf16_pack):
    with open_pack(bf16_pack) as pack:
        view = pack["audio_head"]
        assert view.dtype == ml_dtypes.bfloat16
        assert not view.flags.writeable and not view.flags.owndata
        with pytest.raises(ValueError):
            view[0, 0, 0] = 1
        info = pack.info("audio_head")
        raw = bf16_pack.read_bytes()[info.file_offset : info.file_offset + info.nbytes]
        np.testing.assert_array_equal(view.view(np.uint16).ravel(), np.frombuffer(raw, "<u2"))
        assert info.nbytes == 7 * 16 * 37 * 2


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (lambda d: b"XXXX" + d[4:], "bad magic"),
        (lambda d: d[:4] + b"\x02\x00" + d[6:], "version 2"),
        (lambda d: d[:6] + (200 * 2**20).to_bytes(4, "little") + d[10:], "exceeds the limit"),
        (lambda d: d[:-3], "truncated"),
        (lambda d: d[:7], "shorter than the 10-byte header"),
        (lambda d: d[:10] + b"\xff" * 20 + d[30:], "invalid CBOR"),
    ],
)
def test_bad_packs_raise_pack_error_naming_the_file(bf16_pack, tmp_path, corrupt, message):
    bad = tmp_path / "bad.bpk"
    bad.write_bytes(corrupt(bf16_pack.read_bytes()))
    with pytest.raises(PackFileError) as err:
        open_pack(bad)
    assert str(bad) in str(err.value) and message in str(err.value)
