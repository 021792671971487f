from __future__ import annotations

import contextlib
import importlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from heartmula_burn import _cli as cli
from heartmula_burn._synthetic import write_synthetic_checkpoint
from hub_server import HubServer

REPO = Path(__file__).resolve().parent.parent
# The upstream repositories the `hub` fixture serves the synthetic checkpoint as.
LM, CODEC, GEN = "HeartMuLa/HeartMuLa-oss-3B", "HeartMuLa/HeartCodec-oss", "HeartMuLa/HeartMuLaGen"


def run_cli(*args: Any, cwd: Path | None = None, check_rc: int | None = None) -> subprocess.CompletedProcess[str]:
    """Runs the CLI's `main()` in this process, with stdout and stderr captured, and returns what a
    subprocess would (exit code, stdout, stderr). Starting a new interpreter per call costs half a
    second; `run_process` does that where the process boundary itself is under test (signals, exit
    codes of the real program, the console script)."""
    argv = [str(a) for a in args]
    out, err = io.StringIO(), io.StringIO()
    previous = os.getcwd()
    try:
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                rc = cli.main(argv)
            except SystemExit as e:  # argparse: --help, --version, usage errors
                rc = e.code if isinstance(e.code, int) else int(e.code is not None)
    finally:
        os.chdir(previous)
    proc = subprocess.CompletedProcess(["heartmula_burn", *argv], rc, out.getvalue(), err.getvalue())
    if check_rc is not None:
        assert proc.returncode == check_rc, f"rc={proc.returncode}\nstdout={proc.stdout}\nstderr={proc.stderr}"
    return proc


def run_process(
    *args: Any, cwd: Path | None = None, check_rc: int | None = None, **kwargs: Any
) -> subprocess.CompletedProcess[str]:
    """Runs the real CLI (`python -m heartmula_burn`) in a subprocess."""
    proc = subprocess.run(
        [sys.executable, "-m", "heartmula_burn", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        **kwargs,
    )
    if check_rc is not None:
        assert proc.returncode == check_rc, f"rc={proc.returncode}\nstdout={proc.stdout}\nstderr={proc.stderr}"
    return proc


def assert_clean_failure(proc: subprocess.CompletedProcess[str], *needles: object, rc: int = 1) -> str:
    """Exit `rc` (1), a single-line message containing every needle, no traceback; returns the line."""
    assert proc.returncode == rc, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert str(needle) in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_checkpoint(tmp_path_factory.mktemp("ckpt_f32"))


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CKPT_ROOT holding both models, as upstream ships them: HeartMuLa-oss-3B and HeartCodec-oss."""
    return write_synthetic_checkpoint(tmp_path_factory.mktemp("root"), models=("heartmula", "heartcodec"))


@pytest.fixture(scope="session")
def tiny_ckpt_bf16(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_checkpoint(tmp_path_factory.mktemp("ckpt_bf16"), dtype="BF16", seed=1)


def linked(ckpt: Path, folder: Path) -> Path:
    """`folder/ckpt`, a symbolic link to a checkpoint: a manifest saved in `folder` may refer to the
    checkpoint's files (manifests refer only to files inside their folder, judged lexically)."""
    folder.mkdir(parents=True, exist_ok=True)
    link = folder / "ckpt"
    link.symlink_to(ckpt, target_is_directory=True)
    return link


def rewrite_tensor(ckpt_root: Path, name: str, change: Any) -> Path:
    """A copy of the checkpoint with one HeartMuLa tensor changed by `change(array)`, in its own shard."""
    import numpy as np
    from safetensors.numpy import load_file, save_file

    copy = ckpt_root.parent / f"{ckpt_root.name}-{name.replace('.', '_')}"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(ckpt_root, copy)
    model = copy / "HeartMuLa-oss-3B"
    index = json.loads((model / "model.safetensors.index.json").read_text())
    shard = model / index["weight_map"][name]
    tensors = load_file(shard)
    tensors[name] = np.ascontiguousarray(change(tensors[name]))
    save_file(tensors, shard, metadata={"format": "pt"})
    return copy


def big_sparse_checkpoint(folder: Path, nbytes: int = 4 << 30) -> Path:
    """`folder`/model.safetensors holding one F32 tensor 'big' of `nbytes`, sparse on disk (it reads
    as zeros and takes no space): packing it to BF16 takes seconds, long enough to interrupt."""
    folder.mkdir(parents=True, exist_ok=True)
    header = json.dumps({"big": {"dtype": "F32", "shape": [nbytes // 4], "data_offsets": [0, nbytes]}}).encode()
    header += b" " * (-len(header) % 8)
    with open(folder / "model.safetensors", "wb") as f:
        f.write(len(header).to_bytes(8, "little") + header)
        f.truncate(8 + len(header) + nbytes)
    return folder


def crosscheck(module: str) -> Any:
    """A library the forwards are checked against: required where CI installs it
    (HEARTMULA_REQUIRE_TORCH=1), else the test is skipped without it."""
    if os.environ.get("HEARTMULA_REQUIRE_TORCH") == "1":
        return importlib.import_module(module)
    return pytest.importorskip(module)


def residual_vq(config: dict[str, Any]) -> Any:
    """vector-quantize-pytorch's ResidualVQ built as heartlib's FlowMatching builds it from a
    HeartCodec config.json."""
    return crosscheck("vector_quantize_pytorch").ResidualVQ(
        dim=config["dim"],
        codebook_size=config["codebook_size"],
        codebook_dim=config["codebook_dim"],
        num_quantizers=config["num_quantizers"],
        decay=config["decay"],
        commitment_weight=config["commitment_weight"],
        threshold_ema_dead_code=config["threshold_ema_dead_code"],
        use_cosine_sim=config["use_cosine_sim"],
    )


def load_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def repo_files(folder: Path) -> dict[str, bytes | Path]:
    return {p.name: p for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def hub(tiny_root: Path) -> Any:
    """The three upstream repositories made of the synthetic checkpoint, each with files a
    conversion does not need (a README with an image, another format), plus a gated one."""
    server = HubServer()
    server.start()
    junk: dict[str, bytes | Path] = {"README.md": b"# card\n", "assets/cover.png": b"\x89PNG" + b"\0" * 64}
    server.add_repo(LM, {**repo_files(tiny_root / "HeartMuLa-oss-3B"), **junk, "model.bin": b"\0" * 1024})
    server.add_repo(CODEC, {**repo_files(tiny_root / "HeartCodec-oss"), **junk})
    gen = {name: tiny_root / name for name in ("tokenizer.json", "gen_config.json")}
    server.add_repo(GEN, {**gen, **junk})
    server.add_repo("gated/HeartMuLaGen", gen, gated=True)
    server.add_repo("broken/HeartMuLaGen", {"tokenizer.json": tiny_root / "tokenizer.json"})
    shards = {k: v for k, v in repo_files(tiny_root / "HeartMuLa-oss-3B").items() if k != "config.json"}
    server.add_repo("broken/HeartMuLa-oss-3B", shards)
    yield server
    server.stop()
    assert server.errors == [], "the server failed on a request the client made"


@pytest.fixture(scope="module")
def local_packs(tiny_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same synthetic checkpoint packed from its local folder: what every Hub route must match."""
    out = tmp_path_factory.mktemp("local")
    run_process("pack", tiny_root, "-o", f"{out}/", "-q", check_rc=0)
    return out
