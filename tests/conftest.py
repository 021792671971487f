import json
import subprocess
import sys
from pathlib import Path

import pytest

from heartmula_burn.synthetic import write_synthetic_checkpoint

REPO = Path(__file__).resolve().parent.parent


def run_cli(*args, cwd=None, check_rc=None):
    """Runs the real CLI in a subprocess; returns the CompletedProcess."""
    proc = subprocess.run(
        [sys.executable, "-m", "heartmula_burn", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if check_rc is not None:
        assert proc.returncode == check_rc, f"rc={proc.returncode}\nstdout={proc.stdout}\nstderr={proc.stderr}"
    return proc


def assert_clean_failure(proc, *needles):
    """Exit 1, a single-line message containing every needle, no traceback."""
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert str(needle) in lines[0], lines[0]


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory):
    return write_synthetic_checkpoint(tmp_path_factory.mktemp("ckpt_f32"))


@pytest.fixture(scope="session")
def tiny_ckpt_bf16(tmp_path_factory):
    return write_synthetic_checkpoint(tmp_path_factory.mktemp("ckpt_bf16"), dtype="BF16", seed=1)


def load_json(path):
    return json.loads(Path(path).read_text())
