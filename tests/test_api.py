"""The Python API as a library user meets it: exceptions to catch (and to pickle across processes),
typed values from the native core, and the GIL released while packing."""

import concurrent.futures
import multiprocessing
import os
import pickle
import threading
import time
from pathlib import Path

import heartmula_burn as hb
import pytest
from conftest import big_sparse_checkpoint
from heartmula_burn import _core


def test_missing_and_unreadable_files_are_the_builtin_os_errors(tmp_path):
    missing = tmp_path / "missing.bpk"
    with pytest.raises(FileNotFoundError) as err:
        hb.open_pack(missing)
    assert err.value.filename == str(missing) and str(missing) in str(err.value)
    locked = tmp_path / "locked.bpk"
    locked.write_bytes(b"NRUB")
    locked.chmod(0)
    try:
        if os.access(locked, os.R_OK):
            pytest.skip("this user reads files without read permission (root)")
        with pytest.raises(PermissionError) as err:
            hb.open_pack(locked)
        assert str(locked) in str(err.value)
    finally:
        locked.chmod(0o644)


def test_errors_name_what_went_wrong_and_sit_under_one_base(tiny_ckpt, tmp_path):
    bad = tmp_path / "bad.bpk"
    bad.write_bytes(b"XXXX" + bytes(300))
    with pytest.raises(hb.PackFileError) as err:
        hb.open_pack(bad)
    assert err.value.path == str(bad) and err.value.tensor is None
    assert isinstance(err.value, hb.HeartmulaBurnError)

    out = tmp_path / "heartmula.bpk"
    out.write_bytes(b"old")
    with pytest.raises(hb.OutputError) as err:
        hb.pack_checkpoint(tiny_ckpt, out)
    assert err.value.path == str(out) and "--force" in str(err.value)
    assert out.read_bytes() == b"old"

    manifest = hb.build_manifest(hb.load_checkpoint(tiny_ckpt))
    manifest.tensors[3].shape = (1, 2, 3)
    with pytest.raises(hb.SourceError) as err:
        hb.pack_manifest(manifest, tmp_path / "x.bpk")
    assert err.value.tensor == manifest.tensors[3].key and err.value.path == str(manifest.tensors[3].file)
    assert issubclass(hb.CheckpointError, hb.SourceError)


ERRORS = [
    hb.HeartmulaBurnError("plain"),
    hb.SourceError.at("/ckpt/model.safetensors", "not found in this file", tensor="w"),
    hb.CheckpointError.at("/ckpt/config.json", "'backbone_flavor' missing"),
    hb.PackFileError.at("/p.bpk", "bad magic"),
    hb.OutputError.at("/out/heartmula.bpk", "output exists (use --force to replace it)"),
]


@pytest.mark.parametrize("error", ERRORS, ids=lambda e: type(e).__name__)
def test_every_exception_pickles_and_unpickles_equal(error):
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error)
    assert (copy.args, copy.path, copy.tensor) == (error.args, error.path, error.tensor)
    assert type(error).__module__ == "heartmula_burn"


def _open(path: str) -> None:
    hb.open_pack(path)


def test_errors_cross_a_process_pool(tmp_path):
    bad = tmp_path / "bad.bpk"
    bad.write_bytes(b"XXXX" + bytes(300))
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
        with pytest.raises(hb.PackFileError) as err:
            pool.submit(_open, str(bad)).result()
        assert err.value.path == str(bad)
        with pytest.raises(FileNotFoundError):
            pool.submit(_open, str(tmp_path / "nope.bpk")).result()


def test_the_native_types_are_typed_values(tiny_ckpt, tmp_path):
    shard = min((tiny_ckpt / "HeartMuLa-oss-3B").glob("*.safetensors"))
    tensors, metadata = _core.read_safetensors_header(shard)
    first = tensors[0]
    assert isinstance(first, _core.SourceTensor) and first.file == shard and isinstance(first.shape, tuple)
    assert metadata == {"format": "pt"}
    item = _core.TensorRequest("renamed", shard, first.name, "BF16", param_id=7, shape=list(first.shape))
    assert (item.name, item.source, item.key, item.dtype, item.param_id, item.shape) == (
        "renamed",
        shard,
        first.name,
        "BF16",
        7,
        first.shape,
    )
    assert item == _core.TensorRequest("renamed", shard, first.name, "bf16", param_id=7, shape=first.shape)
    with pytest.raises(ValueError, match="unknown dtype 'F7'"):
        _core.TensorRequest("x", shard, "x", "F7")
    summary, staged = _core.pack([item], {"k": "v"}, tmp_path / "p.bpk")
    assert isinstance(summary, _core.WriteSummary) and summary.tensors == 1 and not (tmp_path / "p.bpk").exists()
    staged.commit()
    index = _core.read_pack_index(tmp_path / "p.bpk")
    assert index.metadata == {"k": "v"} and index.tensors[0].name == "renamed" and index.tensors[0].param_id == 7
    assert index.file_size == summary.file_size == (tmp_path / "p.bpk").stat().st_size


def test_the_gil_is_released_while_packing(tmp_path):
    nbytes = 256 << 20
    src = big_sparse_checkpoint(tmp_path / "src", nbytes)
    manifest = hb.build_manifest(hb.load_checkpoint(src), dtype="bf16", any_model=True)
    done = threading.Event()

    def pack() -> None:
        try:
            hb.pack_manifest(manifest, tmp_path / "out.bpk")
        finally:
            done.set()

    def count_while(still_running) -> float:
        """Iterations per second of a pure-Python loop while `still_running()`."""
        counted, started = 0, time.perf_counter()
        while still_running():
            counted += 1
        return counted / (time.perf_counter() - started)

    alone_until = time.perf_counter() + 0.3
    alone = count_while(lambda: time.perf_counter() < alone_until)
    worker = threading.Thread(target=pack)
    started = time.perf_counter()
    worker.start()
    beside = count_while(lambda: not done.is_set())
    elapsed = time.perf_counter() - started
    worker.join()
    assert Path(tmp_path / "out.bpk").stat().st_size > nbytes // 2
    # Held by the pack, the GIL would let this thread run only around the progress callbacks (10/s).
    assert elapsed > 0.2 and beside > 0.4 * alone, (elapsed, beside, alone)


def test_help_shows_the_public_api_and_only_private_modules():
    import pydoc
    import types

    text = pydoc.render_doc(hb, renderer=pydoc.plaintext)
    contents = text.split("PACKAGE CONTENTS\n", 1)[1].split("\n\n", 1)[0].split()
    modules = [name for name in contents if name != "(package)"]
    assert modules and all(name.startswith("_") for name in modules), modules
    public_modules = [n for n in dir(hb) if isinstance(getattr(hb, n), types.ModuleType) and not n.startswith("_")]
    assert public_modules == []
    for name in hb.__all__:
        assert getattr(hb, name).__doc__, f"{name} has no docstring"
        assert f"\n    {name}" in text or f"class {name}" in text or f"{name} = " in text, name
