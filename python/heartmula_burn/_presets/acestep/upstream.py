"""ACE-Step 1.5's upstream checkpoints: every tensor name and shape as a function of config.json.

What the Hugging Face files hold, derived from upstream's own module code (not from any runtime's names):

- `acestep-v15-{turbo,sft}/model.safetensors`: `AceStepConditionGenerationModel` in
  `acestep/models/turbo/modeling_acestep_v15_turbo.py` of github.com/ace-step/ACE-Step-1.5 (read at commit
  14bd1db1d02afb379a1812e7d8b750768dc38734; the file also ships beside the weights on the Hub). Its
  `Qwen3MLP`, `Qwen3RMSNorm` and `Qwen3RotaryEmbedding` are transformers' (no biases in the MLP; the rotary
  `inv_freq` buffer is not persistent), its quantizer is vector-quantize-pytorch's `ResidualFSQ` (only
  `project_in`/`project_out` persist; `scales`, `soft_clamp_input_value` and the FSQ layers' buffers do not).
- `vae/diffusion_pytorch_model.safetensors`: diffusers' `AutoencoderOobleck`
  (src/diffusers/models/autoencoders/autoencoder_oobleck.py), encoder and decoder, every conv wrapped in the
  old `torch.nn.utils.weight_norm` (so `weight_g` [dim 0, 1, 1] and `weight_v`, the conv's weight shape).
- `Qwen3-Embedding-0.6B/model.safetensors` and the 5 Hz planners: transformers' `Qwen3Model` /
  `Qwen3ForCausalLM` (`modeling_qwen3.py`).

`safetensors_file_size` gives a file's exact byte count as the `safetensors` package writes it, so each table
is checked against the real file sizes the Hub lists (tests/test_acestep_upstream.py).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

Shapes = dict[str, tuple[int, ...]]

__all__ = [
    "PLANNER_CONFIGS",
    "QWEN3_EMBEDDING_CONFIG",
    "TURBO_CONFIG",
    "VAE_CONFIG",
    "Shapes",
    "dit_checkpoint",
    "qwen3_checkpoint",
    "safetensors_file_size",
    "vae_checkpoint",
]

# --------------------------------------------------------------------------------------------------------------
# The real config.json files.

# `ACE-Step/Ace-Step1.5` `acestep-v15-turbo/config.json`, as copied verbatim in maolan-generate 0.0.19
# (src/acestep/testdata/acestep_v15_turbo_config.json). The SFT DiT has the same architecture.
TURBO_CONFIG: dict[str, Any] = {
    "architectures": ["AceStepConditionGenerationModel"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "audio_acoustic_hidden_dim": 64,
    "auto_map": {
        "AutoConfig": "configuration_acestep_v15.AceStepConfig",
        "AutoModel": "modeling_acestep_v15_turbo.AceStepConditionGenerationModel",
    },
    "data_proportion": 0.5,
    "dtype": "bfloat16",
    "fsq_dim": 2048,
    "fsq_input_levels": [8, 8, 8, 5, 5, 5],
    "fsq_input_num_quantizers": 1,
    "head_dim": 128,
    "hidden_act": "silu",
    "hidden_size": 2048,
    "in_channels": 192,
    "initializer_range": 0.02,
    "intermediate_size": 6144,
    "is_turbo": True,
    "layer_types": ["sliding_attention", "full_attention"] * 12,
    "max_position_embeddings": 32768,
    "model_type": "acestep",
    "model_version": "turbo",
    "num_attention_heads": 16,
    "num_attention_pooler_hidden_layers": 2,
    "num_audio_decoder_hidden_layers": 24,
    "num_hidden_layers": 24,
    "num_key_value_heads": 8,
    "num_lyric_encoder_hidden_layers": 8,
    "num_timbre_encoder_hidden_layers": 4,
    "patch_size": 2,
    "pool_window_size": 5,
    "rms_norm_eps": 1e-06,
    "rope_scaling": None,
    "rope_theta": 1000000,
    "sliding_window": 128,
    "text_hidden_dim": 1024,
    "timbre_fix_frame": 750,
    "timbre_hidden_dim": 64,
    "timestep_mu": -0.4,
    "timestep_sigma": 1.0,
    "transformers_version": "4.57.0.dev0",
    "use_cache": True,
    "use_sliding_window": True,
    "vocab_size": 64003,
}

# `ACE-Step/Ace-Step1.5` `vae/config.json` (maolan-generate 0.0.19 src/acestep/testdata/oobleck_vae_config.json).
VAE_CONFIG: dict[str, Any] = {
    "_class_name": "AutoencoderOobleck",
    "_diffusers_version": "0.34.0",
    "_name_or_path": "/root/data/repo/gongjunmin/ACE-Step-1.5/checkpoints/vae/",
    "audio_channels": 2,
    "channel_multiples": [1, 2, 4, 8, 16],
    "decoder_channels": 128,
    "decoder_input_channels": 64,
    "downsampling_ratios": [2, 4, 4, 6, 10],
    "encoder_hidden_size": 128,
    "sampling_rate": 48000,
}

# `ACE-Step/Ace-Step1.5` `Qwen3-Embedding-0.6B/config.json`
# (maolan-generate 0.0.19 src/acestep/testdata/qwen3_embedding_config.json).
QWEN3_EMBEDDING_CONFIG: dict[str, Any] = {
    "architectures": ["Qwen3Model"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 151643,
    "dtype": "bfloat16",
    "eos_token_id": 151643,
    "head_dim": 128,
    "hidden_act": "silu",
    "hidden_size": 1024,
    "initializer_range": 0.02,
    "intermediate_size": 3072,
    "layer_types": ["full_attention"] * 28,
    "max_position_embeddings": 32768,
    "max_window_layers": 28,
    "model_type": "qwen3",
    "num_attention_heads": 16,
    "num_hidden_layers": 28,
    "num_key_value_heads": 8,
    "rms_norm_eps": 1e-06,
    "rope_scaling": None,
    "rope_theta": 1000000,
    "sliding_window": None,
    "tie_word_embeddings": True,
    "transformers_version": "4.57.0.dev0",
    "use_cache": True,
    "use_sliding_window": False,
    "vocab_size": 151669,
}

# The 5 Hz LM planners (`ACE-Step/acestep-5Hz-lm-{0.6B,1.7B,4B}`, the 1.7B also in `ACE-Step/Ace-Step1.5`). No
# verbatim copy of their config.json was found (not in the ACE-Step-1.5 GitHub repository nor in any indexed public
# code), so these are DERIVED: Qwen's own Qwen3-0.6B / Qwen3-1.7B / Qwen3-4B base configs (the planners are
# fine-tunes of them, tied embeddings) with the vocabulary extended by the `<|audio_code_N|>` tokens. vocab_size
# 217204 is solved from the real file sizes and reproduces both exactly (0.6B 1,325,804,024 bytes, 1.7B
# 3,708,521,528); third-party code pinning the 1.7B and 4B planners also states 217204. The 4B's (sharded) size is
# not checked here: its figures are Qwen3-4B's with the same vocabulary.
_QWEN3_BASE: dict[str, Any] = {
    "model_type": "qwen3",
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "head_dim": 128,
    "hidden_act": "silu",
    "initializer_range": 0.02,
    "max_position_embeddings": 40960,
    "num_key_value_heads": 8,
    "rms_norm_eps": 1e-06,
    "rope_scaling": None,
    "rope_theta": 1000000,
    "sliding_window": None,
    "tie_word_embeddings": True,
    "use_cache": True,
    "use_sliding_window": False,
    "vocab_size": 217204,
}
PLANNER_CONFIGS: dict[str, dict[str, Any]] = {
    size: {
        **_QWEN3_BASE,
        "hidden_size": hidden,
        "intermediate_size": inter,
        "num_hidden_layers": layers,
        "max_window_layers": layers,
        "num_attention_heads": heads,
    }
    for size, hidden, inter, layers, heads in (
        ("0.6B", 1024, 3072, 28, 16),
        ("1.7B", 2048, 6144, 28, 16),
        ("4B", 2560, 9728, 36, 32),
    )
}

# --------------------------------------------------------------------------------------------------------------
# Building blocks (names relative to the module; `p` is the module's prefix, ending in "." or empty).


def _linear(out: Shapes, p: str, n_in: int, n_out: int, bias: bool = True) -> None:
    out[p + "weight"] = (n_out, n_in)
    if bias:
        out[p + "bias"] = (n_out,)


def _head_dim(config: Mapping[str, Any]) -> int:
    # Upstream: getattr(config, "head_dim", hidden_size // num_attention_heads).
    head_dim = config.get("head_dim")
    return int(head_dim) if head_dim is not None else int(config["hidden_size"]) // int(config["num_attention_heads"])


def _attention(out: Shapes, p: str, config: Mapping[str, Any]) -> None:
    """`AceStepAttention` and transformers' `Qwen3Attention`: q/k/v/o projections and per-head RMS norms."""
    hidden, heads, kv_heads = (
        int(config["hidden_size"]),
        int(config["num_attention_heads"]),
        int(config["num_key_value_heads"]),
    )
    head_dim, bias = _head_dim(config), bool(config.get("attention_bias", False))
    _linear(out, p + "q_proj.", hidden, heads * head_dim, bias)
    _linear(out, p + "k_proj.", hidden, kv_heads * head_dim, bias)
    _linear(out, p + "v_proj.", hidden, kv_heads * head_dim, bias)
    _linear(out, p + "o_proj.", heads * head_dim, hidden, bias)
    out[p + "q_norm.weight"] = (head_dim,)
    out[p + "k_norm.weight"] = (head_dim,)


def _mlp(out: Shapes, p: str, config: Mapping[str, Any]) -> None:
    """transformers' `Qwen3MLP` (no biases)."""
    hidden, inter = int(config["hidden_size"]), int(config["intermediate_size"])
    _linear(out, p + "gate_proj.", hidden, inter, False)
    _linear(out, p + "up_proj.", hidden, inter, False)
    _linear(out, p + "down_proj.", inter, hidden, False)


def _encoder_layer(out: Shapes, p: str, config: Mapping[str, Any]) -> None:
    """`AceStepEncoderLayer`, the same names as transformers' `Qwen3DecoderLayer`."""
    hidden = int(config["hidden_size"])
    _attention(out, p + "self_attn.", config)
    out[p + "input_layernorm.weight"] = (hidden,)
    out[p + "post_attention_layernorm.weight"] = (hidden,)
    _mlp(out, p + "mlp.", config)


def _encoder_stack(out: Shapes, p: str, config: Mapping[str, Any], n_in: int, layers: int) -> None:
    """`embed_tokens` (a Linear from `n_in`), `norm`, `layers.N`: the lyric and timbre encoders, the attention
    pooler and the detokenizer all start so."""
    hidden = int(config["hidden_size"])
    _linear(out, p + "embed_tokens.", n_in, hidden)
    out[p + "norm.weight"] = (hidden,)
    for i in range(layers):
        _encoder_layer(out, f"{p}layers.{i}.", config)


# --------------------------------------------------------------------------------------------------------------
# The DiT + condition checkpoint.


def _encoder_config(config: Mapping[str, Any]) -> Mapping[str, Any]:
    """The config upstream builds the encoder, tokenizer and detokenizer from: the same one, unless it names an
    `encoder_hidden_size` other than `hidden_size` (newer upstream code, for its larger DiTs)."""
    enc_hidden = config.get("encoder_hidden_size") or config["hidden_size"]
    if int(enc_hidden) == int(config["hidden_size"]):
        return config
    enc = dict(config)
    enc["hidden_size"] = enc_hidden
    for key in ("intermediate_size", "num_attention_heads", "num_key_value_heads"):
        enc[key] = config.get("encoder_" + key) or config[key]
    return enc


def dit_checkpoint(config: Mapping[str, Any]) -> Shapes:
    """Every tensor of `acestep-v15-*/model.safetensors` (`AceStepConditionGenerationModel.state_dict()`)."""
    out: Shapes = {}
    hidden = int(config["hidden_size"])
    acoustic = int(config["audio_acoustic_hidden_dim"])
    patch = int(config["patch_size"])

    # decoder: AceStepDiTModel. Its layer count is num_hidden_layers (num_audio_decoder_hidden_layers is unused).
    d = "decoder."
    for i in range(int(config["num_hidden_layers"])):
        p = f"{d}layers.{i}."
        out[p + "self_attn_norm.weight"] = (hidden,)
        _attention(out, p + "self_attn.", config)
        out[p + "cross_attn_norm.weight"] = (hidden,)
        _attention(out, p + "cross_attn.", config)
        out[p + "mlp_norm.weight"] = (hidden,)
        _mlp(out, p + "mlp.", config)
        out[p + "scale_shift_table"] = (1, 6, hidden)
    # proj_in = Sequential(Lambda, Conv1d, Lambda): the conv is index 1.
    out[d + "proj_in.1.weight"] = (hidden, int(config["in_channels"]), patch)
    out[d + "proj_in.1.bias"] = (hidden,)
    for name in ("time_embed.", "time_embed_r."):  # TimestepEmbedding(in_channels=256, time_embed_dim=hidden)
        _linear(out, d + name + "linear_1.", 256, hidden)
        _linear(out, d + name + "linear_2.", hidden, hidden)
        _linear(out, d + name + "time_proj.", hidden, hidden * 6)
    enc = _encoder_config(config)
    enc_hidden = int(enc["hidden_size"])
    _linear(out, d + "condition_embedder.", enc_hidden, hidden)
    out[d + "norm_out.weight"] = (hidden,)
    # proj_out = Sequential(Lambda, ConvTranspose1d, Lambda): a transposed conv's weight is [in, out, kernel].
    out[d + "proj_out.1.weight"] = (hidden, acoustic, patch)
    out[d + "proj_out.1.bias"] = (acoustic,)
    out[d + "scale_shift_table"] = (1, 2, hidden)

    # encoder: AceStepConditionEncoder.
    _linear(out, "encoder.text_projector.", int(enc["text_hidden_dim"]), enc_hidden, False)
    _encoder_stack(
        out, "encoder.lyric_encoder.", enc, int(enc["text_hidden_dim"]), int(enc["num_lyric_encoder_hidden_layers"])
    )
    _encoder_stack(
        out,
        "encoder.timbre_encoder.",
        enc,
        int(enc["timbre_hidden_dim"]),
        int(enc["num_timbre_encoder_hidden_layers"]),
    )
    out["encoder.timbre_encoder.special_token"] = (1, 1, enc_hidden)

    # tokenizer: AceStepAudioTokenizer.
    _linear(out, "tokenizer.audio_acoustic_proj.", acoustic, enc_hidden)
    pooler_layers = int(enc["num_attention_pooler_hidden_layers"])
    _encoder_stack(out, "tokenizer.attention_pooler.", enc, enc_hidden, pooler_layers)
    out["tokenizer.attention_pooler.special_token"] = (1, 1, enc_hidden)
    # ResidualFSQ(dim=fsq_dim, levels=fsq_input_levels): projections only when fsq_dim != len(levels).
    fsq_dim, codebook_dim = int(enc["fsq_dim"]), len(enc["fsq_input_levels"])
    if fsq_dim != codebook_dim:
        _linear(out, "tokenizer.quantizer.project_in.", fsq_dim, codebook_dim)
        _linear(out, "tokenizer.quantizer.project_out.", codebook_dim, fsq_dim)

    # detokenizer: AudioTokenDetokenizer.
    _encoder_stack(out, "detokenizer.", enc, enc_hidden, pooler_layers)
    out["detokenizer.special_tokens"] = (1, int(enc["pool_window_size"]), enc_hidden)
    _linear(out, "detokenizer.proj_out.", enc_hidden, acoustic)

    out["null_condition_emb"] = (1, 1, enc_hidden)
    return out


# --------------------------------------------------------------------------------------------------------------
# The Oobleck VAE.


def _wn_conv(out: Shapes, p: str, n_in: int, n_out: int, kernel: int, bias: bool = True) -> None:
    """weight_norm(Conv1d): `weight_g` [out, 1, 1], `weight_v` [out, in, k]."""
    out[p + "weight_g"] = (n_out, 1, 1)
    out[p + "weight_v"] = (n_out, n_in, kernel)
    if bias:
        out[p + "bias"] = (n_out,)


def _wn_conv_t(out: Shapes, p: str, n_in: int, n_out: int, kernel: int) -> None:
    """weight_norm(ConvTranspose1d): the weight is [in, out, k], normalised over dim 0, so `weight_g` [in, 1, 1]."""
    out[p + "weight_g"] = (n_in, 1, 1)
    out[p + "weight_v"] = (n_in, n_out, kernel)
    out[p + "bias"] = (n_out,)


def _snake(out: Shapes, p: str, dim: int) -> None:
    out[p + "alpha"] = (1, dim, 1)
    out[p + "beta"] = (1, dim, 1)


def _res_unit(out: Shapes, p: str, dim: int) -> None:
    """OobleckResidualUnit: snake1, conv1 (k 7, dilated), snake2, conv2 (k 1)."""
    _snake(out, p + "snake1.", dim)
    _wn_conv(out, p + "conv1.", dim, dim, 7)
    _snake(out, p + "snake2.", dim)
    _wn_conv(out, p + "conv2.", dim, dim, 1)


def vae_checkpoint(config: Mapping[str, Any]) -> Shapes:
    """Every tensor of `vae/diffusion_pytorch_model.safetensors` (`AutoencoderOobleck`, encoder and decoder)."""
    out: Shapes = {}
    audio = int(config.get("audio_channels", 2))
    ratios = [int(r) for r in config.get("downsampling_ratios", [2, 4, 4, 8, 8])]
    mults = [1] + [int(m) for m in config.get("channel_multiples", [1, 2, 4, 8, 16])]
    enc = int(config.get("encoder_hidden_size", 128))
    dec = int(config.get("decoder_channels", 128))
    latent = int(config.get("decoder_input_channels", 64))

    # OobleckEncoder
    _wn_conv(out, "encoder.conv1.", audio, enc, 7)
    for i, stride in enumerate(ratios):
        n_in, n_out = enc * mults[i], enc * mults[i + 1]
        p = f"encoder.block.{i}."
        for j in (1, 2, 3):
            _res_unit(out, f"{p}res_unit{j}.", n_in)
        _snake(out, p + "snake1.", n_in)
        _wn_conv(out, p + "conv1.", n_in, n_out, 2 * stride)
    _snake(out, "encoder.snake1.", enc * mults[-1])
    _wn_conv(out, "encoder.conv2.", enc * mults[-1], enc, 3)

    # OobleckDecoder: upsampling_ratios = downsampling_ratios reversed.
    n = len(ratios)
    _wn_conv(out, "decoder.conv1.", latent, dec * mults[-1], 7)
    for i, stride in enumerate(ratios[::-1]):
        n_in, n_out = dec * mults[n - i], dec * mults[n - i - 1]
        p = f"decoder.block.{i}."
        _snake(out, p + "snake1.", n_in)
        _wn_conv_t(out, p + "conv_t1.", n_in, n_out, 2 * stride)
        for j in (1, 2, 3):
            _res_unit(out, f"{p}res_unit{j}.", n_out)
    _snake(out, "decoder.snake1.", dec)
    _wn_conv(out, "decoder.conv2.", dec, audio, 7, bias=False)
    return out


# --------------------------------------------------------------------------------------------------------------
# Qwen3 (the text encoder and the planners).


def qwen3_checkpoint(config: Mapping[str, Any], prefix: str) -> Shapes:
    """Every tensor of a transformers Qwen3 checkpoint: `prefix` is "model." (a `Qwen3ForCausalLM` save) or ""
    (a bare `Qwen3Model` save). `lm_head.weight` is there only when the embeddings are not tied."""
    out: Shapes = {}
    hidden = int(config["hidden_size"])
    out[prefix + "embed_tokens.weight"] = (int(config["vocab_size"]), hidden)
    for i in range(int(config["num_hidden_layers"])):
        _encoder_layer(out, f"{prefix}layers.{i}.", config)
    out[prefix + "norm.weight"] = (hidden,)
    if not config.get("tie_word_embeddings", False):  # transformers' Qwen3Config default is False
        out["lm_head.weight"] = (int(config["vocab_size"]), hidden)
    return out


# --------------------------------------------------------------------------------------------------------------
# The size of a safetensors file.

_DTYPE_BYTES = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E5M2": 1,
    "F8_E4M3": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "F64": 8,
    "I64": 8,
    "U64": 8,
}

_PT_FORMAT: Mapping[str, str] = MappingProxyType({"format": "pt"})


def safetensors_file_size(
    shapes: Mapping[str, tuple[int, ...]], dtype: str = "BF16", metadata: Mapping[str, str] | None = _PT_FORMAT
) -> int:
    """The byte count of a safetensors file holding `shapes`, all of `dtype`, as the `safetensors` package writes
    it (Rust `safetensors::tensor::prepare`): tensors laid out by dtype (here one) then by name, compact JSON,
    `__metadata__` first when given, the header padded with spaces to a multiple of 8, then 8 + header + data."""
    width = _DTYPE_BYTES[dtype]
    header: dict[str, Any] = {}
    if metadata is not None:
        header["__metadata__"] = dict(metadata)
    offset = 0
    for name in sorted(shapes, key=lambda s: s.encode("utf-8")):
        shape = [int(d) for d in shapes[name]]
        count = 1
        for d in shape:
            count *= d
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + count * width]}
        offset += count * width
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return 8 + len(text) + (-len(text)) % 8 + offset
