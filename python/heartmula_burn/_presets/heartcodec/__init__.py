"""The HeartCodec preset: HeartMuLa's audio codec (heartlib's `HeartCodec`: a residual VQ, a
flow-matching DiT estimator and the ScalarModel convolutional codec). Every tensor its config.json
implies, derived the way heartlib's modules build them (`HeartCodecConfig` defaults for keys the
file leaves out); PyTorch layouts as stored, weight norm kept as its two parametrization tensors
(never folded), the VQ buffers (`initted`, `cluster_size`, `embed_avg`) as stored."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..._fields import Fields
from .. import MAX_SIZE, MAX_TENSOR_COUNT, Preset, Release, Shapes, check_tensor_count
from . import card

if TYPE_CHECKING:
    from ..runner import Runner

# Tensors only a HeartCodec checkpoint has (to recognise a pack that does not say what it holds).
SIGNATURE = frozenset({"flow_matching.cond_feature_emb.weight", "scalar_model.decoder.0.bias"})
# The sinusoidal timestep encoding the estimator's AdaLN embeds (PixArtAlphaCombinedFlowEmbeddings).
FLOW_T_SIZE = 512
# Residual units of every ScalarModel block, by dilation.
RESIDUAL_DILATIONS = (1, 3, 5, 7, 9)


@dataclass(frozen=True)
class HeartCodecConfig:
    # residual VQ
    dim: int
    codebook_size: int
    codebook_dim: int
    num_quantizers: int
    # flow-matching estimator (LlamaTransformer)
    attention_head_dim: int
    num_attention_heads: int
    num_layers: int
    num_layers_2: int
    in_channels: int
    out_channels: int
    ada_norm: bool  # norm_type == "ada_norm_single": blocks carry a scale_shift_table
    # ScalarModel
    num_bands: int
    num_samples: int
    causal: bool
    sample_rate: int
    downsample_factors: tuple[int, ...]
    downsample_kernel_sizes: tuple[int, ...]
    upsample_factors: tuple[int, ...]
    upsample_kernel_sizes: tuple[int, ...]
    latent_hidden_dim: int
    default_kernel_size: int
    delay_kernel_size: int
    init_channel: int
    res_kernel_size: int

    @property
    def inner_dim(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    @property
    def inner_dim_2(self) -> int:
        return 2 * self.inner_dim

    @property
    def upsampling(self) -> int:
        """Audio samples per latent frame (per channel)."""
        return math.prod(self.upsample_factors) * (max(1, self.num_samples))


def mlp_hidden(dim: int, multiple_of: int = 256) -> int:
    """heartlib's LlamaMLP width: 2/3 of 4*dim, rounded up to a multiple of 256."""
    hidden = int(2 * (4 * dim) / 3)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


def parse_config(config: Fields) -> HeartCodecConfig:
    """Reads config.json with heartlib's `HeartCodecConfig` defaults for absent keys."""

    def size(key: str, default: int) -> int:
        return config.integer(key, minimum=1, maximum=MAX_SIZE, default=default)

    def count(key: str, default: int, minimum: int = 0) -> int:  # of codebooks, of blocks
        return config.integer(key, minimum=minimum, maximum=MAX_TENSOR_COUNT, default=default)

    def factors(key: str, default: list[int]) -> tuple[int, ...]:  # one level each: counted below
        return tuple(config.integers(key, maximum=MAX_SIZE, default=default))

    down, down_kernels = (
        factors("downsample_factors", [3, 4, 4, 4, 5]),
        factors("downsample_kernel_sizes", [6, 8, 8, 8, 10]),
    )
    up, up_kernels = factors("upsample_factors", [5, 4, 4, 4, 3]), factors("upsample_kernel_sizes", [10, 8, 8, 8, 6])
    if len(down) != len(down_kernels):
        raise config.error("downsample_kernel_sizes", f"must have one entry per downsample_factors ({len(down)})")
    if len(up) != len(up_kernels):
        raise config.error("upsample_kernel_sizes", f"must have one entry per upsample_factors ({len(up)})")
    causal = config.boolean("causal", default=True)
    if causal and any(k != 2 * f for f, k in zip(up, up_kernels)):
        raise config.error(
            "upsample_kernel_sizes", "must be twice upsample_factors in a causal codec (heartlib asserts it)"
        )
    if config.boolean("use_cosine_sim", default=False):
        raise config.error("use_cosine_sim", "is true: cosine-similarity codebooks are not supported by this preset")
    c = HeartCodecConfig(
        dim=size("dim", 512),
        codebook_size=size("codebook_size", 8192),
        codebook_dim=size("codebook_dim", 32),
        num_quantizers=count("num_quantizers", 8, minimum=1),
        attention_head_dim=size("attention_head_dim", 64),
        num_attention_heads=size("num_attention_heads", 24),
        num_layers=count("num_layers", 24),
        num_layers_2=count("num_layers_2", 6),
        in_channels=size("in_channels", 1024),
        out_channels=size("out_channels", 256),
        ada_norm=config.string("norm_type", default="ada_norm_single") == "ada_norm_single",
        num_bands=size("num_bands", 1),
        num_samples=size("num_samples", 2),
        causal=causal,
        sample_rate=size("sample_rate", 48000),
        downsample_factors=down,
        downsample_kernel_sizes=down_kernels,
        upsample_factors=up,
        upsample_kernel_sizes=up_kernels,
        latent_hidden_dim=size("latent_hidden_dim", 128),
        default_kernel_size=size("default_kernel_size", 7),
        delay_kernel_size=size("delay_kernel_size", 5),
        init_channel=size("init_channel", 64),
        res_kernel_size=size("res_kernel_size", 7),
    )
    check_tensor_count(config, "HeartCodec", fixed_tensors(c), count_tensors(c))
    return c


def count_tensors(c: HeartCodecConfig) -> dict[str, int]:
    """The tensors each count of the config brings (what `expected_tensors` builds per codebook,
    per block, per level), by key."""
    block = 9 + int(c.ada_norm)  # 2 norms, 4 attention and 3 MLP projections, the AdaLN table
    return {
        "num_quantizers": 4 * c.num_quantizers,
        "num_layers": block * c.num_layers,
        "num_layers_2": block * c.num_layers_2,
        "downsample_factors": (len(RESIDUAL_DILATIONS) * 8 + 4) * len(c.downsample_factors),
        "upsample_factors": (len(RESIDUAL_DILATIONS) * 8 + 3) * len(c.upsample_factors),
    }


def fixed_tensors(c: HeartCodecConfig) -> int:
    """The tensors of `expected_tensors` that no count of the config multiplies."""
    vq_projections = 4 if c.codebook_dim != c.dim else 0
    flow_matching = vq_projections + 3 + 3 * 4 + 2 + 2 * 6  # embeddings, 3 projections, 2 tables, 2 AdaLNs
    pre_post = 6 if c.num_samples > 1 else 0
    return flow_matching + 4 * 3 + pre_post  # 4 weight-normed convolutions around the levels


def _linear(s: Shapes, prefix: str, n_in: int, n_out: int, bias: bool = True) -> None:
    s[f"{prefix}.weight"] = (n_out, n_in)
    if bias:
        s[f"{prefix}.bias"] = (n_out,)


def _project(s: Shapes, prefix: str, n_in: int, n_out: int) -> None:
    """heartlib's ProjectLayer: Conv1d(k=3) then Linear."""
    s[f"{prefix}.ffn_1.weight"] = (n_out, n_in, 3)
    s[f"{prefix}.ffn_1.bias"] = (n_out,)
    _linear(s, f"{prefix}.ffn_2", n_out, n_out)


def _weight_norm_conv(s: Shapes, prefix: str, n_in: int, n_out: int, kernel: int) -> None:
    """Conv1d under torch's weight_norm parametrization (dim 0): g [out, 1, 1], v [out, in, k]."""
    s[f"{prefix}.parametrizations.weight.original0"] = (n_out, 1, 1)
    s[f"{prefix}.parametrizations.weight.original1"] = (n_out, n_in, kernel)
    s[f"{prefix}.bias"] = (n_out,)


def _weight_norm_conv_transpose(s: Shapes, prefix: str, n_in: int, n_out: int, kernel: int) -> None:
    """ConvTranspose1d under weight_norm (dim 0 of its [in, out, k] weight): g [in, 1, 1]."""
    s[f"{prefix}.parametrizations.weight.original0"] = (n_in, 1, 1)
    s[f"{prefix}.parametrizations.weight.original1"] = (n_in, n_out, kernel)
    s[f"{prefix}.bias"] = (n_out,)


def _plain_conv(s: Shapes, prefix: str, n_in: int, n_out: int, kernel: int) -> None:
    s[f"{prefix}.weight"] = (n_out, n_in, kernel)
    s[f"{prefix}.bias"] = (n_out,)


def _prelu(s: Shapes, prefix: str) -> None:
    s[f"{prefix}.weight"] = (1,)


def _residual_unit(s: Shapes, prefix: str, n_in: int, n_out: int, kernel: int) -> None:
    _weight_norm_conv(s, f"{prefix}.conv1", n_in, n_out, kernel)
    _weight_norm_conv(s, f"{prefix}.conv2", n_in, n_out, 1)
    _prelu(s, f"{prefix}.activation1")
    _prelu(s, f"{prefix}.activation2")


def flow_matching_tensors(c: HeartCodecConfig) -> Shapes:
    s: Shapes = {}
    vq = "flow_matching.vq_embed"
    if c.codebook_dim != c.dim:  # vector-quantize-pytorch's ResidualVQ projects only then
        _linear(s, f"{vq}.project_in", c.dim, c.codebook_dim)
        _linear(s, f"{vq}.project_out", c.codebook_dim, c.dim)
    for q in range(c.num_quantizers):
        book = f"{vq}.layers.{q}._codebook"
        s[f"{book}.initted"] = (1,)  # [1] as released (newer vector-quantize-pytorch makes it 0-d)
        s[f"{book}.cluster_size"] = (1, c.codebook_size)
        s[f"{book}.embed"] = (1, c.codebook_size, c.codebook_dim)
        s[f"{book}.embed_avg"] = (1, c.codebook_size, c.codebook_dim)
    _linear(s, "flow_matching.cond_feature_emb", c.dim, c.dim)
    s["flow_matching.zero_cond_embedding1"] = (c.dim,)
    est = "flow_matching.estimator"
    _project(s, f"{est}.proj_in", c.in_channels, c.inner_dim)
    for blocks, count, d in (
        ("transformer_blocks", c.num_layers, c.inner_dim),
        ("transformer_blocks_2", c.num_layers_2, c.inner_dim_2),
    ):
        hidden = mlp_hidden(d)
        for i in range(count):
            b = f"{est}.{blocks}.{i}"
            s[f"{b}.attn_norm.weight"] = (d,)
            for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
                _linear(s, f"{b}.attn.{proj}", d, d, bias=False)
            s[f"{b}.mlp_norm.weight"] = (d,)
            _linear(s, f"{b}.mlp.gate", d, hidden, bias=False)
            _linear(s, f"{b}.mlp.up", d, hidden, bias=False)
            _linear(s, f"{b}.mlp.down", hidden, d, bias=False)
            if c.ada_norm:
                s[f"{b}.scale_shift_table"] = (6, d)
    _project(s, f"{est}.connection_proj", c.in_channels + c.inner_dim, c.inner_dim_2)
    s[f"{est}.scale_shift_table"] = (2, c.inner_dim)
    s[f"{est}.scale_shift_table_2"] = (2, c.inner_dim_2)
    _project(s, f"{est}.proj_out", c.inner_dim_2, c.out_channels)
    for adaln, d in (("adaln_single", c.inner_dim), ("adaln_single_2", c.inner_dim_2)):
        _linear(s, f"{est}.{adaln}.emb.timestep_embedder.linear_1", FLOW_T_SIZE, d)
        _linear(s, f"{est}.{adaln}.emb.timestep_embedder.linear_2", d, d)
        _linear(s, f"{est}.{adaln}.linear", d, 6 * d)
    return s


def scalar_model_tensors(c: HeartCodecConfig) -> Shapes:
    s: Shapes = {}
    enc, init = "scalar_model.encoder", c.init_channel
    _weight_norm_conv(s, f"{enc}.0", c.num_bands, init, c.default_kernel_size)
    i = 1
    if c.num_samples > 1:  # PreProcessor: plain conv, PReLU, average pooling
        _plain_conv(s, f"{enc}.1.conv", init, init, c.default_kernel_size)
        _prelu(s, f"{enc}.1.activation")
        i = 2
    for level, kernel in enumerate(c.downsample_kernel_sizes):
        n_in, n_out = init * 2**level, init * 2 ** (level + 1)
        block = f"{enc}.{i + level}"
        for unit in range(len(RESIDUAL_DILATIONS)):
            _residual_unit(s, f"{block}.convs.{unit}", n_in if unit == 0 else n_out // 2, n_out // 2, c.res_kernel_size)
        _weight_norm_conv(s, f"{block}.down_conv.layer", n_in, n_out, kernel)
        _prelu(s, f"{block}.down_conv.activation")
    top = init * 2 ** len(c.downsample_factors)
    _weight_norm_conv(s, f"{enc}.{i + len(c.downsample_factors)}", top, c.latent_hidden_dim, c.default_kernel_size)

    dec, levels = "scalar_model.decoder", len(c.upsample_factors)
    _weight_norm_conv(s, f"{dec}.0", c.latent_hidden_dim, init * 2**levels, c.delay_kernel_size)
    for level, kernel in enumerate(c.upsample_kernel_sizes):
        n_in, n_out = init * 2 ** (levels - level), init * 2 ** (levels - level - 1)
        block = f"{dec}.{1 + level}"
        _weight_norm_conv_transpose(s, f"{block}.up_conv.layer", n_in, n_out, kernel)
        for unit in range(len(RESIDUAL_DILATIONS)):
            _residual_unit(s, f"{block}.convs.{unit}", n_out, n_out, c.res_kernel_size)
    last = 1 + levels
    if c.num_samples > 1:  # PostProcessor: repeat, plain conv, PReLU
        _plain_conv(s, f"{dec}.{last}.conv", init, init, c.default_kernel_size)
        _prelu(s, f"{dec}.{last}.activation")
        last += 1
    _weight_norm_conv(s, f"{dec}.{last}", init, c.num_bands, c.default_kernel_size)
    return s


def expected_tensors(c: HeartCodecConfig) -> Shapes:
    return {**flow_matching_tensors(c), **scalar_model_tensors(c)}


class HeartCodec(Preset):
    name = "heartcodec"
    title = "HeartCodec"
    pack_name = "heartcodec.bpk"
    folder_names = ("HeartCodec-oss", "HeartCodec-oss-20260123")
    dtypes = ("f32",)
    dtype_reason = (
        "HeartCodec packs are F32 only: Burn HeartMuLa runtimes read only F32 codec tensors (any other "
        "dtype is silently replaced by defaults) and heartlib warns that bf16 degrades the codec's audio"
    )
    sanity_summary = (
        "every weight finite, weight-norm directions non-zero, the VQ conditioning of fixed codes, one "
        "flow-matching estimator call at a fixed input and timestep 0.5, and the ScalarModel decoder on a fixed "
        "latent (multiples of 1/9) to audio"
    )
    hub_role = "codec"
    card_loading = card.LOADING
    card_tag = "heartmula"
    licence = ("apache-2.0", "Apache-2.0")
    signature = SIGNATURE
    releases = (Release("HeartMuLa/HeartCodec-oss"), Release("HeartMuLa/HeartCodec-oss-20260123"))

    def synthetic_value_scale(self, name: str, shape: tuple[int, ...]) -> tuple[float, float] | None:
        if ".activation" in name:
            return 0.25, 0.05  # PReLU slopes (torch initialises them to 0.25)
        if name.endswith(".initted"):
            return 1.0, 0.0
        if name.endswith(".cluster_size"):
            return 4.0, 0.5
        if name.endswith(("._codebook.embed", "._codebook.embed_avg")):
            return 0.0, 1.0
        return None

    def recognizes(self, config: Fields) -> bool:
        model_type = config.doc.get("model_type")
        return model_type == "heartcodec" or (model_type is None and "upsample_factors" in config)

    def expected_tensors(self, config: Fields) -> Shapes:
        return expected_tensors(parse_config(config))

    synthetic_shards = 2  # as released

    def synthetic_config(self, full: bool, layers: int | None = None) -> dict[str, Any]:
        from .synthetic import FULL_CONFIG, TINY_CONFIG

        return dict(FULL_CONFIG if full else TINY_CONFIG)

    def runner(self, config: Fields, frames: int) -> Runner:
        from .sanity import HeartCodecRunner

        return HeartCodecRunner(config, frames)

    def config_from_pack(
        self, metadata: Mapping[str, str], shapes: Mapping[str, tuple[int, ...]], where: Path
    ) -> Fields:
        """The released config is heartlib's defaults throughout: an empty one."""
        return Fields({}, where, "config")

    def describe(self, config: Fields, shapes: Mapping[str, tuple[int, ...]]) -> list[tuple[str, str]]:
        c = parse_config(config)
        return [
            (
                "residual VQ",
                f"{c.num_quantizers} codebooks of {c.codebook_size} codes, dim {c.codebook_dim} -> {c.dim}",
            ),
            (
                "flow-matching estimator",
                (
                    f"{c.num_layers} + {c.num_layers_2} LLaMA-style blocks, width {c.inner_dim} / {c.inner_dim_2}, "
                    f"MLP {mlp_hidden(c.inner_dim)} / {mlp_hidden(c.inner_dim_2)}, {c.num_attention_heads} heads, "
                    f"input {c.in_channels}, latent {c.out_channels}"
                ),
            ),
            (
                "ScalarModel decoder",
                f"latent {c.latent_hidden_dim} x {c.out_channels // max(c.latent_hidden_dim, 1)} channels, upsampling "
                f"{' x '.join(map(str, c.upsample_factors))}"
                + (f" x {c.num_samples}" if c.num_samples > 1 else "")
                + f" = {c.upsampling}, channels {c.init_channel * 2 ** len(c.upsample_factors)} -> {c.num_bands}",
            ),
            ("sample rate", f"{c.sample_rate} Hz"),
        ]
