"""How `sanity` runs HeartMuLa: fixed inputs (tags, lyrics, a MuQ row, teacher-forced codes), the
outputs compared with a reference, and what those outputs must satisfy (finite logits, the KV cache
agreeing with a recomputation, greedy codes in the vocabulary). Loaded only when `sanity` runs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..._fields import Fields
from ..._weights import import_torch
from ..runner import Check, Runner, SanityResult, max_abs
from . import HeartMuLa, parse_config

if TYPE_CHECKING:
    import torch


class HeartMuLaRunner(Runner):
    preset = HeartMuLa()
    compared = ("h_last", "c0_logits", "decoder_logits", "frame2_c0_logits", "greedy_codes")
    # Fixed inputs (the reference recipe): tags and lyrics framed by BOS/EOS as the pipeline does, a
    # placeholder row for the MuQ embedding between them, then teacher-forced codes for frame 1.
    TAGS = (128000, 1000, 2000, 3000, 128001)
    LYRICS = (128000, 4000, 5000, 6000, 7000, 128001)
    CFG_SCALE = 1.5  # the pipeline's default guidance; row 0 is conditional, row 1 unconditional
    # The same frame through the KV cache and recomputed from scratch differ only by summation order.
    CACHE_TOLERANCE = 1e-4
    # Q8S (block 32) against F32, measured on the full-size shapes (synthetic weights at realistic
    # scales): cosine 0.999794 for h_last, 0.999772 to 0.999857 for the logits; on the tiny model
    # 0.99916 to 0.99943. A swapped or badly scaled weight lands far below.
    quantized_cosine_bound = 0.999

    def __init__(self, config: Fields, frames: int) -> None:
        super().__init__(config, frames)
        self.cfg = parse_config(config)

    def outputs(self, weights: Mapping[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
        from .forward import HeartMuLa as Model

        return forward_outputs(Model(weights, self.cfg), self.frames)

    def output_checks(self, out: dict[str, torch.Tensor], result: SanityResult) -> None:
        torch = import_torch()
        for name, label in (
            ("c0_logits", "prompt codebook-0 logits"),
            ("decoder_logits", "teacher-forced logits, codebooks 1-7"),
            ("frame2_c0_logits", "frame 2 codebook-0 logits (KV cache)"),
        ):
            finite = bool(torch.isfinite(out[name]).all())
            result.checks.append(Check(f"{label} finite", finite, f"max |logit| {max_abs(out[name]):.4g}"))
        cached, recomputed = out["frame2_c0_logits"], out["frame2_c0_recomputed"]
        diff = max_abs(cached - recomputed)
        bound = self.CACHE_TOLERANCE * max(1.0, max_abs(recomputed))
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
        result.figures["max_abs_c0_logit"] = max_abs(out["c0_logits"])
        result.figures["greedy_codes"] = codes.tolist()


def forward_outputs(model: Any, frames: int) -> dict[str, torch.Tensor]:
    """HeartMuLa's outputs: the prompt's last hidden state and codebook-0 logits, teacher-forced
    depth-decoder logits, frame 2's codebook-0 logits through the KV cache and recomputed without
    it, and `frames` greedily decoded frames."""
    import torch

    from .forward import KVCache

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
        h = model.embed(tokens, mask, uncond, (muq, len(r.TAGS)))
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
