"""The HeartMuLa preset: the 289 tensors and shapes a checkpoint must hold, derived from config.json."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..._errors import CheckpointError
from ..._fields import Fields, read_json
from .. import MAX_SIZE, MAX_TENSOR_COUNT, Preset, Release, Shapes, check_tensor_count
from . import card

if TYPE_CHECKING:
    from ..runner import Runner


@dataclass(frozen=True)
class Flavor:
    num_layers: int
    num_heads: int
    num_kv_heads: int
    embed_dim: int
    intermediate_dim: int
    max_seq_len: int = 2048  # shapes no tensor: kept as upstream states it, never read from a config

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
# Tensors of one transformer layer (`layer_shapes`), and of the model besides its layers (each stack's
# final norm, `audio_head`, the embeddings and heads of `expected_tensors`).
LAYER_TENSORS = 9
FIXED_TENSORS = 10
FLAVOR_MAXIMA = {"num_layers": MAX_TENSOR_COUNT}  # a count; all other keys are sizes
# The keys of gen_config.json every runtime reads (heartlib's HeartMuLaGenConfig, audio.cpp, maolan).
GEN_CONFIG_KEYS = ("text_bos_id", "text_eos_id", "audio_eos_id", "empty_id")
# Tensors only a HeartMuLa checkpoint has (to recognise a pack that does not say what it holds).
SIGNATURE = frozenset({"codebook0_head.weight", "audio_head", "backbone.norm.scale"})


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


def _flavor(config: Fields, key: str) -> tuple[str, Flavor]:
    name = config.string(key)
    if name in FLAVORS:
        return name, FLAVORS[name]
    # Synthetic and experimental checkpoints describe their own flavour under "flavors".
    flavors = config.obj("flavors", default={})
    if name not in flavors:
        raise config.error(
            key,
            f"is {name!r}, which is not a known flavour ({', '.join(FLAVORS)}) and has no 'flavors' entry "
            f"giving {', '.join(FLAVOR_KEYS)}",
        )
    entry = flavors.obj(name)
    sizes = {k: entry.integer(k, minimum=1, maximum=FLAVOR_MAXIMA.get(k, MAX_SIZE)) for k in FLAVOR_KEYS}
    flavor = Flavor(**sizes)  # max_seq_len shapes no tensor: a custom flavour's is not read
    if flavor.embed_dim % flavor.num_heads:
        raise entry.error("num_heads", f"({flavor.num_heads}) must divide embed_dim ({flavor.embed_dim})")
    if flavor.num_heads % flavor.num_kv_heads:
        raise entry.error("num_kv_heads", f"({flavor.num_kv_heads}) must divide num_heads ({flavor.num_heads})")
    if flavor.head_dim % 2:
        raise entry.error("num_heads", f"gives an odd head dim ({flavor.head_dim}); RoPE rotates pairs")
    return name, flavor


def parse_config(config: Fields) -> HeartMuLaConfig:
    backbone_name, backbone = _flavor(config, "backbone_flavor")
    decoder_name, decoder = _flavor(config, "decoder_flavor")
    sizes = {
        k: config.integer(k, minimum=1, maximum=MAX_SIZE) for k in ("text_vocab_size", "audio_vocab_size", "muq_dim")
    }
    codebooks = config.integer("audio_num_codebooks", minimum=2, maximum=MAX_SIZE)
    # Tensors by the key their layer count comes from: a custom flavour's entry, else the flavour.
    layers: dict[str, int] = {}
    for key, name, flavor in (("backbone_flavor", backbone_name, backbone), ("decoder_flavor", decoder_name, decoder)):
        source = key if name in FLAVORS else f"flavors.{name}.num_layers"
        layers[source] = layers.get(source, 0) + LAYER_TENSORS * flavor.num_layers
    check_tensor_count(config, "HeartMuLa", FIXED_TENSORS, layers)
    return HeartMuLaConfig(
        backbone,
        decoder,
        audio_num_codebooks=codebooks,
        backbone_flavor=backbone_name,
        decoder_flavor=decoder_name,
        **sizes,
    )


def layer_shapes(prefix: str, f: Flavor) -> Shapes:
    d, kv = f.embed_dim, f.num_kv_heads * f.head_dim
    shapes: Shapes = {}
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


def expected_tensors(cfg: HeartMuLaConfig) -> Shapes:
    """Every tensor of the upstream state dict with its shape (PyTorch layout: Linear is [out, in])."""
    bb, dec = cfg.backbone.embed_dim, cfg.decoder.embed_dim
    v, k = cfg.audio_vocab_size, cfg.audio_num_codebooks
    shapes: Shapes = {"audio_head": (k - 1, dec, v)}  # a raw parameter, [in, out] per codebook
    shapes.update(layer_shapes("backbone", cfg.backbone))
    shapes.update(layer_shapes("decoder", cfg.decoder))
    shapes["text_embeddings.weight"] = (cfg.text_vocab_size, bb)
    shapes["audio_embeddings.weight"] = (v * k, bb)
    shapes["projection.weight"] = (dec, bb)
    shapes["codebook0_head.weight"] = (v, bb)
    shapes["muq_linear.weight"] = (bb, cfg.muq_dim)
    shapes["muq_linear.bias"] = (bb,)
    shapes["unconditional_text_embedding.weight"] = (1, bb)
    return shapes


class HeartMuLa(Preset):
    name = "heartmula"
    title = "HeartMuLa"
    pack_name = "heartmula.bpk"
    folder_names = ("HeartMuLa-oss-3B",)
    runtime_files = ("tokenizer.json", "gen_config.json")
    runtime_repo = "HeartMuLa/HeartMuLaGen"
    runtime_role = "gen"
    card_loading = card.LOADING
    card_runtime = (
        "`tokenizer.json` and `gen_config.json` are the runtime files of the upstream release; a Burn "
        "HeartMuLa runtime loads this folder as it is (all four files)."
    )
    card_tag = "heartmula"
    licence = ("apache-2.0", "Apache-2.0")
    signature = SIGNATURE
    dtypes = ("f32", "bf16", "f16", "source", "q8", "q8-native")
    # The Linear weights, where the bytes are: the runtime (maolan-generate 0.0.19, Burn 0.22.1)
    # runs them quantized. Embeddings, audio_head, norms and muq_linear it needs as floats.
    quantizable = re.compile(
        r"(backbone|decoder)\.layers\.\d+\.(attn\.(q|k|v|output)_proj|mlp\.w[123])\.weight"
        r"|projection\.weight|codebook0_head\.weight"
    )
    sanity_summary = (
        "every weight finite, codebook-0 logits of the prompt, teacher-forced logits of codebooks 1-7, a second "
        "frame through the KV cache (and against a full recompute), greedy decoding of --frames frames"
    )
    dtype_note = (
        "HeartMuLa: q8 quantizes the Linear weights of the backbone and the decoder, the projection and the "
        "codebook-0 head; the pack is 42% of the F32 pack's size"
    )
    hub_role = "lm"
    # Every 3B release has the same tensors and config (heartlib loads them all into HeartMuLa-oss-3B/).
    releases = (
        Release("HeartMuLa/HeartMuLa-oss-3B"),
        Release("HeartMuLa/HeartMuLa-RL-oss-3B-20260123"),
        Release("HeartMuLa/HeartMuLa-oss-3B-happy-new-year", "recommended upstream"),
    )

    def recognizes(self, config: Fields) -> bool:
        model_type = config.doc.get("model_type")
        return model_type == "heartmula" or (model_type is None and "backbone_flavor" in config)

    def expected_tensors(self, config: Fields) -> Shapes:
        return expected_tensors(parse_config(config))

    def check_runtime_file(self, name: str, source: Path) -> None:
        """tokenizer.json must be a JSON object with a `model` (a Hugging Face tokenizers file),
        gen_config.json a JSON object with the ids every runtime reads. Read with a size cap, and
        never a FIFO or a device (a planted link to /dev/zero)."""
        if name == "tokenizer.json":
            if "model" not in read_json(source, name):
                raise CheckpointError.at(source, "tokenizer.json has no 'model': not a Hugging Face tokenizers file")
        elif name == "gen_config.json":
            doc = read_json(source, name)
            for key in GEN_CONFIG_KEYS:
                doc.integer(key, minimum=0)

    def synthetic_config(self, full: bool, layers: int | None = None) -> dict[str, Any]:
        from .synthetic import heartmula_config

        return heartmula_config(full, layers)

    def synthetic_value_scale(self, name: str, shape: tuple[int, ...]) -> tuple[float, float] | None:
        if name.endswith(".scale"):
            return 1.0, 0.1  # torchtune's RMSNorm weights
        if name == "audio_head":  # [codebooks, in, out]: h @ audio_head[i]
            return 0.0, 1 / math.sqrt(shape[1])
        return None

    def synthetic_runtime_files(self) -> dict[str, str]:
        from .synthetic import GEN_CONFIG, TOKENIZER

        return {"gen_config.json": json.dumps(GEN_CONFIG, indent=4), "tokenizer.json": json.dumps(TOKENIZER)}

    def runner(self, config: Fields, frames: int) -> Runner:
        from .sanity import HeartMuLaRunner

        return HeartMuLaRunner(config, frames)

    def config_from_pack(
        self, metadata: Mapping[str, str], shapes: Mapping[str, tuple[int, ...]], where: Path
    ) -> Fields:
        """Sized from the flavour names the pack's metadata gives and its shapes."""
        if metadata.get("backbone_flavor") not in FLAVORS or metadata.get("decoder_flavor") not in FLAVORS:
            return super().config_from_pack(metadata, shapes, where)
        try:
            doc = {
                "backbone_flavor": metadata["backbone_flavor"],
                "decoder_flavor": metadata["decoder_flavor"],
                "text_vocab_size": shapes["text_embeddings.weight"][0],
                "audio_vocab_size": shapes["codebook0_head.weight"][0],
                "audio_num_codebooks": shapes["audio_head"][0] + 1,
                "muq_dim": shapes["muq_linear.weight"][1],
            }
        except (KeyError, IndexError) as e:
            raise CheckpointError.at(where, f"tensor {e} missing or mis-shaped; cannot size the model") from None
        return Fields(doc, where, "metadata")

    def metadata(self, config: Fields) -> dict[str, str]:
        cfg = parse_config(config)
        return {
            **super().metadata(config),
            "backbone_flavor": cfg.backbone_flavor,
            "decoder_flavor": cfg.decoder_flavor,
        }

    def describe(self, config: Fields, shapes: Mapping[str, tuple[int, ...]]) -> list[tuple[str, str]]:
        def layers(prefix: str) -> int:
            found = {int(m.group(1)) for n in shapes if (m := re.match(rf"{prefix}\.layers\.(\d+)\.", n))}
            return max(found) + 1 if found else 0

        def stack(prefix: str) -> str:
            return (
                f"{layers(prefix)} layers, hidden size {shapes[f'{prefix}.norm.scale'][0]}, "
                f"intermediate size {shapes[f'{prefix}.layers.0.mlp.w1.weight'][0]}"
            )

        return [
            ("backbone", stack("backbone")),
            ("decoder", stack("decoder")),
            ("text vocabulary", str(shapes["text_embeddings.weight"][0])),
            ("audio", f"{shapes['audio_head'][0] + 1} codebooks of {shapes['codebook0_head.weight'][0]} codes"),
            ("MuQ conditioning dim", str(shapes["muq_linear.weight"][1])),
        ]
