"""The generic sanity runner (`_sanity.py`), whatever the model: its checks, comparisons, figures and
table, each against a value worked out by hand here, and a run on the CPU that must not touch CUDA."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from conftest import run_cli

if os.environ.get("HEARTMULA_REQUIRE_TORCH") == "1":
    import torch
else:
    torch = pytest.importorskip("torch")

from heartmula_burn import _sanity as sanity
from heartmula_burn._errors import HeartmulaBurnError
from heartmula_burn._fields import Fields
from heartmula_burn._presets import runner
from heartmula_burn._weights import PackArrays

CODEC = "HeartCodec-oss"


def _result(reference: str | None = None) -> sanity.SanityResult:
    return sanity.SanityResult("lm.bpk", reference, "cpu", "F32", 1, "heartmula")


@pytest.fixture(scope="module")
def packs(tiny_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("runner_packs")
    run_cli("pack", tiny_root, "-o", f"{out}/", "-q", check_rc=0)
    assert {"heartmula.bpk", "heartcodec.bpk"} <= {p.name for p in out.iterdir()}
    return out


# ---- checks and comparisons --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "named", "more"),
    [
        (1, "'w0' (1)", ""),
        (3, "'w0' (1), 'w1' (2), 'w2' (3)", ""),
        (4, "'w0' (1), 'w1' (2), 'w2' (3)", " and 1 more tensors"),
        (5, "'w0' (1), 'w1' (2), 'w2' (3)", " and 2 more tensors"),
    ],
)
def test_non_finite_weights_are_counted_and_three_tensors_named(bad, named, more):
    """Tensor wI holds I + 1 non-finite values (NaN, +inf, -inf in turn); integer tensors are not
    looked at. The figure: the total, the first three tensors with their counts, then how many more."""
    weights = {f"w{i}": torch.ones(8) for i in range(6)}
    weights["ids"] = torch.zeros(3, dtype=torch.int64)
    for i in range(bad):
        weights[f"w{i}"][: i + 1] = (float("nan"), float("inf"), float("-inf"))[i % 3]
    result = _result()
    runner.finite_weights(weights, result)
    total = sum(range(1, bad + 1))
    assert [(c.name, c.ok, c.figure) for c in result.checks] == [
        ("weights finite", False, f"7 tensors, {total} non-finite values in {named}{more}")
    ]


def test_finite_weights_pass():
    result = _result()
    runner.finite_weights({"w": torch.ones(2), "b": torch.zeros(1)}, result)
    assert [(c.ok, c.figure) for c in result.checks] == [(True, "2 tensors, all finite")]


def test_codes_are_compared_exactly_and_the_figure_counts_the_differences():
    result = _result()
    # One code equal, two greater, three less: counting with any other comparison than != gives
    # another number than 5.
    a, b = torch.tensor([5, 5, 5, 5, 5, 5]), torch.tensor([5, 1, 2, 7, 8, 9])
    sanity._compare({"codes": a, "same": a}, {"codes": b, "same": a.clone()}, ("codes", "same"), "ref", True, result)
    assert [(c.name, c.ok, c.figure) for c in result.checks] == [
        ("ref: codes", False, "5 of 6 codes differ"),
        ("ref: same", True, "identical"),
    ]


@pytest.mark.parametrize(
    ("ours", "bound", "ok", "cosine"),
    [
        ([1.0, 0.0], 1.0, True, 1.0),  # a cosine equal to the bound passes it
        ([0.0, 1.0], 0.5, False, 0.0),
        ([0.0, 1.0], None, None, 0.0),  # no bound: reported, not judged
    ],
)
def test_inexact_float_outputs_are_judged_by_their_cosine(ours, bound, ok, cosine):
    result = _result()
    ref = {"h": torch.tensor([1.0, 0.0])}
    sanity._compare({"h": torch.tensor(ours)}, ref, ("h",), "vs", exact=False, result=result, cosine_bound=bound)
    assert [(c.name, c.ok) for c in result.checks] == [("vs: h", ok)]
    assert result.figures["vs: h: cosine"] == cosine
    assert result.figures["vs: h: max_abs_diff"] == (0.0 if ok else 1.0)


@pytest.mark.parametrize("device", ["a100", "bogus", "tpu"])  # before "auto", between it and "cpu", after both
def test_a_device_that_is_neither_cpu_nor_cuda_is_refused(device):
    with pytest.raises(HeartmulaBurnError, match=f"--device {device}: choose auto, cuda or cpu"):
        sanity.pick_device(device)


def test_cuda_is_asked_for_the_arithmetic_an_exact_comparison_needs(monkeypatch):
    """Without a GPU (is_available faked): what choosing CUDA sets before any kernel runs. TF32 off
    for matmul and cuDNN, and cuBLAS's deterministic workspace, unless the user set one."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    saved = matmul.allow_tf32, cudnn.allow_tf32  # torch's own flag objects: restored by hand
    try:
        matmul.allow_tf32 = cudnn.allow_tf32 = True
        assert sanity.pick_device("auto") == torch.device("cuda")
        assert not matmul.allow_tf32 and not cudnn.allow_tf32
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
        monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")
        assert sanity.pick_device("cuda:1") == torch.device("cuda:1")
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"
    finally:
        matmul.allow_tf32, cudnn.allow_tf32 = saved


# Whether casting a reference of the second dtype to the first can lose information, by hand: only
# floats count (integers are never converted); F16 and BF16 lose either way; quantizing always does.
NARROWER = [
    ("F32", "F32", False),
    ("BF16", "F32", True),
    ("F16", "F32", True),
    ("F32", "F64", True),
    ("F16", "BF16", True),
    ("BF16", "F16", True),
    ("F32", "BF16", False),
    ("F64", "F32", False),
    ("F32", "F16", False),
    ("Q8S_B32", "F32", True),
    ("Q8S_B32", "BF16", True),
    ("I32", "F32", False),
    ("F32", "I64", False),
    ("I64", "I64", False),
]


@pytest.mark.parametrize(("pack", "ref", "narrower"), NARROWER)
def test_which_casts_of_the_reference_are_lossy(pack, ref, narrower):
    # Strings made at run time, as the pack reader returns them, not the interned literals above.
    assert sanity._narrower("".join(pack), "".join(ref)) is narrower


# ---- the table -----------------------------------------------------------------------------------


def test_the_table_lists_the_checks_aligned_then_timings_and_peak_memory():
    result = _result(reference="ckpt")
    result.checks += [
        sanity.Check("a longer name", True, "fine"),
        sanity.Check("b", False, "bad"),
        sanity.Check("c", None, "noted"),
    ]
    result.timings = {"load_s": 1.234, "forward_s": 0.5}
    result.figures["peak_gpu_memory_bytes"] = 3 * 2**30 + 2**29
    table = sanity.format_table(result).splitlines()
    assert table == [
        "lm.bpk: heartmula, F32 on cpu, against ckpt",
        "  ok    a longer name  fine",
        "  FAIL  b              bad",
        "  info  c              noted",
        "  load_s 1.23, forward_s 0.50",
        "  peak GPU memory 3.50 GiB",
    ]


def test_the_table_without_reference_timings_or_peak_memory():
    result = _result()
    result.checks.append(sanity.Check("x", True, "y"))
    assert sanity.format_table(result) == "lm.bpk: heartmula, F32 on cpu\n  ok    x  y"


# ---- runs --------------------------------------------------------------------------------------


def test_a_cpu_run_touches_no_cuda_and_times_its_phases_within_the_call(packs, tiny_root, monkeypatch):
    def no_cuda(*args, **kwargs):
        raise AssertionError("a run on the CPU called CUDA")

    for name in ("synchronize", "empty_cache", "reset_peak_memory_stats", "max_memory_allocated"):
        monkeypatch.setattr(torch.cuda, name, no_cuda)
    start = time.perf_counter()
    result = sanity.run(packs / "heartmula.bpk", reference=tiny_root, device="cpu")
    wall = time.perf_counter() - start
    assert result.ok, sanity.format_table(result)
    assert result.frames == 2 and len(result.figures["greedy_codes"]) == 2  # as `sanity --frames` (default 2)
    assert "peak_gpu_memory_bytes" not in result.figures
    assert set(result.timings) == {"load_s", "forward_s", "reference_load_s", "reference_forward_s"}
    assert all(0 < seconds < wall for seconds in result.timings.values()), result.timings
    assert sum(result.timings.values()) < wall


def test_a_reference_of_other_tensors_fails_one_check_naming_five_of_them(packs):
    """The codec's pack as the LM's reference: none of the LM's tensors is there. One failed check
    naming five of them (of 289), and the forward is not compared."""
    result = sanity.run(packs / "heartmula.bpk", reference=packs / "heartcodec.bpk", device="cpu", frames=0)
    failed = result.failed
    assert [c.name for c in failed] == ["reference holds the same tensors"]
    assert failed[0].figure.startswith(f"{packs / 'heartcodec.bpk'}: missing or differently shaped: ")
    listed = failed[0].figure.split("missing or differently shaped: ")[1].split(", ")
    lm = PackArrays(packs / "heartmula.bpk")
    try:
        assert len(set(listed)) == 5 and set(listed) <= {t.name for t in lm.pack.tensors}
    finally:
        lm.close()
    assert not any(c.name.startswith("reference:") for c in result.checks)


def test_a_runner_must_say_how_it_runs_and_how_its_outputs_are_checked():
    config = Fields({}, Path("config.json"))

    class NoChecks(sanity.Runner):
        compared = ()

        def outputs(self, weights, device):
            return {}

    class NoOutputs(sanity.Runner):
        compared = ()

        def output_checks(self, out, result):
            pass

    with pytest.raises(TypeError, match="output_checks"):
        NoChecks(config, 1)
    with pytest.raises(TypeError, match="outputs"):
        NoOutputs(config, 1)


def test_a_negative_frame_count_is_refused_before_anything_is_opened(tmp_path):
    with pytest.raises(ValueError, match=r"frames=-1: must be 0 or more"):
        sanity.run(tmp_path / "missing.bpk", device="cpu", frames=-1)
