"""HeartMuLa's config.json for synthetic checkpoints (the released one, a tiny one with every tensor
name, and either scaled by backbone layer count for benchmarks) and the runtime files beside it."""

from __future__ import annotations

from typing import Any

from . import FLAVOR_KEYS, FLAVORS

GEN_CONFIG = {"text_bos_id": 128000, "text_eos_id": 128001, "audio_eos_id": 8193, "empty_id": 0}
# A tokenizers file with an empty vocabulary: what a conversion copies and checks, no real tokenizer.
TOKENIZER = {"version": "1.0", "added_tokens": [], "model": {"type": "BPE", "vocab": {}, "merges": []}}

FULL_CONFIG: dict[str, Any] = {
    "architectures": ["HeartMuLa"],
    "model_type": "heartmula",
    "backbone_flavor": "llama-3B",
    "decoder_flavor": "llama-300M",
    "text_vocab_size": 128256,
    "audio_vocab_size": 8197,
    "audio_num_codebooks": 8,
    "muq_dim": 512,
    "torch_dtype": "float32",
}

# Same tensor names and layer counts as upstream; small, distinct dims so that a swapped or
# transposed tensor changes shapes wherever it can.
TINY_CONFIG: dict[str, Any] = {
    **FULL_CONFIG,
    "backbone_flavor": "tiny-backbone",
    "decoder_flavor": "tiny-decoder",
    "text_vocab_size": 300,
    "audio_vocab_size": 37,
    "muq_dim": 8,
    "flavors": {
        "tiny-backbone": {"num_layers": 28, "num_heads": 4, "num_kv_heads": 2, "embed_dim": 32, "intermediate_dim": 64},
        "tiny-decoder": {"num_layers": 3, "num_heads": 2, "num_kv_heads": 1, "embed_dim": 16, "intermediate_dim": 48},
    },
}


def heartmula_config(full: bool, backbone_layers: int | None = None) -> dict[str, Any]:
    """The LM's config.json; `backbone_layers` scales it for benchmarks (a custom flavour with the
    same dims and that many backbone layers, described under "flavors")."""
    config = dict(FULL_CONFIG if full else TINY_CONFIG)
    if backbone_layers is not None:
        flavors: dict[str, Any] = dict(config.get("flavors", {}))
        base_name = config["backbone_flavor"]
        if base_name in FLAVORS:
            base = {k: getattr(FLAVORS[base_name], k) for k in (*FLAVOR_KEYS, "max_seq_len")}
        else:
            base = dict(flavors[base_name])
        name = f"{base_name}-{backbone_layers}L"
        flavors[name] = {**base, "num_layers": backbone_layers}
        config["flavors"] = flavors
        config["backbone_flavor"] = name
    return config
