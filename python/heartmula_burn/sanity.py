"""The sanity hook: run HeartMuLa from a pack's weights and say whether it behaves.

A pack can hold every byte in place and still be wrong for the model (a transposed weight, two
swapped names, a lossy cast where none belongs). This runs a deterministic forward (fixed token ids,
no tokenizer) from the pack and, given a reference (the checkpoint or another pack), the same forward
from the reference weights cast to the pack's dtypes, which must agree exactly.

Models are loaded one at a time, tensor by tensor, straight from the mapped files (zero-copy on the
CPU; one host-to-device copy per tensor on a GPU)."""

from __future__ import annotations

import json
import os
import time
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import ml_dtypes
import numpy as np

from . import heartmula
from .checkpoint import load_checkpoint, read_json
from .errors import CheckpointError, HeartmulaBurnError
from .packfile import NUMPY_DTYPES, dtype_size, open_pack

INSTALL_HINT = "pip install 'heartmula-burn[sanity]' (or: pip install torch)"

# Fixed inputs (the reference recipe): tags and lyrics framed by BOS/EOS as the pipeline does, a
# placeholder row for the MuQ embedding between them, then teacher-forced codes for frame 1.
TAGS = (128000, 1000, 2000, 3000, 128001)
LYRICS = (128000, 4000, 5000, 6000, 7000, 128001)
CFG_SCALE = 1.5  # the pipeline's default guidance; row 0 is conditional, row 1 unconditional
OUTPUTS = ("h_last", "c0_logits", "decoder_logits", "frame2_c0_logits", "greedy_codes")
# The same frame through the KV cache and recomputed from scratch differ only by summation order.
CACHE_TOLERANCE = 1e-4


@dataclass
class Check:
    name: str
    ok: bool | None  # None: reported, not judged
    figure: str


@dataclass
class SanityResult:
    pack: str
    reference: str | None
    device: str
    pack_dtype: str
    frames: int
    checks: list[Check] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    figures: dict[str, object] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(c.ok is not False for c in self.checks)

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if c.ok is False]

    def to_dict(self) -> dict:
        return {**asdict(self), "ok": self.ok}


# ---------------------------------------------------------------------------------------------
# Weights


class CheckpointArrays:
    """A safetensors checkpoint as read-only numpy views over its mapped shards."""

    def __init__(self, root: str | Path, subdir: str | None = None):
        self.checkpoint = load_checkpoint(root, subdir)
        self.path = self.checkpoint.model_dir
        self._tensors = {t.name: t for t in self.checkpoint.tensors}
        self._maps = {shard: np.memmap(shard, dtype=np.uint8, mode="r") for shard in self.checkpoint.shards}

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {n: t.shape for n, t in self._tensors.items()}

    def dtype(self, name: str) -> str:
        t = self._tensors[name]
        if t.dtype not in NUMPY_DTYPES:
            raise CheckpointError.at(t.file, f"dtype {t.source_dtype} is not supported here", tensor=name)
        return t.dtype

    def numpy(self, name: str) -> np.ndarray:
        t = self._tensors[name]
        raw = self._maps[t.file][t.file_offset : t.file_offset + t.byte_len]
        return raw.view(NUMPY_DTYPES[self.dtype(name)]).reshape(t.shape)

    def close(self) -> None:
        self._maps.clear()


class PackArrays:
    def __init__(self, path: str | Path):
        self.pack = open_pack(path)
        self.path = self.pack.path

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {t.name: t.shape for t in self.pack.tensors}

    def dtype(self, name: str) -> str:
        return self.pack.info(name).dtype

    def numpy(self, name: str) -> np.ndarray:
        return self.pack.numpy(name)

    def close(self) -> None:
        self.pack.close()


def open_weights(path: str | Path, subdir: str | None = None):
    path = Path(path)
    if path.is_file() and path.suffix != ".safetensors":
        return PackArrays(path)
    return CheckpointArrays(path, subdir)


def _import_torch():
    try:
        import torch
    except ImportError:
        raise HeartmulaBurnError(f"the sanity check needs PyTorch, which is not installed: {INSTALL_HINT}") from None
    return torch


def _as_torch(array: np.ndarray):
    torch = _import_torch()
    with warnings.catch_warnings():
        # The views are read-only (the file is mapped read-only); nothing here writes to them.
        warnings.simplefilter("ignore", UserWarning)
        if array.dtype == ml_dtypes.bfloat16:
            return torch.from_numpy(array.view(np.uint16)).view(torch.bfloat16)
        return torch.from_numpy(array)


def load_weights(source, names, device, cast_to: Mapping[str, str] | None = None) -> dict:
    """name -> tensor on `device`, in the stored dtype or, for names in `cast_to`, cast to that Burn
    dtype (round to nearest even, as the packer casts)."""
    torch = _import_torch()
    torch_dtypes = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
    weights = {}
    for name in names:
        tensor = _as_torch(source.numpy(name)).to(device)
        target = (cast_to or {}).get(name)
        if target is not None and target != source.dtype(name):
            tensor = tensor.to(torch_dtypes[target])
        weights[name] = tensor
    return weights


# ---------------------------------------------------------------------------------------------
# Config


def resolve_config(pack: PackArrays, reference, config_path: str | Path | None) -> heartmula.HeartMuLaConfig:
    """The model's sizes: --config, else the config.json the pack carries in its metadata, else the
    reference checkpoint's, else the flavour names in the metadata with vocabularies from shapes."""
    if config_path is not None:
        path = Path(config_path)
        return heartmula.parse_config(read_json(path, "config.json"), path)
    if "config" in pack.pack.metadata:
        try:
            config = json.loads(pack.pack.metadata["config"])
        except json.JSONDecodeError as e:
            raise CheckpointError.at(pack.path, f"metadata 'config' is not valid JSON: {e}") from None
        return heartmula.parse_config(config, pack.path)
    if isinstance(reference, CheckpointArrays) and reference.checkpoint.config is not None:
        return heartmula.parse_config(reference.checkpoint.config, reference.checkpoint.config_path)
    meta, shapes = pack.pack.metadata, pack.shapes()
    if meta.get("backbone_flavor") in heartmula.FLAVORS and meta.get("decoder_flavor") in heartmula.FLAVORS:
        try:
            config = {
                "backbone_flavor": meta["backbone_flavor"],
                "decoder_flavor": meta["decoder_flavor"],
                "text_vocab_size": shapes["text_embeddings.weight"][0],
                "audio_vocab_size": shapes["codebook0_head.weight"][0],
                "audio_num_codebooks": shapes["audio_head"][0] + 1,
                "muq_dim": shapes["muq_linear.weight"][1],
            }
        except (KeyError, IndexError) as e:
            raise CheckpointError.at(pack.path, f"tensor {e} missing or mis-shaped; cannot size the model") from None
        return heartmula.parse_config(config, pack.path)
    raise CheckpointError.at(
        pack.path,
        "the pack does not say which HeartMuLa it holds (no 'config' in its metadata); pass --config CONFIG_JSON",
    )


# ---------------------------------------------------------------------------------------------
# The forward


def forward_outputs(model, frames: int) -> dict:
    """Every output the checks look at, as CPU tensors: the prompt's last hidden state and codebook-0
    logits, teacher-forced depth-decoder logits, frame 2's codebook-0 logits through the KV cache
    and recomputed without it, and `frames` greedily decoded frames."""
    import torch

    from .forward import KVCache

    cfg, device = model.cfg, model.device
    k, vocab = cfg.audio_num_codebooks, cfg.audio_vocab_size
    text_ids = [t % cfg.text_vocab_size for t in TAGS] + [0] + [t % cfg.text_vocab_size for t in LYRICS]
    s = len(text_ids)
    tokens = torch.zeros(2, s, k + 1, dtype=torch.long, device=device)
    tokens[:, :, k] = torch.tensor(text_ids, device=device)
    mask = torch.zeros(2, s, k + 1, dtype=torch.bool, device=device)
    mask[:, :, k] = True
    muq = (0.01 * torch.sin(torch.arange(cfg.muq_dim, dtype=torch.float32, device=device))).expand(2, -1)
    uncond = torch.tensor([False, True], device=device)

    def frame_row(codes):  # [2, k] codes -> the row that feeds them back to the backbone
        row = torch.cat([codes, torch.zeros(2, 1, dtype=torch.long, device=device)], dim=1)[:, None]
        row_mask = torch.ones_like(row, dtype=torch.bool)
        row_mask[..., k] = False
        return model.embed(row, row_mask, uncond)

    def guided_argmax(logits):  # classifier-free guidance, then greedy
        return (logits[1] + (logits[0] - logits[1]) * CFG_SCALE).argmax(-1).expand(2)

    out = {}
    with torch.no_grad():
        cache = KVCache.empty(cfg.backbone.num_layers)
        h = model.embed(tokens, mask, uncond, muq, muq_row=len(TAGS))
        last = model.backbone(h, torch.arange(s, device=device), cache)[:, -1]
        after_prompt = cache.copy()
        out["h_last"] = last
        out["c0_logits"] = model.codebook0_logits(last)

        forced = torch.tensor([(100 * (i + 1)) % vocab for i in range(k)], device=device).expand(2, k)
        out["decoder_logits"], _ = model.depth_decode(last, forced[:, 0], lambda i, _logits: forced[:, i])
        h2 = frame_row(forced)
        out["frame2_c0_logits"] = model.codebook0_logits(
            model.backbone(h2, torch.tensor([s], device=device), cache)[:, -1]
        )
        fresh = KVCache.empty(cfg.backbone.num_layers)
        recomputed = model.backbone(torch.cat([h, h2], dim=1), torch.arange(s + 1, device=device), fresh)[:, -1]
        out["frame2_c0_recomputed"] = model.codebook0_logits(recomputed)

        cache, last_h, logits, codes, step_logits = after_prompt, last, out["c0_logits"], [], []
        for f in range(frames):
            c0 = guided_argmax(logits)
            decoder_logits, rest = model.depth_decode(last_h, c0, lambda i, li: guided_argmax(li))
            frame = torch.cat([c0[:, None], rest], dim=1)
            codes.append(frame[0])
            step_logits += [logits, decoder_logits]
            if f + 1 < frames:
                last_h = model.backbone(frame_row(frame), torch.tensor([s + f], device=device), cache)[:, -1]
                logits = model.codebook0_logits(last_h)
        out["greedy_codes"] = torch.stack(codes) if codes else torch.zeros(0, k, dtype=torch.long)
        out["greedy_finite"] = torch.tensor(all(bool(torch.isfinite(x).all()) for x in step_logits))
    return {name: value.detach().to("cpu") for name, value in out.items()}


def _run_model(
    source, names, cfg, device, cast_to=None, on_loaded: Callable[[dict], None] | None = None, frames: int = 2
) -> tuple[dict, float, float]:
    from .forward import HeartMuLa

    torch = _import_torch()
    start = time.perf_counter()
    weights = load_weights(source, names, device, cast_to)
    if on_loaded is not None:
        on_loaded(weights)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    loaded = time.perf_counter()
    outputs = forward_outputs(HeartMuLa(weights, cfg), frames)
    done = time.perf_counter()
    del weights
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return outputs, loaded - start, done - loaded


# ---------------------------------------------------------------------------------------------
# Checks


def _max_abs(x) -> float:
    return float(x.abs().max()) if x.numel() else 0.0


def _finite_weights(weights: dict, result: SanityResult) -> None:
    import torch

    bad = {n: int((~torch.isfinite(w)).sum()) for n, w in weights.items() if w.is_floating_point()}
    bad = {n: c for n, c in bad.items() if c}
    figure = (
        "all finite"
        if not bad
        else f"{sum(bad.values())} non-finite values in "
        + ", ".join(f"'{n}' ({c})" for n, c in list(bad.items())[:3])
        + (f" and {len(bad) - 3} more tensors" if len(bad) > 3 else "")
    )
    result.checks.append(Check("weights finite", not bad, f"{len(weights)} tensors, {figure}"))


def _output_checks(out: dict, cfg, result: SanityResult) -> None:
    import torch

    for name, label in (
        ("c0_logits", "prompt codebook-0 logits"),
        ("decoder_logits", "teacher-forced logits, codebooks 1-7"),
        ("frame2_c0_logits", "frame 2 codebook-0 logits (KV cache)"),
    ):
        finite = bool(torch.isfinite(out[name]).all())
        result.checks.append(Check(f"{label} finite", finite, f"max |logit| {_max_abs(out[name]):.4g}"))
    cached, recomputed = out["frame2_c0_logits"], out["frame2_c0_recomputed"]
    diff = _max_abs(cached - recomputed)
    bound = CACHE_TOLERANCE * max(1.0, _max_abs(recomputed))
    result.checks.append(
        Check("KV cache agrees with a full recompute", diff <= bound, f"max |diff| {diff:.3g} (allowed {bound:.3g})")
    )
    codes = out["greedy_codes"]
    in_range = bool(((codes >= 0) & (codes < cfg.audio_vocab_size)).all()) and bool(out["greedy_finite"])
    result.checks.append(
        Check(
            f"greedy decode of {len(codes)} frame(s)",
            in_range,
            f"codes {codes.tolist()} (vocabulary {cfg.audio_vocab_size})",
        )
    )


def _compare(ours: dict, ref: dict, label: str, exact: bool, result: SanityResult) -> None:
    """One check per output: exact equality when `exact`, else the difference is only reported."""
    import torch

    for name in OUTPUTS:
        a, b = ours[name], ref[name]
        if name == "greedy_codes":
            same = torch.equal(a, b)
            figure = "identical" if same else f"{int((a != b).sum())} of {a.numel()} codes differ"
        else:
            diff = _max_abs(a - b)
            same = diff == 0.0 and torch.equal(a, b)
            cosine = float(torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0))
            figure = f"max |diff| {diff:.3g}, cosine {cosine:.6f}"
            result.figures[f"{label}: {name}: max_abs_diff"] = diff
        result.checks.append(Check(f"{label}: {name}", same if exact else None, figure))


def pick_device(device: str):
    torch = _import_torch()
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
    return torch.device(device)


def run(
    pack: str | Path,
    reference: str | Path | None = None,
    device: str = "auto",
    frames: int = 2,
    config: str | Path | None = None,
    subdir: str | None = None,
) -> SanityResult:
    """Run the checks; see the module's docstring. `reference` is a checkpoint folder or a pack."""
    if frames < 0:
        raise HeartmulaBurnError(f"--frames {frames}: must be 0 or more")
    torch_device = pick_device(device)
    torch = _import_torch()
    ours = PackArrays(pack)
    ref = open_weights(reference, subdir) if reference is not None else None
    try:
        cfg = resolve_config(ours, ref, config)
        dtypes = sorted({ours.dtype(t.name) for t in ours.pack.tensors})
        result = SanityResult(
            str(pack), None if reference is None else str(reference), str(torch_device), ",".join(dtypes), frames
        )
        shapes = ours.shapes()
        try:
            heartmula.check_tensors(shapes, cfg, ours.path)
        except CheckpointError as e:
            result.checks.append(Check("tensors and shapes", False, str(e)))
            return result  # the forward cannot run on the wrong tensors
        expected = heartmula.expected_tensors(cfg)
        result.checks.append(Check("tensors and shapes", True, f"{len(shapes)} tensors as the config expects"))
        names = list(expected)
        if torch_device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(torch_device)

        out, result.timings["load_s"], result.timings["forward_s"] = _run_model(
            ours, names, cfg, torch_device, on_loaded=lambda w: _finite_weights(w, result), frames=frames
        )
        _output_checks(out, cfg, result)
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
                ref, names, cfg, torch_device, cast_to=pack_dtypes, frames=frames
            )
            _compare(out, ref_out, label, exact=True, result=result)
            if lossy:
                del ref_out
                full_out, *_ = _run_model(ref, names, cfg, torch_device, frames=frames)
                _compare(out, full_out, "vs the uncast reference (lossy cast, not judged)", exact=False, result=result)
        if torch_device.type == "cuda":
            result.figures["peak_gpu_memory_bytes"] = torch.cuda.max_memory_allocated(torch_device)
        result.figures["max_abs_c0_logit"] = _max_abs(out["c0_logits"])
        result.figures["greedy_codes"] = out["greedy_codes"].tolist()
        return result
    finally:
        ours.close()
        if ref is not None:
            ref.close()


def _narrower(pack_dtype: str, ref_dtype: str) -> bool:
    """Whether casting the reference to the pack's dtype can lose information (floats only:
    the packer never converts integers)."""
    floats = ("F64", "F32", "F16", "BF16")
    if pack_dtype == ref_dtype or pack_dtype not in floats or ref_dtype not in floats:
        return False
    if {pack_dtype, ref_dtype} == {"F16", "BF16"}:
        return True
    return dtype_size(pack_dtype) < dtype_size(ref_dtype)


def format_table(result: SanityResult) -> str:
    width = max(len(c.name) for c in result.checks) if result.checks else 10
    marks = {True: "ok  ", False: "FAIL", None: "info"}
    lines = [
        f"{result.pack}: {result.pack_dtype} on {result.device}"
        + (f", against {result.reference}" if result.reference else "")
    ]
    lines += [f"  {marks[c.ok]}  {c.name:<{width}}  {c.figure}" for c in result.checks]
    if result.timings:
        lines.append("  " + ", ".join(f"{k} {v:.2f}" for k, v in result.timings.items()))
    if "peak_gpu_memory_bytes" in result.figures:
        lines.append(f"  peak GPU memory {result.figures['peak_gpu_memory_bytes'] / 2**30:.2f} GiB")
    return "\n".join(lines)
