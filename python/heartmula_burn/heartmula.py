"""The HeartMuLa preset: the 289 tensors and shapes a checkpoint must hold, derived from config.json."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import CheckpointError


@dataclass(frozen=True)
class Flavor:
    num_layers: int
    num_heads: int
    num_kv_heads: int
    embed_dim: int
    intermediate_dim: int
    max_seq_len: int = 2048

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads


# The torchtune llama3_2 flavours HeartMuLa's modeling code knows (heartlib FLAVORS).
FLAVORS = {
    "llama-3B": Flavor(28, 24, 8, 3072, 8192, 8192),
    "llama-300M": Flavor(3, 8, 4, 3072, 8192, 2048),
    "llama-7B": Flavor(32, 32, 8, 4096, 14336, 8192),
    "llama-400M": Flavor(4, 8, 4, 3072, 8192, 2048),
}
FLAVOR_KEYS = ("num_layers", "num_heads", "num_kv_heads", "embed_dim", "intermediate_dim")


@dataclass(frozen=True)
class HeartMuLaConfig:
    backbone: Flavor
    decoder: Flavor
    text_vocab_size: int
    audio_vocab_size: int
    audio_num_codebooks: int
    muq_dim: int
    backbone_flavor: str
    decoder_flavor: str


def _flavor(config: dict, key: str, path: Path) -> tuple[str, Flavor]:
    name = config.get(key)
    if not isinstance(name, str):
        raise CheckpointError.at(path, f"'{key}' missing or not a string")
    if name in FLAVORS:
        return name, FLAVORS[name]
    # Synthetic and experimental checkpoints describe their own flavour under "flavors".
    custom = (config.get("flavors") or {}).get(name)
    if not isinstance(custom, dict) or not all(isinstance(custom.get(k), int) for k in FLAVOR_KEYS):
        known = ", ".join(FLAVORS)
        raise CheckpointError.at(
            path,
            f"unknown {key} '{name}' (known: {known}; others need a 'flavors' entry with {', '.join(FLAVOR_KEYS)})",
        )
    flavor = Flavor(**{k: custom[k] for k in FLAVOR_KEYS}, max_seq_len=custom.get("max_seq_len", 2048))
    if flavor.embed_dim % flavor.num_heads or flavor.num_heads % flavor.num_kv_heads:
        raise CheckpointError.at(path, f"flavour '{name}': heads must divide embed_dim and kv heads divide heads")
    return name, flavor


def parse_config(config: dict, path: Path) -> HeartMuLaConfig:
    backbone_name, backbone = _flavor(config, "backbone_flavor", path)
    decoder_name, decoder = _flavor(config, "decoder_flavor", path)
    sizes = {}
    for key in ("text_vocab_size", "audio_vocab_size", "audio_num_codebooks", "muq_dim"):
        value = config.get(key)
        if not isinstance(value, int) or value <= 0:
            raise CheckpointError.at(path, f"'{key}' missing or not a positive integer")
        sizes[key] = value
    return HeartMuLaConfig(backbone, decoder, backbone_flavor=backbone_name, decoder_flavor=decoder_name, **sizes)


def _layer_shapes(prefix: str, f: Flavor) -> dict[str, tuple[int, ...]]:
    d, kv = f.embed_dim, f.num_kv_heads * f.head_dim
    shapes = {}
    for i in range(f.num_layers):
        p = f"{prefix}.layers.{i}"
        shapes[f"{p}.attn.q_proj.weight"] = (f.num_heads * f.head_dim, d)
        shapes[f"{p}.attn.k_proj.weight"] = (kv, d)
        shapes[f"{p}.attn.v_proj.weight"] = (kv, d)
        shapes[f"{p}.attn.output_proj.weight"] = (d, d)
        shapes[f"{p}.mlp.w1.weight"] = (f.intermediate_dim, d)
        shapes[f"{p}.mlp.w2.weight"] = (d, f.intermediate_dim)
        shapes[f"{p}.mlp.w3.weight"] = (f.intermediate_dim, d)
        shapes[f"{p}.sa_norm.scale"] = (d,)
        shapes[f"{p}.mlp_norm.scale"] = (d,)
    shapes[f"{prefix}.norm.scale"] = (d,)
    return shapes


def expected_tensors(cfg: HeartMuLaConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor of the upstream state dict with its shape (PyTorch layout: Linear is [out, in])."""
    bb, dec = cfg.backbone.embed_dim, cfg.decoder.embed_dim
    v, k = cfg.audio_vocab_size, cfg.audio_num_codebooks
    shapes = {"audio_head": (k - 1, dec, v)}  # a raw parameter, [in, out] per codebook
    shapes.update(_layer_shapes("backbone", cfg.backbone))
    shapes.update(_layer_shapes("decoder", cfg.decoder))
    shapes["text_embeddings.weight"] = (cfg.text_vocab_size, bb)
    shapes["audio_embeddings.weight"] = (v * k, bb)
    shapes["projection.weight"] = (dec, bb)
    shapes["codebook0_head.weight"] = (v, bb)
    shapes["muq_linear.weight"] = (bb, cfg.muq_dim)
    shapes["muq_linear.bias"] = (bb,)
    shapes["unconditional_text_embedding.weight"] = (1, bb)
    return shapes


def _listing(items: list[str], limit: int = 5) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


def check_tensors(found: dict[str, tuple[int, ...]], cfg: HeartMuLaConfig, where: Path) -> None:
    """Raises one error listing every missing, unexpected and mis-shaped tensor."""
    expected = expected_tensors(cfg)
    missing = [n for n in expected if n not in found]
    unexpected = [n for n in found if n not in expected]
    misshaped = [
        f"{n} {list(found[n])} (expected {list(shape)})"
        for n, shape in expected.items()
        if n in found and tuple(found[n]) != shape
    ]
    if missing or unexpected or misshaped:
        problems = []
        if missing:
            problems.append(f"{len(missing)} missing: {_listing(missing)}")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected: {_listing(unexpected)}")
        if misshaped:
            problems.append(f"{len(misshaped)} mis-shaped: {_listing(misshaped)}")
        raise CheckpointError.at(
            where,
            f"does not match its config.json ({cfg.backbone_flavor} / {cfg.decoder_flavor}): "
            + "; ".join(problems)
            + " (--any-model packs it without this check)",
        )
