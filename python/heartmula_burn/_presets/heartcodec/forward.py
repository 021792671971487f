"""HeartCodec's forward in plain PyTorch, written from heartlib's math (`models/sq_codec.py`,
`models/transformer.py`, `models/flow_matching.py`, and vector-quantize-pytorch's ResidualVQ), to
check packed codec weights by running them:

- the VQ conditioning: codes -> sum of codebook rows -> `project_out` -> `cond_feature_emb`,
  upsampled x2 to the latent rate, with `zero_cond_embedding1` where a frame has no condition;
- one call of the flow-matching estimator (the two-stage LLaMA-style DiT with AdaLN-single
  timestep modulation) on a given input and timestep;
- the ScalarModel decoder: latent (rounded to multiples of 1/9, as upstream) -> audio, through
  weight-normed convolutions (`g * v / ||v||`, computed here from the two stored tensors exactly as
  torch's weight_norm parametrization does), causal transposed-convolution upsampling, dilated
  residual units and PReLU activations.

Everything is computed in f32; weights are upcast where used."""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F

from . import FLOW_T_SIZE, RESIDUAL_DILATIONS, HeartCodecConfig

ROPE_BASE = 10_000
NORM_EPS = 1e-6
PROJECT_KERNEL = 3
TIMESTEP_MAX_PERIOD = 10_000
TIMESTEP_SCALE = 1000
SCALAR_LEVELS = 9  # the ScalarModel's quantiser rounds latents to multiples of 1/9


class HeartCodec:
    def __init__(self, weights: Mapping[str, torch.Tensor], cfg: HeartCodecConfig) -> None:
        self.w = weights
        self.cfg = cfg

    def _f(self, name: str) -> torch.Tensor:
        return self.w[name].float()

    def _linear(self, x: torch.Tensor, prefix: str, bias: bool = True) -> torch.Tensor:
        return F.linear(x, self._f(f"{prefix}.weight"), self._f(f"{prefix}.bias") if bias else None)

    # ---- the VQ conditioning --------------------------------------------------------------------

    def vq_output(self, codes: torch.Tensor) -> torch.Tensor:
        """ResidualVQ.get_output_from_indices: codes [B, Q, T] -> the codebook rows they pick,
        summed over the quantizers and projected back to `dim`: [B, T, dim]."""
        vq = "flow_matching.vq_embed"
        summed = self._f(f"{vq}.layers.0._codebook.embed")[0][codes[:, 0]]
        for q in range(1, self.cfg.num_quantizers):
            summed = summed + self._f(f"{vq}.layers.{q}._codebook.embed")[0][codes[:, q]]
        if self.cfg.codebook_dim != self.cfg.dim:
            summed = self._linear(summed, f"{vq}.project_out")
        return summed

    def condition(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [B, Q, T] (12.5 Hz) -> conditioning [B, 2T, dim] at the latent rate (25 Hz)."""
        cond = self._linear(self.vq_output(codes), "flow_matching.cond_feature_emb")
        return F.interpolate(cond.permute(0, 2, 1), scale_factor=2, mode="nearest").permute(0, 2, 1)

    # ---- the flow-matching estimator ----------------------------------------------------------

    def estimator(self, hidden: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        """hidden [B, T, in_channels], timestep [B] in [0, 1] -> velocity [B, T, out_channels]."""
        est = "flow_matching.estimator"
        s = self._project(hidden, f"{est}.proj_in")
        mod, emb = self._adaln(timestep, f"{est}.adaln_single")
        for i in range(self.cfg.num_layers):
            s = self._block(s, mod, f"{est}.transformer_blocks.{i}", self.cfg.attention_head_dim)
        s = self._modulate_out(s, emb, f"{est}.scale_shift_table")
        x = self._project(torch.cat([hidden, s], dim=-1), f"{est}.connection_proj")
        mod, emb = self._adaln(timestep, f"{est}.adaln_single_2")
        for i in range(self.cfg.num_layers_2):
            x = self._block(x, mod, f"{est}.transformer_blocks_2.{i}", 2 * self.cfg.attention_head_dim)
        x = self._modulate_out(x, emb, f"{est}.scale_shift_table_2")
        return self._project(x, f"{est}.proj_out")

    def _project(self, x: torch.Tensor, prefix: str) -> torch.Tensor:
        """ProjectLayer: Conv1d (k=3, same padding) over time, scaled by 1/sqrt(k), then Linear."""
        h = F.conv1d(
            x.transpose(1, 2),
            self._f(f"{prefix}.ffn_1.weight"),
            self._f(f"{prefix}.ffn_1.bias"),
            padding=PROJECT_KERNEL // 2,
        ).transpose(1, 2)
        return self._linear(h * PROJECT_KERNEL**-0.5, f"{prefix}.ffn_2")

    def _adaln(self, timestep: torch.Tensor, prefix: str) -> tuple[torch.Tensor, torch.Tensor]:
        """AdaLayerNormSingleFlow: (6*d modulation, d embedding) of the timestep."""
        half = FLOW_T_SIZE // 2
        freqs = torch.exp(-math.log(TIMESTEP_MAX_PERIOD) * torch.arange(0, half, device=timestep.device) / half)
        args = timestep[:, None] * freqs.type(timestep.type())[None] * TIMESTEP_SCALE
        encoding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        emb = self._linear(
            F.silu(self._linear(encoding, f"{prefix}.emb.timestep_embedder.linear_1")),
            f"{prefix}.emb.timestep_embedder.linear_2",
        )
        return self._linear(F.silu(emb), f"{prefix}.linear"), emb

    def _modulate_out(self, x: torch.Tensor, emb: torch.Tensor, table: str) -> torch.Tensor:
        shift, scale = (self._f(table)[None] + emb[:, None]).chunk(2, dim=1)
        return F.layer_norm(x, (x.shape[-1],), eps=NORM_EPS) * (1 + scale) + shift

    def _rms(self, x: torch.Tensor, weight: str) -> torch.Tensor:
        return self._f(weight) * (x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + NORM_EPS))

    def _block(self, x: torch.Tensor, mod: torch.Tensor, prefix: str, head_dim: int) -> torch.Tensor:
        if self.cfg.ada_norm:
            table = self._f(f"{prefix}.scale_shift_table")[None] + mod.reshape(x.shape[0], 6, -1)
            shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = table.chunk(6, dim=1)
            x = x + gate_msa * self._attention(
                self._rms(x, f"{prefix}.attn_norm.weight") * (1 + scale_msa) + shift_msa, prefix, head_dim
            )
            return x + gate_mlp * self._mlp(
                self._rms(x, f"{prefix}.mlp_norm.weight") * (1 + scale_mlp) + shift_mlp, prefix
            )
        x = x + self._attention(self._rms(x, f"{prefix}.attn_norm.weight"), prefix, head_dim)
        return x + self._mlp(self._rms(x, f"{prefix}.mlp_norm.weight"), prefix)

    def _attention(self, x: torch.Tensor, prefix: str, head_dim: int) -> torch.Tensor:
        b, t, _ = x.shape
        heads = self.cfg.num_attention_heads

        def split(name: str) -> torch.Tensor:
            return self._linear(x, f"{prefix}.attn.{name}", bias=False).view(b, t, heads, head_dim).transpose(1, 2)

        q, k, v = split("q_proj"), split("k_proj"), split("v_proj")
        inv_freq = 1.0 / (ROPE_BASE ** (torch.arange(0, head_dim, 2, device=x.device, dtype=x.dtype) / head_dim))
        angles = torch.einsum("i,j->ij", torch.arange(t, device=x.device, dtype=x.dtype), inv_freq)
        sin, cos = angles.sin().view(1, 1, t, head_dim // 2, 1), angles.cos().view(1, 1, t, head_dim // 2, 1)

        def rope(z: torch.Tensor) -> torch.Tensor:  # rotates adjacent pairs (z[2i], z[2i+1])
            pairs = z.view(b, heads, t, head_dim // 2, 2)
            z1, z2 = pairs[..., 0:1], pairs[..., 1:2]
            return torch.cat([z1 * cos - z2 * sin, z1 * sin + z2 * cos], dim=-1).view(b, heads, t, head_dim)

        out = F.scaled_dot_product_attention(rope(q), rope(k), v)
        return self._linear(out.transpose(1, 2).reshape(b, t, heads * head_dim), f"{prefix}.attn.o_proj", bias=False)

    def _mlp(self, x: torch.Tensor, prefix: str) -> torch.Tensor:
        gated = F.silu(self._linear(x, f"{prefix}.mlp.gate", bias=False)) * self._linear(
            x, f"{prefix}.mlp.up", bias=False
        )
        return self._linear(gated, f"{prefix}.mlp.down", bias=False)

    # ---- the ScalarModel decoder ----------------------------------------------------------------

    def _normed(self, prefix: str) -> torch.Tensor:
        """A weight-normed convolution's weight, g * v / ||v|| (norm over all axes but the first)."""
        g = self._f(f"{prefix}.parametrizations.weight.original0")
        v = self._f(f"{prefix}.parametrizations.weight.original1")
        return torch._weight_norm(v, g, 0)

    def _conv(
        self, x: torch.Tensor, prefix: str, *, causal: bool, dilation: int = 1, normed: bool = True
    ) -> torch.Tensor:
        weight = self._normed(prefix) if normed else self._f(f"{prefix}.weight")
        reach = dilation * (weight.shape[-1] - 1)
        if causal:
            return F.conv1d(F.pad(x, (reach, 0)), weight, self._f(f"{prefix}.bias"), dilation=dilation)
        return F.conv1d(x, weight, self._f(f"{prefix}.bias"), padding=reach // 2, dilation=dilation)

    def _prelu(self, x: torch.Tensor, prefix: str) -> torch.Tensor:
        return F.prelu(x, self._f(f"{prefix}.weight"))

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """latent [B, latent_hidden_dim, T] -> audio [B, num_bands, T * upsampling]."""
        c, dec = self.cfg, "scalar_model.decoder"
        x = torch.round(SCALAR_LEVELS * latent) / SCALAR_LEVELS
        x = self._conv(x, f"{dec}.0", causal=False)  # the look-ahead convolution is not causal upstream
        for level, stride in enumerate(c.upsample_factors):
            block = f"{dec}.{1 + level}"
            up = f"{block}.up_conv.layer"
            pad = 0 if c.causal else (c.upsample_kernel_sizes[level] - stride) // 2
            x = F.conv_transpose1d(x, self._normed(up), self._f(f"{up}.bias"), stride=stride, padding=pad)
            if c.causal:
                x = x[:, :, :-stride]
            for unit, dilation in enumerate(RESIDUAL_DILATIONS):
                p = f"{block}.convs.{unit}"
                h = self._prelu(self._conv(x, f"{p}.conv1", causal=c.causal, dilation=dilation), f"{p}.activation1")
                x = self._prelu(self._conv(h, f"{p}.conv2", causal=c.causal), f"{p}.activation2") + x
        last = 1 + len(c.upsample_factors)
        if c.num_samples > 1:  # PostProcessor: each frame repeated, a plain convolution, PReLU
            x = x.repeat_interleave(c.num_samples, dim=-1)
            x = self._prelu(
                self._conv(x, f"{dec}.{last}.conv", causal=c.causal, normed=False), f"{dec}.{last}.activation"
            )
            last += 1
        return self._conv(x, f"{dec}.{last}", causal=c.causal)

    def audio(self, latent: torch.Tensor) -> torch.Tensor:
        """latent [T, out_channels] (25 Hz) -> audio [channels, samples], as detokenize reads it:
        each frame is `out_channels / latent_hidden_dim` channels of latent_hidden_dim (stereo)."""
        frames, width = latent.shape
        channels = width // self.cfg.latent_hidden_dim
        per_channel = latent.reshape(frames, channels, self.cfg.latent_hidden_dim).permute(1, 2, 0)
        return self.decode(per_channel).squeeze(1)
