"""`sanity` on HeartCodec packs: the forward against torch's own modules and vector-quantize-pytorch,
and end to end on packs that are right and packs broken in ways only running the model shows."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import crosscheck, linked, residual_vq, run_cli
from safetensors.numpy import load_file

torch = crosscheck("torch")

from heartmula_burn._fields import Fields
from heartmula_burn._presets.heartcodec import RESIDUAL_DILATIONS, parse_config
from heartmula_burn._presets.heartcodec import forward as codec_forward
from heartmula_burn._presets.heartcodec.sanity import HeartCodecRunner
from heartmula_burn._presets.heartcodec.synthetic import TINY_CONFIG as CODEC_TINY_CONFIG
from heartmula_burn._sanity import SanityResult

CODEC = "HeartCodec-oss"
CFG = parse_config(Fields(CODEC_TINY_CONFIG, Path("config.json")))

# Bounds on max |ours - theirs|, from the error measured on x86-64 with torch 2.x. The decoder runs
# the same torch kernels on the same weight-normed weights and measured exactly 0 (audio peaks at
# 9.5, where one f32 ulp is 9.5e-7): its bound is 4 ulps there. Computing g * v / ||v|| by hand
# instead of as torch's weight_norm does moves it by 9.5e-6, which the former rtol = atol = 1e-5
# let through. The VQ sum measured 9.5e-7 (2 ulps at its peak of 7.5): its bound is 3x that.
DECODER_BOUND = 4e-6
VQ_BOUND = 3e-6
# The estimator, against TorchEstimator below: at most 1.8e-6 measured over four timestep pairs (outputs
# up to 2.1, where one f32 ulp is 2.4e-7); its bound is 5e-6.
ESTIMATOR_BOUND = 5e-6


def weights_of(root: Path) -> dict[str, torch.Tensor]:
    tensors = {}
    for shard in sorted((root / CODEC).glob("*.safetensors")):
        tensors.update({k: torch.from_numpy(v) for k, v in load_file(shard).items()})
    return tensors


def under(weights: dict, prefix: str) -> dict:
    """The tensors whose names start with `prefix`, named without it (a submodule's state dict)."""
    return {k[len(prefix) :]: v for k, v in weights.items() if k.startswith(prefix)}


def loaded_rvq(weights: dict, config: dict = CODEC_TINY_CONFIG):
    """vector-quantize-pytorch's ResidualVQ with the checkpoint's codebooks loaded strictly."""
    rvq = residual_vq(config)
    state = under(weights, "flow_matching.vq_embed.")
    for k in [k for k in state if k.endswith("initted")]:
        state[k] = state[k].reshape(()).bool()  # [1] f32 as released, 0-d bool in this library
    rvq.load_state_dict(state, strict=True)
    return rvq


def tiny_runner(config: dict = CODEC_TINY_CONFIG) -> HeartCodecRunner:
    return HeartCodecRunner(Fields(config, Path("config.json")), frames=1)


# ---- the forward against the libraries heartlib builds on -------------------------------------------


class TorchDecoder(torch.nn.Module):
    """The ScalarModel decoder built from torch's own modules, named as heartlib names them, with
    torch's weight_norm parametrization: loading the checkpoint into it strictly checks every name
    and shape of the decoder, and its output checks the functional forward's weight norm, padding
    and upsampling."""

    def __init__(self, c) -> None:
        super().__init__()
        wn = torch.nn.utils.parametrizations.weight_norm
        levels, init = len(c.upsample_factors), c.init_channel
        layers: list[torch.nn.Module] = [
            wn(torch.nn.Conv1d(c.latent_hidden_dim, init * 2**levels, c.delay_kernel_size))
        ]
        for level, (stride, kernel) in enumerate(zip(c.upsample_factors, c.upsample_kernel_sizes)):
            n_in, n_out = init * 2 ** (levels - level), init * 2 ** (levels - level - 1)
            block = torch.nn.Module()
            block.up_conv = torch.nn.Module()
            block.up_conv.layer = wn(torch.nn.ConvTranspose1d(n_in, n_out, kernel, stride=stride))
            block.convs = torch.nn.ModuleList()
            for dilation in RESIDUAL_DILATIONS:
                unit = torch.nn.Module()
                unit.conv1 = wn(torch.nn.Conv1d(n_out, n_out, c.res_kernel_size, dilation=dilation))
                unit.conv2 = wn(torch.nn.Conv1d(n_out, n_out, 1))
                unit.activation1, unit.activation2 = torch.nn.PReLU(), torch.nn.PReLU()
                block.convs.append(unit)
            layers.append(block)
        post = torch.nn.Module()
        post.conv, post.activation = torch.nn.Conv1d(init, init, c.default_kernel_size), torch.nn.PReLU()
        layers += [post, wn(torch.nn.Conv1d(init, c.num_bands, c.default_kernel_size))]
        self.decoder = torch.nn.ModuleList(layers)
        self.c = c

    @staticmethod
    def causal(conv: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        return conv(torch.nn.functional.pad(x, (conv.dilation[0] * (conv.kernel_size[0] - 1), 0)))

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        d = self.decoder
        x = torch.round(9 * latent) / 9
        first = d[0]
        x = torch.nn.functional.conv1d(x, first.weight, first.bias, padding=(first.kernel_size[0] - 1) // 2)
        for level, stride in enumerate(self.c.upsample_factors):
            block = d[1 + level]
            x = block.up_conv.layer(x)[:, :, :-stride]
            for unit in block.convs:
                x = unit.activation2(self.causal(unit.conv2, unit.activation1(self.causal(unit.conv1, x)))) + x
        post = d[1 + len(self.c.upsample_factors)]
        x = post.activation(self.causal(post.conv, x.repeat_interleave(2, dim=-1)))
        return self.causal(d[-1], x)


@pytest.fixture(scope="module")
def weights(tiny_root):
    return weights_of(tiny_root)


def test_decoder_matches_torch_modules_loaded_with_the_upstream_names(weights):
    module = TorchDecoder(CFG)
    decoder = {k: v for k, v in under(weights, "scalar_model.").items() if k.startswith("decoder.")}
    module.load_state_dict(decoder, strict=True)  # every name and shape, as torch's weight_norm names them
    latent = (
        torch.arange(2 * CFG.latent_hidden_dim * 6, dtype=torch.float32).reshape(2, CFG.latent_hidden_dim, 6) % 19 - 9
    ) / 9
    with torch.no_grad():
        want = module(latent)
        got = codec_forward.HeartCodec(weights, CFG).decode(latent)
    assert got.shape == (2, 1, 6 * CFG.upsampling) and want.abs().max() > 0.5
    torch.testing.assert_close(got, want, rtol=0, atol=DECODER_BOUND)
    # Negative control: a swapped pair of same-shape weights moves the output far beyond that bound.
    swapped = dict(weights)
    a, b = (f"scalar_model.decoder.2.convs.{u}.conv1.parametrizations.weight.original1" for u in (1, 2))
    swapped[a], swapped[b] = weights[b], weights[a]
    with torch.no_grad():
        wrong = codec_forward.HeartCodec(swapped, CFG).decode(latent)
    assert (wrong - want).abs().max() > 1e3 * DECODER_BOUND


def test_vq_output_matches_vector_quantize_pytorch(weights):
    c = CODEC_TINY_CONFIG
    rvq = loaded_rvq(weights)
    codes = torch.randint(
        0, c["codebook_size"], (2, c["num_quantizers"], 5), generator=torch.Generator().manual_seed(3)
    )
    with torch.no_grad():
        want = rvq.get_output_from_indices(codes.transpose(1, 2))
        got = codec_forward.HeartCodec(weights, CFG).vq_output(codes)
    assert want.abs().max() > 0.5
    torch.testing.assert_close(got, want, rtol=0, atol=VQ_BOUND)
    shuffled = codes.flip(1)  # quantizer q's codes looked up in quantizer 7-q's codebook
    with torch.no_grad():
        wrong = codec_forward.HeartCodec(weights, CFG).vq_output(shuffled)
    assert (wrong - want).abs().max() > 0.1


class TorchEstimator(torch.nn.Module):
    """The flow-matching estimator (heartlib's two-stage LlamaTransformer with AdaLN-single) built from
    torch's own modules and named as heartlib names them, written from upstream's formulas with other
    primitives than the forward under test: nn.RMSNorm, nn.LayerNorm, attention as an explicit
    softmax, RoPE as a complex rotation of adjacent pairs, the timestep frequencies as powers."""

    FLOW_T_SIZE, PERIOD, SCALE, EPS, ROPE_BASE = 512, 10_000, 1000, 1e-6, 10_000

    def __init__(self, c) -> None:
        super().__init__()
        inner, inner_2 = c.num_attention_heads * c.attention_head_dim, 2 * c.num_attention_heads * c.attention_head_dim
        self.c = c
        self.proj_in = self.project(c.in_channels, inner)
        self.transformer_blocks = torch.nn.ModuleList(
            [self.block(inner, c.attention_head_dim) for _ in range(c.num_layers)]
        )
        self.transformer_blocks_2 = torch.nn.ModuleList(
            [self.block(inner_2, 2 * c.attention_head_dim) for _ in range(c.num_layers_2)]
        )
        self.connection_proj = self.project(c.in_channels + inner, inner_2)
        self.proj_out = self.project(inner_2, c.out_channels)
        self.scale_shift_table = torch.nn.Parameter(torch.empty(2, inner))
        self.scale_shift_table_2 = torch.nn.Parameter(torch.empty(2, inner_2))
        self.adaln_single, self.adaln_single_2 = self.adaln(inner), self.adaln(inner_2)

    @staticmethod
    def project(n_in: int, n_out: int) -> torch.nn.Module:
        layer = torch.nn.Module()
        layer.ffn_1 = torch.nn.Conv1d(n_in, n_out, 3, padding=1)
        layer.ffn_2 = torch.nn.Linear(n_out, n_out)
        return layer

    def adaln(self, dim: int) -> torch.nn.Module:
        module = torch.nn.Module()
        module.emb = torch.nn.Module()
        module.emb.timestep_embedder = torch.nn.Module()
        module.emb.timestep_embedder.linear_1 = torch.nn.Linear(self.FLOW_T_SIZE, dim)
        module.emb.timestep_embedder.linear_2 = torch.nn.Linear(dim, dim)
        module.linear = torch.nn.Linear(dim, 6 * dim)
        return module

    def block(self, dim: int, head_dim: int) -> torch.nn.Module:
        blk = torch.nn.Module()
        blk.attn_norm, blk.mlp_norm = torch.nn.RMSNorm(dim, eps=self.EPS), torch.nn.RMSNorm(dim, eps=self.EPS)
        blk.attn = torch.nn.Module()
        heads = self.c.num_attention_heads
        for name, shape in (("q_proj", (dim, heads * head_dim)), ("k_proj", (dim, heads * head_dim))):
            setattr(blk.attn, name, torch.nn.Linear(*shape, bias=False))
        blk.attn.v_proj = torch.nn.Linear(dim, heads * head_dim, bias=False)
        blk.attn.o_proj = torch.nn.Linear(heads * head_dim, dim, bias=False)
        hidden = 256 * ((int(2 * 4 * dim / 3) + 255) // 256)  # Llama's SwiGLU width, a multiple of 256
        blk.mlp = torch.nn.Module()
        blk.mlp.gate, blk.mlp.up = torch.nn.Linear(dim, hidden, bias=False), torch.nn.Linear(dim, hidden, bias=False)
        blk.mlp.down = torch.nn.Linear(hidden, dim, bias=False)
        if self.c.ada_norm:
            blk.scale_shift_table = torch.nn.Parameter(torch.empty(6, dim))
        blk.head_dim = head_dim
        return blk

    @staticmethod
    def run_project(layer: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        return layer.ffn_2(layer.ffn_1(x.transpose(1, 2)).transpose(1, 2) / math.sqrt(3))

    def timestep(self, module: torch.nn.Module, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # In f32, in upstream's order of operations (PixArt's embedding): angles reach 800 rad at
        # t = 0.8, where one f32 ulp is 6e-5 rad, so an f64 angle or another order of the same
        # products moved the output by up to 1e-4 (measured).
        half = self.FLOW_T_SIZE // 2
        freqs = torch.exp(-math.log(self.PERIOD) * torch.arange(half) / half)
        args = t[:, None] * freqs[None] * self.SCALE
        encoding = torch.cat([args.cos(), args.sin()], dim=-1)
        embedder = module.emb.timestep_embedder
        emb = embedder.linear_2(torch.nn.functional.silu(embedder.linear_1(encoding)))
        return module.linear(torch.nn.functional.silu(emb)), emb

    def attention(self, blk: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        heads, d = self.c.num_attention_heads, blk.head_dim

        def rotate(z: torch.Tensor) -> torch.Tensor:  # [b, t, heads, d]: pairs (z[2i], z[2i+1]) as complex numbers
            pairs = torch.view_as_complex(z.reshape(b, t, heads, d // 2, 2).contiguous())
            angle = torch.outer(torch.arange(t, dtype=torch.float32), self.ROPE_BASE ** (-torch.arange(0, d, 2) / d))
            turned = pairs * torch.polar(torch.ones_like(angle), angle)[None, :, None, :]
            return torch.view_as_real(turned).reshape(b, t, heads, d)

        q = rotate(blk.attn.q_proj(x).view(b, t, heads, d))
        k = rotate(blk.attn.k_proj(x).view(b, t, heads, d))
        v = blk.attn.v_proj(x).view(b, t, heads, d)
        weights = torch.softmax(torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(d), dim=-1)
        return blk.attn.o_proj(torch.einsum("bhqk,bkhd->bqhd", weights, v).reshape(b, t, heads * d))

    def run_block(self, blk: torch.nn.Module, x: torch.Tensor, mod: torch.Tensor) -> torch.Tensor:
        if not self.c.ada_norm:  # norm_type "layer_norm": plain pre-norm residual blocks
            x = x + self.attention(blk, blk.attn_norm(x))
            h = blk.mlp_norm(x)
            return x + blk.mlp.down(torch.nn.functional.silu(blk.mlp.gate(h)) * blk.mlp.up(h))
        table = blk.scale_shift_table[None] + mod.view(x.shape[0], 6, -1)
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = (table[:, i : i + 1] for i in range(6))
        x = x + gate_a * self.attention(blk, blk.attn_norm(x) * (1 + scale_a) + shift_a)
        h = blk.mlp_norm(x) * (1 + scale_m) + shift_m
        return x + gate_m * blk.mlp.down(torch.nn.functional.silu(blk.mlp.gate(h)) * blk.mlp.up(h))

    def out(self, x: torch.Tensor, table: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        shift, scale = table[None, 0:1] + emb[:, None], table[None, 1:2] + emb[:, None]
        return torch.nn.functional.layer_norm(x, x.shape[-1:], eps=self.EPS) * (1 + scale) + shift

    def forward(self, hidden: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        s = self.run_project(self.proj_in, hidden)
        mod, emb = self.timestep(self.adaln_single, t)
        for blk in self.transformer_blocks:
            s = self.run_block(blk, s, mod)
        s = self.out(s, self.scale_shift_table, emb)
        x = self.run_project(self.connection_proj, torch.cat([hidden, s], dim=-1))
        mod, emb = self.timestep(self.adaln_single_2, t)
        for blk in self.transformer_blocks_2:
            x = self.run_block(blk, x, mod)
        return self.run_project(self.proj_out, self.out(x, self.scale_shift_table_2, emb))


@pytest.mark.parametrize("norm_type", ["ada_norm_single", "layer_norm"])
def test_estimator_matches_torch_modules_loaded_with_the_upstream_names(weights, norm_type):
    cfg = parse_config(Fields({**CODEC_TINY_CONFIG, "norm_type": norm_type}, Path("config.json")))
    if not cfg.ada_norm:  # blocks without their AdaLN tables, as such a checkpoint holds them
        weights = {k: v for k, v in weights.items() if not (".transformer_blocks" in k and "scale_shift" in k)}
    module = TorchEstimator(cfg)
    prefix = "flow_matching.estimator."
    module.load_state_dict(under(weights, prefix), strict=True)
    frames = 7
    hidden = torch.sin(0.37 * torch.arange(2 * frames * cfg.in_channels, dtype=torch.float32)).view(2, frames, -1)
    t = torch.tensor([0.25, 0.8])
    with torch.no_grad():
        want = module(hidden, t)
        got = codec_forward.HeartCodec(weights, cfg).estimator(hidden, t)
    assert want.abs().max() > 0.5
    torch.testing.assert_close(got, want, rtol=0, atol=ESTIMATOR_BOUND)
    # Negative control: the last stage-2 block's query and key projections swapped.
    last = f"{prefix}transformer_blocks_2.{cfg.num_layers_2 - 1}.attn."
    swapped = {**weights, last + "q_proj.weight": weights[last + "k_proj.weight"]}
    swapped[last + "k_proj.weight"] = weights[last + "q_proj.weight"]
    with torch.no_grad():
        wrong = codec_forward.HeartCodec(swapped, cfg).estimator(hidden, t)
    assert (wrong - want).abs().max() > 1e3 * ESTIMATOR_BOUND


def test_condition_is_the_vq_output_through_cond_feature_emb_at_twice_the_rate(weights):
    rvq = loaded_rvq(weights)
    emb = torch.nn.Linear(CODEC_TINY_CONFIG["dim"], CODEC_TINY_CONFIG["dim"])
    emb.load_state_dict({n: weights[f"flow_matching.cond_feature_emb.{n}"] for n in ("weight", "bias")}, strict=True)
    codes = torch.randint(0, CODEC_TINY_CONFIG["codebook_size"], (1, CODEC_TINY_CONFIG["num_quantizers"], 5))
    with torch.no_grad():
        want = emb(rvq.get_output_from_indices(codes.transpose(1, 2))).repeat_interleave(2, dim=1)
        got = codec_forward.HeartCodec(weights, CFG).condition(codes)
    assert got.shape == (1, 10, CODEC_TINY_CONFIG["dim"])
    torch.testing.assert_close(got, want, rtol=0, atol=VQ_BOUND)


# Wider than 256 channels, so that the estimator's input width and in_channels are equal ints that
# are not one cached object (an `is not` in place of `!=` shows): conditioning 272 wide, latent 2 x 8.
WIDE_CONFIG = {**CODEC_TINY_CONFIG, "dim": 272, "in_channels": 288}


def widened(weights: dict, config: dict) -> dict:
    """The tiny checkpoint's weights with every tensor that `dim` shapes drawn again at the new
    width (linear weights ~ 1/sqrt(fan_in)), and the estimator's two input projections given the
    input channels of the new conditioning (the 16 old ones replaced by `dim` new ones)."""
    dim, cbd, g = config["dim"], config["codebook_dim"], torch.Generator().manual_seed(11)

    def linear(n_out: int, n_in: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.randn(n_out, n_in, generator=g) / math.sqrt(n_in), torch.randn(n_out, generator=g) / 10

    wide = dict(weights)
    vq = "flow_matching.vq_embed"
    for name, (n_out, n_in) in (("project_in", (cbd, dim)), ("project_out", (dim, cbd))):
        wide[f"{vq}.{name}.weight"], wide[f"{vq}.{name}.bias"] = linear(n_out, n_in)
    emb = "flow_matching.cond_feature_emb"
    wide[f"{emb}.weight"], wide[f"{emb}.bias"] = linear(dim, dim)
    wide["flow_matching.zero_cond_embedding1"] = torch.randn(dim, generator=g) / 10
    latent = 2 * config["out_channels"]
    for name in ("proj_in", "connection_proj"):
        key = f"flow_matching.estimator.{name}.ffn_1.weight"
        w = weights[key]
        added = torch.randn(w.shape[0], dim, w.shape[2], generator=g) / math.sqrt(3 * (w.shape[1] + dim - 16))
        wide[key] = torch.cat([w[:, :latent], added, w[:, latent + 16 :]], dim=1)
    return wide


@pytest.mark.parametrize("config", [CODEC_TINY_CONFIG, WIDE_CONFIG], ids=["tiny", "wide"])
def test_runner_outputs_are_the_oracles_composed_as_heartlib_detokenize_composes_them(weights, config):
    """The runner's three outputs against the oracles above, composed as heartlib's FlowMatching and
    detokenize compose the modules: the RVQ output through cond_feature_emb at twice the rate; one
    guided estimator call as solve_euler makes it ([uncond; cond] rows of [x, in-context, mu], then
    uncond + 1.25 (cond - uncond), detokenize's default scale); the latent split into two channels
    and decoded. The inputs are written out again here: sanity's figures are compared across
    releases, so a changed recipe must fail a test. Once at the tiny widths, once with the
    conditioning wider than 256 channels."""
    c, cfg = config, parse_config(Fields(config, Path("config.json")))
    if config is not CODEC_TINY_CONFIG:
        weights = widened(weights, config)
    rvq = loaded_rvq(weights, config)
    emb = torch.nn.Linear(c["dim"], c["dim"])
    emb.load_state_dict({n: weights[f"flow_matching.cond_feature_emb.{n}"] for n in ("weight", "bias")}, strict=True)
    estimator = TorchEstimator(cfg)
    estimator.load_state_dict(under(weights, "flow_matching.estimator."), strict=True)
    decoder = TorchDecoder(cfg)
    decoder_state = {k: v for k, v in under(weights, "scalar_model.").items() if k.startswith("decoder.")}
    decoder.load_state_dict(decoder_state, strict=True)

    code_frames, frames = 4, 8  # 12.5 Hz codes, 25 Hz latent frames
    q, t = torch.arange(c["num_quantizers"])[:, None], torch.arange(code_frames)[None, :]
    codes = ((q * 977 + t * 131 + 7) % c["codebook_size"])[None]
    x = torch.sin(0.37 * torch.arange(frames * c["out_channels"], dtype=torch.float32)).view(1, frames, -1)
    i, j = torch.arange(frames)[:, None], torch.arange(c["out_channels"])[None, :]
    latent = (((i * 7 + j * 3) % 19) - 9).float()[None] / 9  # [1, T, out_channels], as detokenize holds it
    with torch.no_grad():
        mu = emb(rvq.get_output_from_indices(codes.transpose(1, 2)))
        mu = torch.nn.functional.interpolate(mu.permute(0, 2, 1), scale_factor=2, mode="nearest").permute(0, 2, 1)
        rows = torch.cat([torch.cat([x, x], 0), torch.zeros(2, frames, x.shape[-1]), torch.cat([mu * 0, mu], 0)], 2)
        uncond, cond = estimator(rows, torch.tensor(0.5).repeat(2)).chunk(2, 0)
        velocity = uncond + 1.25 * (cond - uncond)
        split = latent.reshape(1, frames, 2, -1).permute(0, 2, 1, 3).reshape(2, frames, -1)
        audio = decoder(split.transpose(1, 2)).squeeze(1)
    out = tiny_runner(config).outputs(weights, torch.device("cpu"))
    assert set(out) == set(HeartCodecRunner.compared)
    for name, want, bound in (
        ("vq_condition", mu[0], VQ_BOUND),
        ("estimator_velocity", velocity[0], ESTIMATOR_BOUND),
        ("audio", audio, DECODER_BOUND),
    ):
        assert want.abs().max() > 0.5, name
        torch.testing.assert_close(out[name], want, rtol=0, atol=bound, msg=name)


@pytest.mark.parametrize("width", [40, 24])
def test_an_estimator_of_another_input_width_gets_a_fixed_input_of_its_own_width(weights, width):
    """A config whose in_channels is not heartlib's [x, in-context, mu] concatenation (2 x 8 + 16 =
    32 here): the runner feeds the estimator sin(0.37 n) over [2, 8 frames, in_channels] instead,
    and guides as before. Checked against TorchEstimator, with the input channels of both input
    projections (their first 32) widened by 8 of realistic scale or narrowed to 24."""
    config = {**CODEC_TINY_CONFIG, "in_channels": width}
    cfg = parse_config(Fields(config, Path("config.json")))
    wide = dict(weights)
    extra = torch.Generator().manual_seed(5)
    for name in ("proj_in", "connection_proj"):
        key = f"flow_matching.estimator.{name}.ffn_1.weight"
        w = weights[key]
        added = torch.randn(w.shape[0], max(0, width - 32), w.shape[2], generator=extra) / math.sqrt(3 * w.shape[1])
        wide[key] = torch.cat([w[:, : min(width, 32)], added, w[:, 32:]], dim=1)
    estimator = TorchEstimator(cfg)
    estimator.load_state_dict(under(wide, "flow_matching.estimator."), strict=True)
    hidden = torch.sin(0.37 * torch.arange(2 * 8 * width, dtype=torch.float32)).view(2, 8, width)
    with torch.no_grad():
        uncond, cond = estimator(hidden, torch.tensor([0.5, 0.5])).chunk(2, 0)
    want = (uncond + 1.25 * (cond - uncond))[0]
    out = tiny_runner(config).outputs(wide, torch.device("cpu"))
    assert want.abs().max() > 0.5
    torch.testing.assert_close(out["estimator_velocity"], want, rtol=0, atol=ESTIMATOR_BOUND)


@pytest.fixture(scope="module")
def sound_outputs(weights):
    return tiny_runner().outputs(weights, torch.device("cpu"))


def _output_checks(out: dict) -> dict:
    runner = tiny_runner()
    result = SanityResult(pack="codec.bpk", reference=None, device="cpu", pack_dtype="F32", frames=1, model=CODEC)
    runner.output_checks(out, result)
    return {check.name.split(" ")[0]: check.ok for check in result.checks}


@pytest.mark.parametrize(
    ("fault", "failed"),
    [
        (None, set()),
        ("a NaN in the conditioning", {"VQ"}),
        ("a NaN in the velocity", {"estimator"}),
        ("a NaN in the audio", {"decoder"}),
        ("an audio sample short", {"decoder"}),
        ("mono audio", {"decoder"}),
        ("an audio sample too many", {"decoder"}),
        ("three channels", {"decoder"}),
    ],
)
def test_each_output_check_fails_on_its_own_fault_only(sound_outputs, fault, failed):
    out = {name: value.clone() for name, value in sound_outputs.items()}
    if fault == "a NaN in the conditioning":
        out["vq_condition"][1, 2] = float("nan")
    elif fault == "a NaN in the velocity":
        out["estimator_velocity"][3, 1] = float("nan")
    elif fault == "a NaN in the audio":
        out["audio"][1, 100] = float("nan")
    elif fault == "an audio sample short":
        out["audio"] = out["audio"][:, :-1]
    elif fault == "mono audio":
        out["audio"] = out["audio"][:1]
    elif fault == "an audio sample too many":
        out["audio"] = torch.cat([out["audio"], out["audio"][:, :1]], dim=1)
    elif fault == "three channels":
        out["audio"] = torch.cat([out["audio"], out["audio"][:1]], dim=0)
    checks = _output_checks(out)
    # Two channels of 8 latent frames at 25 Hz, each 1920 samples at 48 kHz.
    assert tuple(sound_outputs["audio"].shape) == (2, 8 * 48_000 // 25)
    assert checks == {
        "VQ": "VQ" not in failed,
        "estimator": "estimator" not in failed,
        "decoder": "decoder" not in failed,
    }


def test_the_audio_figure_gives_peak_and_rms_as_numpy_computes_them(sound_outputs):
    def audio_figure(audio):
        runner = tiny_runner()
        result = SanityResult("codec.bpk", None, "cpu", "F32", 1, model=CODEC)
        runner.output_checks({**sound_outputs, "audio": audio}, result)
        return result.checks[-1].figure

    a = sound_outputs["audio"].numpy().astype(np.float64)
    assert audio_figure(sound_outputs["audio"]).endswith(
        f"peak {np.abs(a).max():.4g}, rms {np.sqrt(np.mean(a**2)):.4g}"
    )
    assert audio_figure(sound_outputs["audio"][:, :0]).endswith("peak 0, rms 0")


@pytest.mark.parametrize(("zeroed", "flagged"), [("output channel 1", True), ("tap 0 of output channel 1", False)])
def test_a_direction_is_zero_per_output_channel_as_torch_weight_norm_divides(weights, zeroed, flagged):
    """torch's weight_norm (dim=0) divides each output channel by the norm of all its inputs and
    taps: one channel all zero gives NaN, one tap zero in a channel that has others does not."""
    name = next(n for n in weights if n.endswith("parametrizations.weight.original1"))
    direction = weights[name].clone()
    if zeroed == "output channel 1":
        direction[1] = 0
    else:
        direction[1, :, 0] = 0
    o, i, k = direction.shape
    conv = torch.nn.utils.parametrizations.weight_norm(torch.nn.Conv1d(i, o, k))
    with torch.no_grad():
        conv.parametrizations.weight.original1.copy_(direction)
        assert bool(torch.isnan(conv.weight).any()) is flagged  # torch's own weight norm
    runner = tiny_runner()
    result = SanityResult("codec.bpk", None, "cpu", "F32", 1, model=CODEC)
    runner.weight_checks({**weights, name: direction}, result)
    assert {c.name: c.ok for c in result.checks}["weight-norm directions non-zero"] is not flagged


def test_weight_checks_name_the_first_three_faulty_tensors_and_count_them_all(weights):
    directions = [n for n in weights if n.endswith("parametrizations.weight.original1")][:5]
    halves = [n for n in weights if n.startswith("flow_matching.estimator.transformer_blocks.")][:4]
    faulty = dict(weights)
    for name in directions:
        faulty[name] = torch.zeros_like(weights[name])
    for name, dtype in zip(halves, (torch.bfloat16, torch.float16, torch.float64, torch.float64)):
        faulty[name] = weights[name].to(dtype)
    runner = tiny_runner()
    sound, found = (SanityResult("codec.bpk", None, "cpu", "F32", 1, model=CODEC) for _ in range(2))
    runner.weight_checks(weights, sound)
    runner.weight_checks(faulty, found)
    figures = {check.name: (check.ok, check.figure) for check in found.checks}
    assert all(check.ok for check in sound.checks) and len(sound.checks) == len(found.checks) == 3
    assert figures["every tensor F32 (runtimes read nothing else)"] == (False, f"4 are not: {', '.join(halves[:3])}")
    ok, figure = figures["weight-norm directions non-zero"]
    assert not ok and figure.endswith(f"; a zero direction (weight becomes NaN) in {', '.join(directions[:3])}")


# ---- end to end --------------------------------------------------------------------------------------


def _sanity(*args):
    proc = run_cli("sanity", *args, "--device", "cpu", "--json")
    return proc, (json.loads(proc.stdout) if proc.stdout.strip() else None)


@pytest.fixture(scope="module")
def pack(tiny_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("codec_packs")
    run_cli("pack", tiny_root / CODEC, "-o", out / "heartcodec.bpk", "-q", check_rc=0)
    return out / "heartcodec.bpk"


def test_f32_codec_pack_matches_its_checkpoint_exactly(pack, tiny_root):
    proc, report = _sanity(pack, "--reference", tiny_root)
    assert proc.returncode == 0, proc.stderr
    checks = {c["name"]: c for c in report["checks"]}
    assert report["model"] == "heartcodec" and all(c["ok"] for c in checks.values())
    for name in HeartCodecRunner.compared:
        assert report["figures"][f"reference: {name}: max_abs_diff"] == 0.0
    assert checks["decoder audio of 8 latent frames finite"]["figure"].startswith("shape [2, 15360]")
    assert report["figures"]["audio_peak"] > 0.1


def _broken_pack(tiny_root: Path, tmp_path: Path, edit) -> Path:
    """A pack made through an edited manifest of the codec (sources swapped or replaced)."""
    ckpt = linked(tiny_root, tmp_path)
    run_cli("manifest", ckpt, "--subdir", CODEC, "-o", tmp_path / "m.json", check_rc=0)
    doc = json.loads((tmp_path / "m.json").read_text())
    edit({t["name"]: t for t in doc["tensors"]})
    (tmp_path / "m.json").write_text(json.dumps(doc))
    run_cli("pack", "--manifest", tmp_path / "m.json", "-o", tmp_path / "broken.bpk", "-q", check_rc=0)
    return tmp_path / "broken.bpk"


def _failed(report) -> set[str]:
    return {c["name"] for c in report["checks"] if c["ok"] is False}


def test_two_swapped_decoder_weights_fail_only_the_audio(tiny_root, tmp_path):
    def swap(by_name):
        a, b = (by_name[f"scalar_model.decoder.3.convs.{u}.conv1.parametrizations.weight.original1"] for u in (1, 2))
        a["source"], b["source"] = b["source"], a["source"]

    proc, report = _sanity(_broken_pack(tiny_root, tmp_path, swap), "--reference", tiny_root)
    assert proc.returncode == 1 and _failed(report) == {"reference: audio"}
    assert "sanity check failed: reference: audio" in proc.stderr


def test_a_transposed_square_estimator_weight_fails_only_the_estimator(tiny_root, tmp_path):
    from safetensors.numpy import save_file

    name = "flow_matching.estimator.transformer_blocks.3.attn.o_proj.weight"
    root = tmp_path / "root"
    shutil.copytree(tiny_root, root)
    index = json.loads((root / CODEC / "model.safetensors.index.json").read_text())
    shard = root / CODEC / index["weight_map"][name]
    tensors = load_file(shard)
    assert tensors[name].shape[0] == tensors[name].shape[1]
    tensors[name] = np.ascontiguousarray(tensors[name].T)
    save_file(tensors, str(shard), metadata={"format": "pt"})
    run_cli("pack", root / CODEC, "-o", tmp_path / "t.bpk", "-q", check_rc=0)
    proc, report = _sanity(tmp_path / "t.bpk", "--reference", tiny_root)
    assert proc.returncode == 1 and _failed(report) == {"reference: estimator_velocity"}


def test_a_zero_weight_norm_direction_and_a_non_f32_pack_are_named(tiny_root, tmp_path):
    zero = "scalar_model.decoder.1.convs.0.conv2.parametrizations.weight.original1"

    def zero_direction(by_name):  # one direction read from an all-zero .npy beside the manifest
        np.save(tmp_path / "zero.npy", np.zeros(by_name[zero]["shape"], np.float32))
        by_name[zero]["source"] = {"file": "zero.npy", "key": "zero"}

    proc, report = _sanity(_broken_pack(tiny_root, tmp_path, zero_direction))
    assert proc.returncode == 1 and "weight-norm directions non-zero" in _failed(report)
    assert zero in {c["name"]: c for c in report["checks"]}["weight-norm directions non-zero"]["figure"]

    # A BF16 codec pack (only --any-model makes one): the runtime would ignore every tensor.
    run_cli("pack", tiny_root / CODEC, "--any-model", "--dtype", "bf16", "-o", tmp_path / "bf16.bpk", "-q", check_rc=0)
    proc, report = _sanity(tmp_path / "bf16.bpk", "--config", tiny_root / CODEC / "config.json")
    assert proc.returncode == 1 and _failed(report) == {"every tensor F32 (runtimes read nothing else)"}
