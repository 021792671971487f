"""The sanity hook: run the model from a pack's weights and say whether it behaves.

A pack can hold every byte in place and still be wrong for the model (a transposed weight, two
swapped names, a lossy cast where none belongs). This runs a deterministic forward on fixed inputs
from the pack (HeartMuLa: prompt, depth decoder, KV cache, greedy frames; HeartCodec: VQ
conditioning, one flow-matching estimator call, the ScalarModel decoder to audio) and, given a
reference (the checkpoint or another pack), the same forward from the reference weights cast to the
pack's dtypes, which must agree exactly.

Models are loaded one at a time, tensor by tensor, straight from the mapped files (`_weights`: zero-copy on the
CPU; one host-to-device copy per tensor on a GPU). A file that shrinks while it is read fails the
run naming the file and tensor."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from . import _core
from ._errors import CheckpointError, HeartmulaBurnError
from ._fields import Fields, read_json
from ._packfile import dtype_info
from ._presets import PRESETS, Preset, preset_for_pack
from ._presets.runner import Check, Runner, SanityResult, max_abs
from ._weights import CheckpointArrays, PackArrays, import_torch, load_weights, open_weights

if TYPE_CHECKING:
    import torch

FLOATS = tuple(d.name for d in _core.plain_dtypes() if d.is_float)


def _compare(
    ours: dict[str, torch.Tensor],
    ref: dict[str, torch.Tensor],
    names: tuple[str, ...],
    label: str,
    exact: bool,
    result: SanityResult,
    cosine_bound: float | None = None,
) -> None:
    """One check per output: exact equality when `exact`; else float outputs are judged by their
    cosine similarity when `cosine_bound` is given, and every other difference is only reported."""
    torch = import_torch()
    for name in names:
        a, b = ours[name], ref[name]
        if not a.is_floating_point():
            same = torch.equal(a, b)
            figure = "identical" if same else f"{int((a != b).sum())} of {a.numel()} codes differ"
        else:
            diff = max_abs(a - b)
            same = torch.equal(a, b)  # what diff == 0 would also say: NaN unequal, -0.0 equal to 0.0
            cosine = float(torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0))
            figure = f"max |diff| {diff:.3g}, cosine {cosine:.6f}"
            result.figures[f"{label}: {name}: max_abs_diff"] = diff
            result.figures[f"{label}: {name}: cosine"] = cosine
            if not exact and cosine_bound is not None:
                result.checks.append(Check(f"{label}: {name}", cosine >= cosine_bound, figure))
                continue
        result.checks.append(Check(f"{label}: {name}", same if exact else None, figure))


def pick_device(device: str) -> torch.device:
    torch = import_torch()
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise HeartmulaBurnError(f"--device {device}: CUDA is not available to this torch {torch.__version__}")
        # Exact comparisons need the same arithmetic on both runs: no TF32, deterministic kernels.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    elif device != "cpu":
        raise HeartmulaBurnError(f"--device {device}: choose auto, cuda or cpu")
    return torch.device(device)  # type: ignore[no-any-return]


def resolve_config(
    preset: Preset, pack: PackArrays, reference: CheckpointArrays | PackArrays | None, config_path: str | Path | None
) -> Fields:
    """The model's config.json: --config, else the one the pack carries in its metadata, else the
    reference's; else what the preset makes of the pack (a HeartMuLa pack: its flavour names and shapes)."""
    if config_path is not None:
        return read_json(Path(config_path), "config.json")
    for config in (pack.config, reference.config if reference is not None else None):
        if config is not None:
            return config
    return preset.config_from_pack(pack.pack.metadata, pack.shapes(), pack.path)


def _run_model(
    runner: Runner,
    source: CheckpointArrays | PackArrays,
    names: list[str],
    device: torch.device,
    cast_to: Mapping[str, str] | None = None,
    on_loaded: Callable[[Mapping[str, torch.Tensor]], None] | None = None,
) -> tuple[dict[str, torch.Tensor], float, float]:
    torch = import_torch()
    start = time.perf_counter()
    weights = load_weights(source, names, device, cast_to)
    if on_loaded is not None:
        on_loaded(weights)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    loaded = time.perf_counter()
    outputs = runner.outputs(weights, device)
    done = time.perf_counter()
    del weights
    source.check()  # the bytes read were the file's, not zeros over a truncated end
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return outputs, loaded - start, done - loaded


def run(
    pack: str | Path,
    reference: str | Path | None = None,
    device: str = "auto",
    frames: int = 2,
    config: str | Path | None = None,
    subdir: str | None = None,
) -> SanityResult:
    """Runs the model (HeartMuLa or HeartCodec, told by the pack) from the pack's weights on fixed
    inputs, in PyTorch, and checks its outputs: every weight finite, outputs finite, the KV cache
    agreeing with a recomputation. With `reference` (a checkpoint folder, `subdir` choosing a model
    folder in it, or another pack), the same forward from the reference weights cast to the pack's
    dtypes must agree bit for bit. `device`: "auto" (CUDA when available), "cpu", "cuda" or
    "cuda:N"; `frames`: HeartMuLa frames decoded greedily; `config`: the model's config.json, for a
    pack that does not carry one. Needs torch (`pip install 'heartmula-burn[sanity]'`)."""
    if frames < 0:
        raise ValueError(f"frames={frames}: must be 0 or more")
    torch_device = pick_device(device)
    torch = import_torch()
    ours = PackArrays(pack)
    ref: CheckpointArrays | PackArrays | None = None
    try:
        preset = preset_for_pack(ours.pack.metadata, set(ours.shapes()))
        if preset is None:
            raise CheckpointError.at(
                ours.path, f"holds no model sanity runs ({', '.join(p.title for p in PRESETS)}): nothing to run"
            )
        ref = open_weights(reference, subdir, preset.name) if reference is not None else None
        runner = preset.runner(resolve_config(preset, ours, ref, config), frames)
        dtypes = sorted({ours.dtype(t.name) for t in ours.pack.tensors})
        result = SanityResult(
            str(pack),
            None if reference is None else str(reference),
            str(torch_device),
            ",".join(dtypes),
            frames,
            preset.name,
        )
        shapes = ours.shapes()
        try:
            preset.check_tensors(shapes, runner.config, ours.path)
        except CheckpointError as e:
            result.checks.append(Check("tensors and shapes", False, str(e)))
            return result  # the forward cannot run on the wrong tensors
        names = list(preset.expected_tensors(runner.config))
        result.checks.append(Check("tensors and shapes", True, f"{len(shapes)} tensors as the config expects"))
        if torch_device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(torch_device)

        out, result.timings["load_s"], result.timings["forward_s"] = _run_model(
            runner, ours, names, torch_device, on_loaded=lambda w: runner.weight_checks(w, result)
        )
        runner.output_checks(out, result)
        if ref is not None:
            ref_shapes = ref.shapes()
            mismatched = [n for n in names if ref_shapes.get(n) != shapes[n]]
            if mismatched:
                result.checks.append(
                    Check(
                        "reference holds the same tensors",
                        False,
                        f"{ref.path}: missing or differently shaped: {', '.join(mismatched[:5])}",
                    )
                )
                return result
            pack_dtypes = {n: ours.dtype(n) for n in names}
            lossy = [n for n in names if _narrower(pack_dtypes[n], ref.dtype(n))]
            label = "reference" if not lossy else f"reference cast to the pack's dtypes ({len(lossy)} tensors)"
            ref_out, result.timings["reference_load_s"], result.timings["reference_forward_s"] = _run_model(
                runner, ref, names, torch_device, cast_to=pack_dtypes
            )
            _compare(out, ref_out, runner.compared, label, exact=True, result=result)
            if lossy:
                del ref_out
                full_out, *_ = _run_model(runner, ref, names, torch_device)
                quantized = any(dtype_info(pack_dtypes[n]).is_quantized for n in lossy)
                bound = runner.quantized_cosine_bound if quantized else None
                _compare(
                    out,
                    full_out,
                    runner.compared,
                    "vs the uncast reference "
                    + ("(lossy cast, not judged)" if bound is None else f"(quantized: cosine >= {bound} judged)"),
                    exact=False,
                    result=result,
                    cosine_bound=bound,
                )
        if torch_device.type == "cuda":
            result.figures["peak_gpu_memory_bytes"] = torch.cuda.max_memory_allocated(torch_device)
        return result
    finally:
        ours.close()
        if ref is not None:
            ref.close()


def _narrower(pack_dtype: str, ref_dtype: str) -> bool:
    """Whether casting the reference to the pack's dtype can lose information (floats only:
    the packer never converts integers; quantizing always can)."""
    if ref_dtype not in FLOATS:
        return False
    pack = dtype_info(pack_dtype)
    if not (pack.is_float or pack.is_quantized):
        return False
    return not dtype_info(ref_dtype).casts_exactly_to(pack_dtype)  # the core's table of exact casts


def format_table(result: SanityResult) -> str:
    width = max(len(c.name) for c in result.checks) if result.checks else 10
    marks = {True: "ok  ", False: "FAIL", None: "info"}
    lines = [
        f"{result.pack}: {result.model}, {result.pack_dtype} on {result.device}"
        + (f", against {result.reference}" if result.reference else "")
    ]
    lines += [f"  {marks[c.ok]}  {c.name:<{width}}  {c.figure}" for c in result.checks]
    if result.timings:
        lines.append("  " + ", ".join(f"{k} {v:.2f}" for k, v in result.timings.items()))
    peak = result.figures.get("peak_gpu_memory_bytes")
    if isinstance(peak, int):
        lines.append(f"  peak GPU memory {peak / 2**30:.2f} GiB")
    return "\n".join(lines)
