"""The sanity hook: run the model from a pack's weights and say whether it behaves.

A pack can hold every byte in place and still be wrong for the model (a transposed weight, two
swapped names, a lossy cast where none belongs). This runs a deterministic forward on fixed inputs
from the pack (HeartMuLa: prompt, depth decoder, KV cache, greedy frames; HeartCodec: VQ
conditioning, one flow-matching estimator call, the ScalarModel decoder to audio) and, given a
reference (the checkpoint or another pack), the same forward from the reference weights cast to the
pack's dtypes, which must agree exactly.

Models are loaded one at a time, tensor by tensor, straight from the mapped files (zero-copy on the
CPU; one host-to-device copy per tensor on a GPU). A file that shrinks while it is read fails the
run naming the file and tensor."""

from __future__ import annotations

import os
import time
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import ml_dtypes
import numpy as np

from ._checkpoint import load_checkpoint
from ._errors import CheckpointError, HeartmulaBurnError, SourceError
from ._fields import Fields, read_json
from ._packfile import NUMPY_DTYPES, MappedFile, dtype_size, open_pack
from ._presets import Preset, config_of_pack, preset_for_pack
from ._presets import heartcodec as codec_preset
from ._presets import heartmula as lm_preset

if TYPE_CHECKING:
    import torch

INSTALL_HINT = "pip install 'heartmula-burn[sanity]' (or: pip install torch)"
FLOATS = ("F64", "F32", "F16", "BF16")


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
    model: str = "heartmula"
    checks: list[Check] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    figures: dict[str, object] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(c.ok is not False for c in self.checks)

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if c.ok is False]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


# ---------------------------------------------------------------------------------------------
# Weights


class CheckpointArrays:
    """A safetensors checkpoint as read-only numpy views over its mapped shards."""

    def __init__(self, root: str | Path, subdir: str | None = None, model: str | None = None):
        self.checkpoint = load_checkpoint(root, subdir, model=model)
        self.path = self.checkpoint.model_dir
        self.config = self.checkpoint.config
        self._tensors = {t.name: t for t in self.checkpoint.tensors}
        self._files = {shard: MappedFile(shard, SourceError, self._locator(shard)) for shard in self.checkpoint.shards}

    def _locator(self, shard: Path) -> Callable[[int], str | None]:
        return lambda offset: self._tensor_at(shard, offset)

    def _tensor_at(self, shard: Path, offset: int) -> str | None:
        return next(
            (
                t.name
                for t in self._tensors.values()
                if t.file == shard and t.file_offset <= offset < t.file_offset + t.byte_len
            ),
            None,
        )

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {n: t.shape for n, t in self._tensors.items()}

    def dtype(self, name: str) -> str:
        t = self._tensors[name]
        if t.dtype not in NUMPY_DTYPES:
            raise CheckpointError.at(t.file, f"dtype {t.source_dtype} is not supported here", tensor=name)
        return t.dtype

    def numpy(self, name: str) -> np.ndarray[Any, Any]:
        t = self._tensors[name]
        return self._files[t.file].array(t.file_offset, t.byte_len, NUMPY_DTYPES[self.dtype(name)], t.shape, name)

    def check(self) -> None:
        for f in self._files.values():
            f.check()

    def close(self) -> None:
        for f in self._files.values():
            f.close()


class PackArrays:
    def __init__(self, path: str | Path):
        self.pack = open_pack(path)
        self.path = self.pack.path
        self.config = config_of_pack(self.pack.metadata, self.path)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {t.name: t.shape for t in self.pack.tensors}

    def dtype(self, name: str) -> str:
        return self.pack.info(name).dtype

    def numpy(self, name: str) -> np.ndarray[Any, Any]:
        return self.pack.numpy(name)

    def check(self) -> None:
        self.pack.check()

    def close(self) -> None:
        self.pack.close()


def open_weights(
    path: str | Path, subdir: str | None = None, model: str | None = None
) -> CheckpointArrays | PackArrays:
    path = Path(path)
    if path.is_file() and path.suffix != ".safetensors":
        return PackArrays(path)
    return CheckpointArrays(path, subdir, model)


def _import_torch() -> Any:
    try:
        import torch
    except ImportError:
        raise HeartmulaBurnError(f"the sanity check needs PyTorch, which is not installed: {INSTALL_HINT}") from None
    return torch


def _as_torch(array: np.ndarray[Any, Any]) -> torch.Tensor:
    torch = _import_torch()
    with warnings.catch_warnings():
        # The views are read-only (the file is mapped read-only); nothing here writes to them.
        warnings.simplefilter("ignore", UserWarning)
        if array.dtype == ml_dtypes.bfloat16:
            return torch.from_numpy(array.view(np.uint16)).view(torch.bfloat16)  # type: ignore[no-any-return]
        return torch.from_numpy(array)  # type: ignore[no-any-return]


def load_weights(
    source: CheckpointArrays | PackArrays,
    names: list[str],
    device: torch.device,
    cast_to: Mapping[str, str] | None = None,
) -> dict[str, torch.Tensor]:
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
# The models


class Runner(ABC):
    """How one model is run and judged: its outputs (those compared with a reference, in order),
    what its weights must satisfy, and what its outputs must."""

    preset: ClassVar[Preset]
    compared: ClassVar[tuple[str, ...]]

    def __init__(self, config: Fields, frames: int) -> None:
        self.config = config
        self.frames = frames

    @abstractmethod
    def outputs(self, weights: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
        """Every output the checks look at, as CPU tensors."""

    def weight_checks(self, weights: dict[str, torch.Tensor], result: SanityResult) -> None:
        _finite_weights(weights, result)

    @abstractmethod
    def output_checks(self, out: dict[str, torch.Tensor], result: SanityResult) -> None: ...


class HeartMuLaRunner(Runner):
    preset = lm_preset.HeartMuLa()
    compared = ("h_last", "c0_logits", "decoder_logits", "frame2_c0_logits", "greedy_codes")
    # Fixed inputs (the reference recipe): tags and lyrics framed by BOS/EOS as the pipeline does, a
    # placeholder row for the MuQ embedding between them, then teacher-forced codes for frame 1.
    TAGS = (128000, 1000, 2000, 3000, 128001)
    LYRICS = (128000, 4000, 5000, 6000, 7000, 128001)
    CFG_SCALE = 1.5  # the pipeline's default guidance; row 0 is conditional, row 1 unconditional
    # The same frame through the KV cache and recomputed from scratch differ only by summation order.
    CACHE_TOLERANCE = 1e-4

    def __init__(self, config: Fields, frames: int) -> None:
        super().__init__(config, frames)
        self.cfg = lm_preset.parse_config(config)

    def outputs(self, weights: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
        from ._forward import HeartMuLa

        return forward_outputs(HeartMuLa(weights, self.cfg), self.frames)

    def output_checks(self, out: dict[str, torch.Tensor], result: SanityResult) -> None:
        torch = _import_torch()
        for name, label in (
            ("c0_logits", "prompt codebook-0 logits"),
            ("decoder_logits", "teacher-forced logits, codebooks 1-7"),
            ("frame2_c0_logits", "frame 2 codebook-0 logits (KV cache)"),
        ):
            finite = bool(torch.isfinite(out[name]).all())
            result.checks.append(Check(f"{label} finite", finite, f"max |logit| {_max_abs(out[name]):.4g}"))
        cached, recomputed = out["frame2_c0_logits"], out["frame2_c0_recomputed"]
        diff = _max_abs(cached - recomputed)
        bound = self.CACHE_TOLERANCE * max(1.0, _max_abs(recomputed))
        result.checks.append(
            Check(
                "KV cache agrees with a full recompute", diff <= bound, f"max |diff| {diff:.3g} (allowed {bound:.3g})"
            )
        )
        codes = out["greedy_codes"]
        vocab = self.cfg.audio_vocab_size
        in_range = bool(((codes >= 0) & (codes < vocab)).all()) and bool(out["greedy_finite"])
        result.checks.append(
            Check(f"greedy decode of {len(codes)} frame(s)", in_range, f"codes {codes.tolist()} (vocabulary {vocab})")
        )
        result.figures["max_abs_c0_logit"] = _max_abs(out["c0_logits"])
        result.figures["greedy_codes"] = codes.tolist()


def forward_outputs(model: Any, frames: int) -> dict[str, torch.Tensor]:
    """HeartMuLa's outputs: the prompt's last hidden state and codebook-0 logits, teacher-forced
    depth-decoder logits, frame 2's codebook-0 logits through the KV cache and recomputed without
    it, and `frames` greedily decoded frames."""
    import torch

    from ._forward import KVCache

    cfg, device = model.cfg, model.device
    k, vocab = cfg.audio_num_codebooks, cfg.audio_vocab_size
    r = HeartMuLaRunner
    text_ids = [t % cfg.text_vocab_size for t in r.TAGS] + [0] + [t % cfg.text_vocab_size for t in r.LYRICS]
    s = len(text_ids)
    tokens = torch.zeros(2, s, k + 1, dtype=torch.long, device=device)
    tokens[:, :, k] = torch.tensor(text_ids, device=device)
    mask = torch.zeros(2, s, k + 1, dtype=torch.bool, device=device)
    mask[:, :, k] = True
    muq = (0.01 * torch.sin(torch.arange(cfg.muq_dim, dtype=torch.float32, device=device))).expand(2, -1)
    uncond = torch.tensor([False, True], device=device)

    def frame_row(codes: torch.Tensor) -> torch.Tensor:  # [2, k] codes -> the row that feeds them back
        row = torch.cat([codes, torch.zeros(2, 1, dtype=torch.long, device=device)], dim=1)[:, None]
        row_mask = torch.ones_like(row, dtype=torch.bool)
        row_mask[..., k] = False
        return model.embed(row, row_mask, uncond)  # type: ignore[no-any-return]

    def guided_argmax(logits: torch.Tensor) -> torch.Tensor:  # classifier-free guidance, then greedy
        return (logits[1] + (logits[0] - logits[1]) * r.CFG_SCALE).argmax(-1).expand(2)

    out = {}
    with torch.no_grad():
        cache = KVCache.empty(cfg.backbone.num_layers)
        h = model.embed(tokens, mask, uncond, muq, muq_row=len(r.TAGS))
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

        cache, last_h, logits = after_prompt, last, out["c0_logits"]
        codes, step_logits = [], []
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


class HeartCodecRunner(Runner):
    preset = codec_preset.HeartCodec()
    compared = ("vq_condition", "estimator_velocity", "audio")
    CODE_FRAMES = 4  # 12.5 Hz codes -> 8 latent frames (25 Hz) -> 8 x 1920 audio samples per channel
    GUIDANCE = 1.25  # heartlib's detokenize default
    TIMESTEP = 0.5

    def __init__(self, config: Fields, frames: int) -> None:
        super().__init__(config, frames)
        self.cfg = codec_preset.parse_config(config)

    def inputs(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Fixed codes [1, Q, CODE_FRAMES] and a fixed latent [2 * CODE_FRAMES, out_channels] whose
        values are multiples of 1/9 (so the decoder's rounding cannot flip any of them)."""
        torch = _import_torch()
        c = self.cfg
        q = torch.arange(c.num_quantizers, device=device)[:, None]
        t = torch.arange(self.CODE_FRAMES, device=device)[None, :]
        codes = ((q * 977 + t * 131 + 7) % c.codebook_size)[None]
        frames = 2 * self.CODE_FRAMES
        i = torch.arange(frames, device=device)[:, None]
        j = torch.arange(c.out_channels, device=device)[None, :]
        latent = (((i * 7 + j * 3) % 19) - 9).float() / 9
        return codes, latent

    def outputs(self, weights: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
        from ._codec_forward import HeartCodec

        torch = _import_torch()
        model, c = HeartCodec(weights, self.cfg), self.cfg
        codes, latent = self.inputs(device)
        out = {}
        with torch.no_grad():
            condition = model.condition(codes)  # [1, 2T, dim]
            out["vq_condition"] = condition[0]
            frames = condition.shape[1]
            # One Euler step's estimator call as heartlib's solve_euler makes it with guidance: the batch
            # holds the unconditional row (zero conditioning) and the conditional one.
            x = torch.sin(0.37 * torch.arange(frames * c.out_channels, device=device, dtype=torch.float32))
            x = x.view(1, frames, c.out_channels)
            in_context = torch.zeros_like(x)
            rows = [torch.cat([x, in_context, mu], dim=-1) for mu in (torch.zeros_like(condition), condition)]
            hidden = torch.cat(rows, dim=0)
            if hidden.shape[-1] != c.in_channels:  # a config whose estimator takes other inputs
                hidden = torch.sin(0.37 * torch.arange(2 * frames * c.in_channels, device=device, dtype=torch.float32))
                hidden = hidden.view(2, frames, c.in_channels)
            velocity = model.estimator(hidden, torch.full((2,), self.TIMESTEP, device=device))
            uncond, cond = velocity.chunk(2, dim=0)
            out["estimator_velocity"] = (uncond + self.GUIDANCE * (cond - uncond))[0]
            out["audio"] = model.audio(latent)
        return {name: value.detach().to("cpu") for name, value in out.items()}

    def weight_checks(self, weights: dict[str, torch.Tensor], result: SanityResult) -> None:
        super().weight_checks(weights, result)
        not_f32 = [n for n, w in weights.items() if str(w.dtype) != "torch.float32"]
        result.checks.append(
            Check(
                "every tensor F32 (runtimes read nothing else)",
                not not_f32,
                "all F32" if not not_f32 else f"{len(not_f32)} are not: {', '.join(not_f32[:3])}",
            )
        )
        directions = [n for n in weights if n.endswith("parametrizations.weight.original1")]
        zero = [n for n in directions if bool((weights[n].float().flatten(1).norm(dim=1) == 0).any())]
        result.checks.append(
            Check(
                "weight-norm directions non-zero",
                not zero,
                f"{len(directions)} normed convolutions"
                + ("" if not zero else f"; a zero direction (weight becomes NaN) in {', '.join(zero[:3])}"),
            )
        )

    def output_checks(self, out: dict[str, torch.Tensor], result: SanityResult) -> None:
        torch = _import_torch()
        c = self.cfg
        for name, label in (
            ("vq_condition", "VQ conditioning of fixed codes"),
            ("estimator_velocity", f"estimator velocity at t={self.TIMESTEP}"),
        ):
            finite = bool(torch.isfinite(out[name]).all())
            result.checks.append(Check(f"{label} finite", finite, f"max |value| {_max_abs(out[name]):.4g}"))
        audio = out["audio"]
        frames = 2 * self.CODE_FRAMES
        expected = (c.out_channels // c.latent_hidden_dim, frames * c.upsampling)
        good = tuple(audio.shape) == expected and bool(torch.isfinite(audio).all())
        rms = float(audio.pow(2).mean().sqrt()) if audio.numel() else 0.0
        result.checks.append(
            Check(
                f"decoder audio of {frames} latent frames finite",
                good,
                f"shape {list(audio.shape)} (expected {list(expected)}), peak {_max_abs(audio):.4g}, rms {rms:.4g}",
            )
        )
        result.figures["audio_peak"] = _max_abs(audio)


RUNNERS: dict[str, type[Runner]] = {"heartmula": HeartMuLaRunner, "heartcodec": HeartCodecRunner}


# ---------------------------------------------------------------------------------------------
# Checks


def _max_abs(x: torch.Tensor) -> float:
    return float(x.abs().max()) if x.numel() else 0.0


def _finite_weights(weights: dict[str, torch.Tensor], result: SanityResult) -> None:
    torch = _import_torch()
    counts = {n: int((~torch.isfinite(w)).sum()) for n, w in weights.items() if w.is_floating_point()}
    bad = {n: c for n, c in counts.items() if c}
    figure = (
        "all finite"
        if not bad
        else f"{sum(bad.values())} non-finite values in "
        + ", ".join(f"'{n}' ({c})" for n, c in list(bad.items())[:3])
        + (f" and {len(bad) - 3} more tensors" if len(bad) > 3 else "")
    )
    result.checks.append(Check("weights finite", not bad, f"{len(weights)} tensors, {figure}"))


def _compare(
    ours: dict[str, torch.Tensor],
    ref: dict[str, torch.Tensor],
    names: tuple[str, ...],
    label: str,
    exact: bool,
    result: SanityResult,
) -> None:
    """One check per output: exact equality when `exact`, else the difference is only reported."""
    torch = _import_torch()
    for name in names:
        a, b = ours[name], ref[name]
        if not a.is_floating_point():
            same = torch.equal(a, b)
            figure = "identical" if same else f"{int((a != b).sum())} of {a.numel()} codes differ"
        else:
            diff = _max_abs(a - b)
            same = diff == 0.0 and torch.equal(a, b)
            cosine = float(torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0))
            figure = f"max |diff| {diff:.3g}, cosine {cosine:.6f}"
            result.figures[f"{label}: {name}: max_abs_diff"] = diff
        result.checks.append(Check(f"{label}: {name}", same if exact else None, figure))


def pick_device(device: str) -> torch.device:
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
    return torch.device(device)  # type: ignore[no-any-return]


def resolve_config(
    preset: Preset, pack: PackArrays, reference: CheckpointArrays | PackArrays | None, config_path: str | Path | None
) -> Fields:
    """The model's config.json: --config, else the one the pack carries in its metadata, else the
    reference's; a HeartMuLa pack without any is sized from its flavour names and shapes."""
    if config_path is not None:
        return read_json(Path(config_path), "config.json")
    for config in (pack.config, reference.config if reference is not None else None):
        if config is not None:
            return config
    if preset.name == "heartcodec":  # the released config is heartlib's defaults throughout
        return Fields({}, pack.path, "config")
    meta, shapes = pack.pack.metadata, pack.shapes()
    if meta.get("backbone_flavor") in lm_preset.FLAVORS and meta.get("decoder_flavor") in lm_preset.FLAVORS:
        try:
            doc = {
                "backbone_flavor": meta["backbone_flavor"],
                "decoder_flavor": meta["decoder_flavor"],
                "text_vocab_size": shapes["text_embeddings.weight"][0],
                "audio_vocab_size": shapes["codebook0_head.weight"][0],
                "audio_num_codebooks": shapes["audio_head"][0] + 1,
                "muq_dim": shapes["muq_linear.weight"][1],
            }
        except (KeyError, IndexError) as e:
            raise CheckpointError.at(pack.path, f"tensor {e} missing or mis-shaped; cannot size the model") from None
        return Fields(doc, pack.path, "metadata")
    raise CheckpointError.at(
        pack.path,
        "the pack does not say which HeartMuLa it holds (no 'config' in its metadata); pass --config CONFIG_JSON",
    )


def _run_model(
    runner: Runner,
    source: CheckpointArrays | PackArrays,
    names: list[str],
    device: torch.device,
    cast_to: Mapping[str, str] | None = None,
    on_loaded: Callable[[dict[str, torch.Tensor]], None] | None = None,
) -> tuple[dict[str, torch.Tensor], float, float]:
    torch = _import_torch()
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
    torch = _import_torch()
    ours = PackArrays(pack)
    ref: CheckpointArrays | PackArrays | None = None
    try:
        preset = preset_for_pack(ours.pack.metadata, set(ours.shapes()))
        if preset is None:
            raise CheckpointError.at(ours.path, "holds neither HeartMuLa nor HeartCodec: nothing to run")
        ref = open_weights(reference, subdir, preset.name) if reference is not None else None
        runner = RUNNERS[preset.name](resolve_config(preset, ours, ref, config), frames)
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
                _compare(
                    out,
                    full_out,
                    runner.compared,
                    "vs the uncast reference (lossy cast, not judged)",
                    exact=False,
                    result=result,
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
    the packer never converts integers)."""
    if pack_dtype == ref_dtype or pack_dtype not in FLOATS or ref_dtype not in FLOATS:
        return False
    if {pack_dtype, ref_dtype} == {"F16", "BF16"}:
        return True
    return dtype_size(pack_dtype) < dtype_size(ref_dtype)


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
