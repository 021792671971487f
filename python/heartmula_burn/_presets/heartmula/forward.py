"""HeartMuLa's forward pass in plain PyTorch, written from the upstream math (torchtune's `llama3_2`
blocks and heartlib's `generate_frame`), to check packed weights by running them.

Everything is computed in f32. Weights stay in the dtype they are stored in and are upcast where
they are used, so a BF16 pack never has an f32 copy of the whole model beside it."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from . import Flavor, HeartMuLaConfig

# Llama 3.2's RoPE with llama3 frequency scaling, as torchtune's Llama3ScaledRoPE sets it up.
ROPE_BASE = 500_000
ROPE_SCALE_FACTOR = 32
ROPE_LOW_FREQ_FACTOR = 1
ROPE_HIGH_FREQ_FACTOR = 4
ROPE_OLD_CONTEXT = 8192
NORM_EPS = 1e-5


def rope_frequencies(head_dim: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """theta_i for the head_dim/2 interleaved pairs, in f32 element-wise arithmetic (torchtune loops
    over 0-d f32 tensors with the same operations, so this is bit-identical)."""
    freqs = 1.0 / (ROPE_BASE ** (torch.arange(0, head_dim, 2, device=device)[: head_dim // 2].float() / head_dim))
    wavelen = 2 * math.pi / freqs
    smooth = (ROPE_OLD_CONTEXT / wavelen - ROPE_LOW_FREQ_FACTOR) / (ROPE_HIGH_FREQ_FACTOR - ROPE_LOW_FREQ_FACTOR)
    smoothed = (1 - smooth) * freqs / ROPE_SCALE_FACTOR + smooth * freqs
    scaled = torch.where(wavelen > ROPE_OLD_CONTEXT / ROPE_LOW_FREQ_FACTOR, freqs / ROPE_SCALE_FACTOR, smoothed)
    return torch.where(wavelen < ROPE_OLD_CONTEXT / ROPE_HIGH_FREQ_FACTOR, freqs, scaled)


def apply_rope(x: torch.Tensor, positions: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """x: [b, s, heads, head_dim]; positions: [s]. Rotates adjacent pairs (x[2i], x[2i+1])."""
    angles = positions.float()[:, None] * theta[None, :]  # [s, hd/2], an f32 product as in torchtune's cache
    cos = angles.cos()[None, :, None, :]
    sin = angles.sin()[None, :, None, :]
    pairs = x.float().reshape(*x.shape[:-1], -1, 2)
    x0, x1 = pairs[..., 0], pairs[..., 1]
    return torch.stack([x0 * cos - x1 * sin, x1 * cos + x0 * sin], dim=-1).flatten(3).type_as(x)


def rms_norm(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + NORM_EPS)).type_as(x) * scale.float()


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """PyTorch layout ([out, in]); the weight is upcast for this one use."""
    return F.linear(x, weight.float(), None if bias is None else bias.float())


@dataclass
class KVCache:
    """Keys (after RoPE) and values of every position seen so far, per layer: [b, kv_heads, len, hd]."""

    keys: list[torch.Tensor | None]
    values: list[torch.Tensor | None]
    positions: torch.Tensor | None = None

    @classmethod
    def empty(cls, num_layers: int) -> KVCache:
        return cls([None] * num_layers, [None] * num_layers)

    def copy(self) -> KVCache:
        # Entries are replaced, never written in place, so a shallow copy is a snapshot.
        return KVCache(list(self.keys), list(self.values), self.positions)


@dataclass
class Transformer:
    """One torchtune llama3_2 decoder (HeartMuLa's backbone or depth decoder): token embedding and
    output projection are identities upstream, so it maps hidden states to final-normed hidden states."""

    weights: Mapping[str, torch.Tensor]
    prefix: str
    flavor: Flavor
    theta: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        device = self.weights[f"{self.prefix}.norm.scale"].device
        self.theta = rope_frequencies(self.flavor.head_dim, device)

    def _w(self, name: str) -> torch.Tensor:
        return self.weights[f"{self.prefix}.{name}"]

    def __call__(self, h: torch.Tensor, positions: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """h: [b, s, dim] f32 at `positions` (ascending, after the cache's); attends causally to the
        cache and to itself, and appends to the cache."""
        keys_positions = positions if cache.positions is None else torch.cat([cache.positions, positions])
        # True where a query may attend: every key at or before its own position.
        mask = keys_positions[None, :] <= positions[:, None]
        for i in range(self.flavor.num_layers):
            h = h + self._attention(i, rms_norm(h, self._w(f"layers.{i}.sa_norm.scale")), positions, mask, cache)
            x = rms_norm(h, self._w(f"layers.{i}.mlp_norm.scale"))
            p = f"layers.{i}.mlp"
            h = h + linear(
                F.silu(linear(x, self._w(f"{p}.w1.weight"))) * linear(x, self._w(f"{p}.w3.weight")),
                self._w(f"{p}.w2.weight"),
            )
        cache.positions = keys_positions
        return rms_norm(h, self._w("norm.scale")).float()

    def _attention(
        self, i: int, x: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor, cache: KVCache
    ) -> torch.Tensor:
        f, p = self.flavor, f"layers.{i}.attn"
        b, s, _ = x.shape
        q = apply_rope(
            linear(x, self._w(f"{p}.q_proj.weight")).view(b, s, f.num_heads, f.head_dim), positions, self.theta
        )
        k = apply_rope(
            linear(x, self._w(f"{p}.k_proj.weight")).view(b, s, f.num_kv_heads, f.head_dim), positions, self.theta
        )
        v = linear(x, self._w(f"{p}.v_proj.weight")).view(b, s, f.num_kv_heads, f.head_dim)
        k, v = k.transpose(1, 2), v.transpose(1, 2)
        past_k, past_v = cache.keys[i], cache.values[i]
        if past_k is not None and past_v is not None:
            k, v = torch.cat([past_k, k], dim=2), torch.cat([past_v, v], dim=2)
        cache.keys[i], cache.values[i] = k, v
        # Grouped-query attention: kv head j serves query heads j*g .. j*g+g-1.
        group = f.num_heads // f.num_kv_heads
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        o = F.scaled_dot_product_attention(q.transpose(1, 2), k, v, attn_mask=mask)
        return linear(o.transpose(1, 2).reshape(b, s, f.num_heads * f.head_dim), self._w(f"{p}.output_proj.weight"))


class HeartMuLa:
    """Embedding, backbone, codebook-0 head and the depth decoder for codebooks 1..K-1."""

    def __init__(self, weights: Mapping[str, torch.Tensor], cfg: HeartMuLaConfig):
        self.weights = weights
        self.cfg = cfg
        self.backbone = Transformer(weights, "backbone", cfg.backbone)
        self.decoder = Transformer(weights, "decoder", cfg.decoder)
        self.device = weights["backbone.norm.scale"].device

    def _audio_embedding(self, codes: torch.Tensor, codebook: int | torch.Tensor) -> torch.Tensor:
        return self.weights["audio_embeddings.weight"][codes + codebook * self.cfg.audio_vocab_size].float()

    def embed(
        self,
        tokens: torch.Tensor,
        mask: torch.Tensor,
        uncond: torch.Tensor | None,
        muq: tuple[torch.Tensor, int] | None = None,
    ) -> torch.Tensor:
        """tokens/mask: [b, s, K+1] (K audio codebooks, then the text column); uncond: [b] bool rows
        that take the unconditional text embedding (classifier-free guidance); muq: the MuQ
        embedding [b, muq_dim] and the row it is written over (the prompt's placeholder)."""
        k = self.cfg.audio_num_codebooks
        text = self.weights["text_embeddings.weight"][tokens[..., k]].float()
        unconditional = self.weights["unconditional_text_embedding.weight"][0].float()
        if uncond is not None:
            text = torch.where(uncond[:, None, None], unconditional, text)
        audio = self._audio_embedding(tokens[..., :k], torch.arange(k, device=tokens.device))
        e = torch.cat([audio, text[..., None, :]], dim=-2)
        h = (e * mask[..., None]).sum(dim=2)
        if muq is not None:
            muq_embedding, muq_row = muq
            m = linear(muq_embedding.float(), self.weights["muq_linear.weight"], self.weights["muq_linear.bias"])
            if uncond is not None:
                m = torch.where(uncond[:, None], unconditional, m)
            h[:, muq_row] = m
        return h

    def codebook0_logits(self, last_h: torch.Tensor) -> torch.Tensor:
        return linear(last_h, self.weights["codebook0_head.weight"])

    def depth_decode(
        self, last_h: torch.Tensor, c0: torch.Tensor, choose: Callable[[int, torch.Tensor], torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Codebooks 1..K-1 from the backbone's last hidden state and codebook 0's code. `choose(i,
        logits)` picks codebook i's code from its logits (teacher forcing or greedy). Returns the
        logits [K-1, b, V] and the codes [b, K-1]."""
        cache = KVCache.empty(self.cfg.decoder.num_layers)
        h = torch.stack([last_h, self._audio_embedding(c0, 0)], dim=1)
        positions = torch.arange(2, device=self.device)
        logits, codes = [], []
        for i in range(1, self.cfg.audio_num_codebooks):
            dh = self.decoder(linear(h, self.weights["projection.weight"]), positions, cache)
            li = dh[:, -1] @ self.weights["audio_head"][i - 1].float()
            ci = choose(i, li)
            logits.append(li)
            codes.append(ci)
            h = self._audio_embedding(ci, i)[:, None]
            positions = positions[-1:] + 1
        return torch.stack(logits), torch.stack(codes, dim=1)
