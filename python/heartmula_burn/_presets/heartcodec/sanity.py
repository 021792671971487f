"""How `sanity` runs HeartCodec: fixed codes through the VQ conditioning, one flow-matching estimator
call with guidance, a fixed latent through the ScalarModel decoder, and what the weights and outputs
must satisfy (all F32, weight-norm directions non-zero, finite audio of the right shape). Loaded
only when `sanity` runs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from ..._fields import Fields
from ..._weights import import_torch
from ..runner import Check, Runner, SanityResult, max_abs
from . import HeartCodec, parse_config

if TYPE_CHECKING:
    import torch


class HeartCodecRunner(Runner):
    preset = HeartCodec()
    compared = ("vq_condition", "estimator_velocity", "audio")
    CODE_FRAMES = 4  # 12.5 Hz codes -> 8 latent frames (25 Hz) -> 8 x 1920 audio samples per channel
    GUIDANCE = 1.25  # heartlib's detokenize default
    TIMESTEP = 0.5

    def __init__(self, config: Fields, frames: int) -> None:
        super().__init__(config, frames)
        self.cfg = parse_config(config)

    def inputs(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Fixed codes [1, Q, CODE_FRAMES] and a fixed latent [2 * CODE_FRAMES, out_channels] whose
        values are multiples of 1/9 (so the decoder's rounding cannot flip any of them)."""
        torch = import_torch()
        c = self.cfg
        q = torch.arange(c.num_quantizers, device=device)[:, None]
        t = torch.arange(self.CODE_FRAMES, device=device)[None, :]
        codes = ((q * 977 + t * 131 + 7) % c.codebook_size)[None]
        frames = 2 * self.CODE_FRAMES
        i = torch.arange(frames, device=device)[:, None]
        j = torch.arange(c.out_channels, device=device)[None, :]
        latent = (((i * 7 + j * 3) % 19) - 9).float() / 9
        return codes, latent

    def outputs(self, weights: Mapping[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
        from .forward import HeartCodec as Model

        torch = import_torch()
        model, c = Model(weights, self.cfg), self.cfg
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

    def weight_checks(self, weights: Mapping[str, torch.Tensor], result: SanityResult) -> None:
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
        torch = import_torch()
        c = self.cfg
        for name, label in (
            ("vq_condition", "VQ conditioning of fixed codes"),
            ("estimator_velocity", f"estimator velocity at t={self.TIMESTEP}"),
        ):
            finite = bool(torch.isfinite(out[name]).all())
            result.checks.append(Check(f"{label} finite", finite, f"max |value| {max_abs(out[name]):.4g}"))
        audio = out["audio"]
        frames = 2 * self.CODE_FRAMES
        expected = (c.out_channels // c.latent_hidden_dim, frames * c.upsampling)
        good = tuple(audio.shape) == expected and bool(torch.isfinite(audio).all())
        rms = float(audio.pow(2).mean().sqrt()) if audio.numel() else 0.0
        result.checks.append(
            Check(
                f"decoder audio of {frames} latent frames finite",
                good,
                f"shape {list(audio.shape)} (expected {list(expected)}), peak {max_abs(audio):.4g}, rms {rms:.4g}",
            )
        )
        result.figures["audio_peak"] = max_abs(audio)
