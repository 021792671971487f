"""HeartCodec's config.json for synthetic checkpoints: the released one, and a tiny one with every
tensor name and small widths."""

from __future__ import annotations

from typing import Any

# HeartCodec-oss's config.json (heartlib's HeartCodecConfig as released).
FULL_CONFIG: dict[str, Any] = {
    "architectures": ["HeartCodec"],
    "model_type": "heartcodec",
    "dim": 512,
    "codebook_size": 8192,
    "decay": 0.9,
    "commitment_weight": 1.0,
    "threshold_ema_dead_code": 2,
    "use_cosine_sim": False,
    "codebook_dim": 32,
    "num_quantizers": 8,
    "attention_head_dim": 64,
    "in_channels": 1024,
    "norm_type": "ada_norm_single",
    "num_attention_heads": 24,
    "num_layers": 24,
    "num_layers_2": 6,
    "out_channels": 256,
    "num_bands": 1,
    "sample_rate": 48000,
    "causal": True,
    "num_samples": 2,
    "downsample_factors": [3, 4, 4, 4, 5],
    "downsample_kernel_sizes": [6, 8, 8, 8, 10],
    "upsample_factors": [5, 4, 4, 4, 3],
    "upsample_kernel_sizes": [10, 8, 8, 8, 6],
    "latent_hidden_dim": 128,
    "default_kernel_size": 7,
    "delay_kernel_size": 5,
    "init_channel": 64,
    "res_kernel_size": 7,
    "torch_dtype": "float32",
}

# Every one of the 818 tensor names (24 + 6 blocks, 8 quantizers, all ScalarModel stages), tiny
# widths: estimator 16 / 32 wide, latent 2 x 4 channels, ScalarModel channels 2 .. 64.
TINY_CONFIG: dict[str, Any] = {
    **FULL_CONFIG,
    "dim": 16,
    "codebook_size": 32,
    "codebook_dim": 4,
    "attention_head_dim": 8,
    "num_attention_heads": 2,
    "in_channels": 32,  # latent 8 + in-context latent 8 + conditioning 16
    "out_channels": 8,
    "latent_hidden_dim": 4,
    "init_channel": 2,
}
