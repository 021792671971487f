"""Folders from anywhere, used as they come: views of a pack that outlive it (they must neither crash
nor show another file's bytes), a pack replaced while it is opened, JSON files that are FIFOs,
devices or huge, config counts that would make billions of tensor names, and manifests whose names
collide or whose extras would be written out of the output folder. Each ends in one line naming the
file (and key), never in a hang, a memory blow-up or a signal death. What could hang or crash runs in
a subprocess, so that it fails its test instead of the test run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import heartmula_burn as hb
import pytest
from conftest import assert_clean_failure, linked, load_json, run_cli
from heartmula_burn import _packfile as packfile
from heartmula_burn._fields import Fields
from heartmula_burn._manifest import Manifest
from heartmula_burn._presets.heartcodec import HeartCodec
from heartmula_burn._presets.heartcodec.synthetic import FULL_CONFIG as CODEC_FULL_CONFIG
from heartmula_burn._presets.heartcodec.synthetic import TINY_CONFIG as CODEC_TINY_CONFIG
from heartmula_burn._presets.heartmula import HeartMuLa
from heartmula_burn._presets.heartmula.synthetic import FULL_CONFIG, TINY_CONFIG

MODEL = "HeartMuLa-oss-3B"
CODEC = "HeartCodec-oss"
# Burn's reader loads no tensor over 10 GiB: no size in a config can exceed that many elements.
TEN_GIB = 10 * 2**30
DEADLINE = 60  # seconds; every case here ends in a few when the input is refused as it should be


def run_python(code: str, *args: object, limit_memory: bool = True) -> subprocess.CompletedProcess[str]:
    """`code` in a fresh interpreter with 2 GiB of address space and a deadline: a crash shows as its
    exit status, a hang or a memory blow-up as a failed test."""
    prelude = "import resource\nresource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))\n" if limit_memory else ""
    try:
        return subprocess.run(
            [sys.executable, "-c", prelude + textwrap.dedent(code), *map(str, args)],
            capture_output=True,
            text=True,
            timeout=DEADLINE,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running after {DEADLINE} s (a hang or a runaway): {args}")


def run_cli_guarded(*args: object) -> subprocess.CompletedProcess[str]:
    """The real CLI (`python -m heartmula_burn ARGS`) under `run_python`'s limits."""
    return run_python(
        "import runpy, sys\nrunpy.run_module('heartmula_burn', run_name='__main__', alter_sys=True)\n", *args
    )


@pytest.fixture(scope="module")
def packs(tiny_ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding heartmula.bpk (F32) and other.bpk: the same pack, every byte of the data
    of 'audio_head' inverted (same size, so a mapping of it may land where the first one was)."""
    folder = tmp_path_factory.mktemp("packs")
    run_cli("pack", tiny_ckpt, "-o", folder / "heartmula.bpk", "-q", "--no-extras", check_rc=0)
    data = bytearray((folder / "heartmula.bpk").read_bytes())
    with hb.open_pack(folder / "heartmula.bpk") as pack:
        t = pack.info("audio_head")
    region = slice(t.file_offset, t.file_offset + t.nbytes)
    data[region] = bytes(b ^ 0xFF for b in data[region])
    (folder / "other.bpk").write_bytes(bytes(data))
    return folder


# The bytes of `audio_head` read with plain file reads, and what each case prints when the view it
# kept still holds them after the pack went away.
VIEW_PRELUDE = """
import gc, sys, threading
import heartmula_burn as hb
path, other = sys.argv[1], sys.argv[2]
with hb.open_pack(path) as probe:
    info = probe.info("audio_head")
with open(path, "rb") as f:
    f.seek(info.file_offset)
    expected = f.read(info.nbytes)
"""

VIEW_CASES = {
    "with-block": """
        with hb.open_pack(path) as pack:
            kept = pack["audio_head"]
        print(float(kept[0, 0, 0]) == float(kept.flat[0]), kept.tobytes() == expected)
    """,
    "close()": """
        pack = hb.open_pack(path)
        kept = pack["audio_head"]
        pack.close()
        print(float(kept[0, 0, 0]) == float(kept.flat[0]), kept.tobytes() == expected)
    """,
    "del pack": """
        pack = hb.open_pack(path)
        kept = pack["audio_head"]
        del pack
        gc.collect()
        print(float(kept[0, 0, 0]) == float(kept.flat[0]), kept.tobytes() == expected)
    """,
    "a slice of a view": """
        pack = hb.open_pack(path)
        kept = pack["audio_head"][1:, :2]
        whole = expected
        pack.close()
        del pack
        gc.collect()
        import numpy as np
        want = np.frombuffer(whole, kept.dtype).reshape(info.shape)[1:, :2]
        print(True, kept.tobytes() == want.tobytes())
    """,
    "a second pack mapped after the first closed": """
        pack = hb.open_pack(path)
        kept = pack["audio_head"]
        pack.close()
        second = hb.open_pack(other)
        theirs = second["audio_head"]
        print(theirs.tobytes() != expected, kept.tobytes() == expected)
    """,
    "a file that shrinks under a view kept after close()": """
        import os, shutil, tempfile
        copy = os.path.join(tempfile.mkdtemp(), "copy.bpk")
        shutil.copy(path, copy)
        pack = hb.open_pack(copy)
        kept = pack["audio_head"]
        pack.close()
        os.truncate(copy, info.file_offset)  # whole pages of the view now lie past the end
        print(len(expected) > 3 * 4096, kept.tobytes() == bytes(len(expected)))  # zeros, not SIGBUS
    """,
    "a reader thread while another closes": """
        pack = hb.open_pack(path)
        kept = pack["audio_head"]
        closed, stop = threading.Event(), threading.Event()
        results = {"reads": 0, "after": 0, "equal": True}
        def reader():
            while not stop.is_set():
                results["equal"] &= kept.tobytes() == expected
                results["reads"] += 1
                if closed.is_set():
                    results["after"] += 1
        thread = threading.Thread(target=reader)
        thread.start()
        while results["reads"] < 50:
            pass
        pack.close()
        del pack
        gc.collect()
        closed.set()
        while results["after"] < 200:
            pass
        stop.set()
        thread.join()
        print(results["after"] >= 200, results["equal"])
    """,
}


@pytest.mark.parametrize("case", list(VIEW_CASES))
def test_a_view_outlives_its_pack_with_its_own_bytes(packs, case):
    proc = run_python(VIEW_PRELUDE + textwrap.dedent(VIEW_CASES[case]), packs / "heartmula.bpk", packs / "other.bpk")
    assert proc.returncode == 0, f"exit {proc.returncode} ({case}): {proc.stderr[-2000:]}"
    assert proc.stdout.split() == ["True", "True"], (case, proc.stdout, proc.stderr[-2000:])


def test_a_torch_tensor_over_a_view_outlives_its_pack(packs):
    pytest.importorskip("torch")
    code = """
        import warnings
        warnings.simplefilter("ignore")  # torch warns that the array is read-only
        import torch
        with hb.open_pack(path) as pack:
            tensor = torch.from_numpy(pack["audio_head"])
        gc.collect()
        second = hb.open_pack(other)
        theirs = second["audio_head"]
        print(tuple(tensor.shape) == tuple(info.shape), tensor.numpy().tobytes() == expected)
    """
    # Not under the 2 GiB limit: torch alone maps more address space than that.
    proc = run_python(
        VIEW_PRELUDE + textwrap.dedent(code), packs / "heartmula.bpk", packs / "other.bpk", limit_memory=False
    )
    assert proc.returncode == 0, f"exit {proc.returncode}: {proc.stderr[-2000:]}"
    assert proc.stdout.split() == ["True", "True"], (proc.stdout, proc.stderr[-2000:])


def test_reading_through_a_closed_pack_is_refused_and_its_views_stay(packs):
    data = (packs / "heartmula.bpk").read_bytes()
    pack = hb.open_pack(packs / "heartmula.bpk")
    bias = pack.info("muq_linear.bias")
    view = pack["audio_head"]
    raw = pack.raw_bytes("muq_linear.bias")
    first = view.tobytes()
    pack.close()
    with pytest.raises(ValueError, match="after close"):
        pack["audio_head"]
    assert view.tobytes() == first
    assert bytes(raw) == data[bias.file_offset : bias.file_offset + bias.nbytes]


def test_a_pack_replaced_while_it_is_opened_is_refused(tiny_ckpt, packs, tmp_path, monkeypatch):
    """The index and the map must come from one file: a pack renamed over the path between reading
    the index and mapping the file would give the old index over the new bytes."""
    path = tmp_path / "p.bpk"
    shutil.copy(packs / "heartmula.bpk", path)
    replacement = tmp_path / "replacement.bpk"  # another size, another index
    run_cli("pack", tiny_ckpt, "--dtype", "bf16", "-o", replacement, "-q", "--no-extras", check_rc=0)
    real = packfile._core.read_pack_index

    def read_then_replace(p: Any) -> Any:
        index = real(p)
        os.replace(replacement, path)  # a re-pack renamed into place just now
        return index

    monkeypatch.setattr(packfile._core, "read_pack_index", read_then_replace)
    with pytest.raises(hb.PackFileError) as err:
        hb.open_pack(path)
    assert err.value.path == str(path) and "changed while being opened" in str(err.value)
    monkeypatch.undo()
    with hb.open_pack(path) as pack:  # opened again once it is complete: the new pack
        assert {t.dtype for t in pack.tensors} == {"BF16"}


# ---- JSON files that are not files, or too big ------------------------------------------------------


def copied(tiny_ckpt: Path, tmp_path: Path) -> Path:
    root = tmp_path / "ckpt"
    shutil.copytree(tiny_ckpt, root)
    return root


def test_a_fifo_config_json_is_refused_without_waiting_for_a_writer(tiny_ckpt, tmp_path):
    root = copied(tiny_ckpt, tmp_path)
    config = root / MODEL / "config.json"
    config.unlink()
    os.mkfifo(config)
    proc = run_cli_guarded("pack", root, "-o", f"{tmp_path / 'out'}/")
    assert_clean_failure(proc, config, "FIFO")
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


@pytest.mark.parametrize("with_index", [True, False])
def test_a_fifo_shard_is_refused_without_waiting_for_a_writer(tiny_ckpt, tmp_path, with_index):
    """The shard is opened by the core: a FIFO there used to wait in open() forever, deaf to SIGTERM."""
    root = copied(tiny_ckpt, tmp_path)
    shard = min((root / MODEL).glob("*.safetensors"))
    shard.unlink()
    os.mkfifo(shard)
    if not with_index:
        (root / MODEL / "model.safetensors.index.json").unlink()
    proc = run_cli_guarded("pack", root / MODEL, "--any-model", "-o", tmp_path / "out.bpk")
    assert_clean_failure(proc, shard, "shard is a FIFO, not a regular file")
    assert not (tmp_path / "out.bpk").exists()


def test_a_fifo_manifest_is_refused_without_waiting_for_a_writer(tmp_path):
    manifest = tmp_path / "manifest.json"
    os.mkfifo(manifest)
    proc = run_cli_guarded("pack", "--manifest", manifest, "-o", tmp_path / "p.bpk")
    assert_clean_failure(proc, manifest, "FIFO")


def test_a_config_json_linked_to_dev_zero_is_refused_not_read_forever(tiny_ckpt, tmp_path):
    if not os.path.exists("/dev/zero"):
        pytest.skip("no /dev/zero")
    root = copied(tiny_ckpt, tmp_path)
    config = root / MODEL / "config.json"
    config.unlink()
    config.symlink_to("/dev/zero")
    proc = run_cli_guarded("pack", root, "-o", f"{tmp_path / 'out'}/")
    assert_clean_failure(proc, config, "character device")


def test_a_pack_that_is_a_fifo_is_refused_without_waiting(tmp_path):
    path = tmp_path / "p.bpk"
    os.mkfifo(path)
    proc = run_cli_guarded("inspect", path)
    assert_clean_failure(proc, path, "FIFO")


def test_an_index_over_64_mib_is_refused_before_it_is_parsed(tiny_ckpt, tmp_path):
    root = copied(tiny_ckpt, tmp_path)
    index = root / MODEL / "model.safetensors.index.json"
    original = index.read_bytes()
    index.write_bytes(original + b" " * (64 * 2**20 + 1 - len(original)))  # still valid JSON
    assert_clean_failure(run_cli("pack", root, "-o", tmp_path / "p.bpk", "-q"), index, "larger than 64 MiB")
    with open(index, "r+b") as f:  # exactly 64 MiB is read
        f.truncate(64 * 2**20)
    run_cli("pack", root, "-o", tmp_path / "p.bpk", "-q", "--no-extras", check_rc=0)


def test_a_config_json_over_1_mib_is_refused(tiny_ckpt, tmp_path):
    root = copied(tiny_ckpt, tmp_path)
    config = root / MODEL / "config.json"
    doc = load_json(config)
    doc["padding"] = "x" * 2**20  # valid JSON, an unknown key: only its size is wrong
    config.write_text(json.dumps(doc))
    assert_clean_failure(run_cli("pack", root, "-o", tmp_path / "p.bpk", "-q"), config, "larger than 1 MiB")


# ---- counts that would make billions of tensor names ------------------------------------------------


def with_config(tiny_root: Path, tmp_path: Path, model: str, edit: Any) -> tuple[Path, Path]:
    root = tmp_path / "root"
    shutil.copytree(tiny_root, root)
    config = root / model / "config.json"
    doc = load_json(config)
    edit(doc)
    config.write_text(json.dumps(doc))
    return root, config


HOSTILE_COUNTS = [
    (MODEL, lambda c: c["flavors"]["tiny-backbone"].update(num_layers=10**9), "flavors.tiny-backbone.num_layers"),
    (MODEL, lambda c: c["flavors"]["tiny-decoder"].update(num_layers=20_000), "flavors.tiny-decoder.num_layers"),
    (CODEC, lambda c: c.update(num_quantizers=10**9), "num_quantizers"),
    (CODEC, lambda c: c.update(num_layers=10**12), "num_layers"),
    (CODEC, lambda c: c.update(num_layers_2=30_000), "num_layers_2"),
    (
        CODEC,
        lambda c: c.update(
            upsample_factors=[1] * 5000,
            upsample_kernel_sizes=[2] * 5000,
            downsample_factors=[1],
            downsample_kernel_sizes=[2],
        ),
        "upsample_factors",
    ),
]


@pytest.mark.parametrize("model, edit, key", HOSTILE_COUNTS, ids=[k for _, _, k in HOSTILE_COUNTS])
def test_a_count_over_what_a_pack_holds_is_refused_before_names_are_built(tiny_root, tmp_path, model, edit, key):
    root, config = with_config(tiny_root, tmp_path, model, edit)
    started = time.monotonic()
    proc = run_cli_guarded("pack", root, "--subdir", model, "-o", tmp_path / "p.bpk")
    line = assert_clean_failure(proc, config, f"'{key}'")
    assert "100,000" in line or "100000" in line, line
    assert time.monotonic() - started < 30
    assert not (tmp_path / "p.bpk").exists()


def test_the_tensor_count_of_a_config_is_what_the_preset_builds():
    """The counts are checked from the config alone; they must be what `expected_tensors` builds
    (and the released models are 289 and 818 tensors)."""
    from heartmula_burn._presets.heartcodec import count_tensors, fixed_tensors, parse_config

    path = Path("config.json")
    assert len(HeartMuLa().expected_tensors(Fields(FULL_CONFIG, path))) == 289
    assert len(HeartCodec().expected_tensors(Fields(CODEC_FULL_CONFIG, path))) == 818
    variants = [
        {},
        {"codebook_dim": CODEC_TINY_CONFIG.get("dim", 512)},
        {"num_samples": 1},
        {"norm_type": "layer_norm"},
        {"num_layers": 0, "num_layers_2": 3, "num_quantizers": 5},
        {
            "upsample_factors": [2, 3],
            "upsample_kernel_sizes": [4, 6],
            "downsample_factors": [2],
            "downsample_kernel_sizes": [4],
        },
    ]
    for variant in variants:
        config = Fields({**CODEC_TINY_CONFIG, **variant}, path)
        c = parse_config(config)
        assert fixed_tensors(c) + sum(count_tensors(c).values()) == len(HeartCodec().expected_tensors(config)), variant
    flavors = TINY_CONFIG["flavors"]
    for layers in (0, 1, 11_000):  # 9 tensors a layer, 10 besides: 99,028 + 28 + 3 layers, under the limit
        doc = {**TINY_CONFIG, "flavors": {**flavors, "tiny-decoder": {**flavors["tiny-decoder"], "num_layers": layers}}}
        if layers == 0:
            with pytest.raises(hb.CheckpointError, match="'flavors.tiny-decoder.num_layers' must be an integer"):
                HeartMuLa().expected_tensors(Fields(doc, path))
        else:
            assert len(HeartMuLa().expected_tensors(Fields(doc, path))) == 9 * (28 + layers) + 10


@pytest.mark.parametrize(
    "model, key, value, wanted",
    [
        (MODEL, "text_vocab_size", 2**64, f"must be an integer <= {TEN_GIB}, not 18446744073709551616"),
        (MODEL, "audio_num_codebooks", 10**15, f"must be an integer <= {TEN_GIB}, not 1000000000000000"),
        (CODEC, "dim", 2**70, f"must be an integer <= {TEN_GIB}, not 1180591620717411303424"),
        (CODEC, "downsample_factors", [3, 2**40], f"must be a list of integers <= {TEN_GIB}, not 1099511627776 in it"),
    ],
)
def test_a_size_past_any_tensor_burn_reads_is_refused_by_key(tiny_root, tmp_path, model, key, value, wanted):
    root, config = with_config(tiny_root, tmp_path, model, lambda c: c.update({key: value}))
    line = assert_clean_failure(run_cli("pack", root, "--subdir", model, "-o", tmp_path / "p.bpk"), config, f"'{key}'")
    assert wanted in line


# ---- manifests --------------------------------------------------------------------------------------


@pytest.fixture
def manifest_doc(tiny_ckpt: Path, tmp_path: Path) -> dict[str, Any]:
    linked(tiny_ckpt, tmp_path)
    path = tmp_path / "manifest.json"
    run_cli("manifest", tmp_path / "ckpt", "-o", path, check_rc=0)
    doc: dict[str, Any] = load_json(path)
    doc["tensors"] = doc["tensors"][:4]
    return doc


def save(doc: dict[str, Any], path: Path) -> Path:
    path.write_text(json.dumps(doc))
    return path


@pytest.mark.parametrize(
    "destination", ["../escaped.json", "sub/tokenizer.json", "/tmp/abs.json", ".", "..", "", "a\0b"]
)
def test_an_extras_destination_must_be_a_plain_file_name(manifest_doc, tmp_path, destination):
    manifest_doc["extras"] = {destination: "ckpt/tokenizer.json"}
    path = save(manifest_doc, tmp_path / "manifest.json")
    with pytest.raises(hb.CheckpointError) as err:
        Manifest.load(path)
    assert err.value.path == str(path) and "'extras'" in str(err.value) and repr(destination) in str(err.value)
    out = tmp_path / "out"
    out.mkdir()
    assert_clean_failure(run_cli("pack", "--manifest", path, "-o", out / "p.bpk", "-q"), path, "'extras'")
    assert list(out.iterdir()) == [] and not (tmp_path / "escaped.json").exists()


def test_a_plain_extras_destination_still_packs(manifest_doc, tmp_path):
    manifest_doc["extras"] = {"tokenizer.json": "ckpt/tokenizer.json", "notes..json": "ckpt/gen_config.json"}
    path = save(manifest_doc, tmp_path / "manifest.json")
    out = tmp_path / "out"
    out.mkdir()
    run_cli("pack", "--manifest", path, "-o", out / "p.bpk", "-q", check_rc=0)
    assert sorted(p.name for p in out.iterdir()) == ["notes..json", "p.bpk", "tokenizer.json"]


def test_tensor_names_in_a_manifest_are_unique_and_not_empty(manifest_doc, tmp_path):
    first = manifest_doc["tensors"][0]["name"]
    manifest_doc["tensors"][2]["name"] = first
    path = save(manifest_doc, tmp_path / "dup.json")
    with pytest.raises(hb.CheckpointError) as err:
        Manifest.load(path)
    assert err.value.path == str(path)
    assert "'tensors[2].name'" in str(err.value) and repr(first) in str(err.value) and "tensors[0]" in str(err.value)
    assert_clean_failure(run_cli("pack", "--manifest", path, "-o", tmp_path / "p.bpk"), path, "'tensors[2].name'")

    manifest_doc["tensors"][2]["name"] = ""
    path = save(manifest_doc, tmp_path / "empty.json")
    with pytest.raises(hb.CheckpointError) as err:
        Manifest.load(path)
    assert "'tensors[2].name'" in str(err.value) and "empty" in str(err.value)


def test_two_tensors_of_a_manifest_cannot_share_a_param_id(manifest_doc, tmp_path):
    for i, entry in enumerate(manifest_doc["tensors"]):
        entry["param_id"] = 100 + i
    path = save(manifest_doc, tmp_path / "distinct.json")
    assert [t.param_id for t in Manifest.load(path).tensors] == [100, 101, 102, 103]
    manifest_doc["tensors"][3]["param_id"] = 101
    path = save(manifest_doc, tmp_path / "shared.json")
    with pytest.raises(hb.CheckpointError) as err:
        Manifest.load(path)
    assert err.value.path == str(path)
    assert "'tensors[3].param_id'" in str(err.value) and "101" in str(err.value) and "tensors[1]" in str(err.value)
    assert_clean_failure(run_cli("pack", "--manifest", path, "-o", tmp_path / "p.bpk"), path, "'tensors[3].param_id'")
