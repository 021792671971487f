"""HeartMuLa's tensor table for the released config, written down by hand from heartlib's
`modeling_heartmula.py` and torchtune's `llama3_2` builder (the figures of the model reference: 289
tensors, 3,938,113,536 parameters, 15,752,454,144 bytes in F32), and compared with what the preset
derives from config.json. Nothing here is computed by the preset's own code."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
from heartmula_burn import CheckpointError
from heartmula_burn._fields import Fields
from heartmula_burn._presets.heartmula import FLAVORS, HeartMuLa
from heartmula_burn._presets.heartmula.synthetic import FULL_CONFIG

# HeartMuLa-oss-3B/config.json as released (the keys the model is built from).
RELEASED_CONFIG = {
    "model_type": "heartmula",
    "backbone_flavor": "llama-3B",
    "decoder_flavor": "llama-300M",
    "text_vocab_size": 128256,
    "audio_vocab_size": 8197,
    "audio_num_codebooks": 8,
    "muq_dim": 512,
    "torch_dtype": "float32",
}

# heartlib's FLAVORS: llama3_2_3B, llama3_2_300M, llama3_2_7B, llama3_2_400M, as its builders call
# torchtune (num_layers, num_heads, num_kv_heads, embed_dim, intermediate_dim, max_seq_len).
UPSTREAM_FLAVORS = {
    "llama-3B": (28, 24, 8, 3072, 8192, 8192),
    "llama-300M": (3, 8, 4, 3072, 8192, 2048),
    "llama-7B": (32, 32, 8, 4096, 14336, 8192),
    "llama-400M": (4, 8, 4, 3072, 8192, 2048),
}

# One layer of each stack, written out: Linear weights are [out, in]; RMSNorm's parameter is `scale`.
# llama-3B: 24 heads of 128, 8 KV heads of 128. llama-300M: 8 heads of 384, 4 KV heads of 384.
LLAMA_3B_LAYER = {
    "attn.q_proj.weight": (3072, 3072),
    "attn.k_proj.weight": (1024, 3072),
    "attn.v_proj.weight": (1024, 3072),
    "attn.output_proj.weight": (3072, 3072),
    "mlp.w1.weight": (8192, 3072),
    "mlp.w2.weight": (3072, 8192),
    "mlp.w3.weight": (8192, 3072),
    "sa_norm.scale": (3072,),
    "mlp_norm.scale": (3072,),
}
LLAMA_300M_LAYER = {
    "attn.q_proj.weight": (3072, 3072),
    "attn.k_proj.weight": (1536, 3072),
    "attn.v_proj.weight": (1536, 3072),
    "attn.output_proj.weight": (3072, 3072),
    "mlp.w1.weight": (8192, 3072),
    "mlp.w2.weight": (3072, 8192),
    "mlp.w3.weight": (8192, 3072),
    "sa_norm.scale": (3072,),
    "mlp_norm.scale": (3072,),
}
# Parameters of one layer: q + o (3072*3072 each), k + v, w1 + w2 + w3 (8192*3072 each), two norms.
LLAMA_3B_LAYER_PARAMS = 100_669_440  # 2*9,437,184 + 2*3,145,728 + 3*25,165,824 + 2*3,072
LLAMA_300M_LAYER_PARAMS = 103_815_168  # 2*9,437,184 + 2*4,718,592 + 3*25,165,824 + 2*3,072
LAYERS = {
    "llama-3B": (28, LLAMA_3B_LAYER, LLAMA_3B_LAYER_PARAMS),
    "llama-300M": (3, LLAMA_300M_LAYER, LLAMA_300M_LAYER_PARAMS),
}

# The model's own tensors (heartlib HeartMuLa.__init__), for the released vocabularies.
TOP_LEVEL = {
    "text_embeddings.weight": (128256, 3072),  # nn.Embedding(text_vocab_size, backbone_dim)
    "audio_embeddings.weight": (65576, 3072),  # nn.Embedding(8197 * 8, backbone_dim)
    "unconditional_text_embedding.weight": (1, 3072),  # nn.Embedding(1, backbone_dim)
    "projection.weight": (3072, 3072),  # nn.Linear(backbone_dim, decoder_dim, bias=False)
    "codebook0_head.weight": (8197, 3072),  # nn.Linear(backbone_dim, audio_vocab_size, bias=False)
    "audio_head": (7, 3072, 8197),  # nn.Parameter [codebooks - 1, decoder_dim, audio_vocab_size]
    "muq_linear.weight": (3072, 512),  # nn.Linear(muq_dim, backbone_dim)
    "muq_linear.bias": (3072,),
}


def hand_table(backbone: str = "llama-3B", decoder: str = "llama-300M") -> dict[str, tuple[int, ...]]:
    table: dict[str, tuple[int, ...]] = dict(TOP_LEVEL)
    for stack, flavor in (("backbone", backbone), ("decoder", decoder)):
        count, layer, _ = LAYERS[flavor]
        for i in range(count):
            table.update({f"{stack}.layers.{i}.{suffix}": shape for suffix, shape in layer.items()})
        table[f"{stack}.norm.scale"] = (3072,)
    return table


RELEASED_TABLE = hand_table()

# Parameter count per group, from the reference (each figure a product of the dims above).
GROUPS = {
    "backbone layers": 28 * LLAMA_3B_LAYER_PARAMS,  # 2,818,744,320
    "decoder layers": 3 * LLAMA_300M_LAYER_PARAMS,  # 311,445,504
    "final norms": 2 * 3072,
    "embeddings": 394_002_432 + 201_449_472 + 3_072,  # text, audio, unconditional
    "heads": 25_181_184 + 176_268_288,  # codebook0_head, audio_head
    "projection": 9_437_184,
    "muq conditioning": 1_572_864 + 3_072,  # muq_linear weight and bias
}
RELEASED_PARAMS = 3_938_113_536
RELEASED_F32_BYTES = 15_752_454_144


def group_of(name: str) -> str:
    if name.startswith("backbone.layers."):
        return "backbone layers"
    if name.startswith("decoder.layers."):
        return "decoder layers"
    if name.endswith(".norm.scale"):
        return "final norms"
    if "embedding" in name:
        return "embeddings"
    if name in ("codebook0_head.weight", "audio_head"):
        return "heads"
    if name == "projection.weight":
        return "projection"
    if name.startswith("muq_linear."):
        return "muq conditioning"
    raise AssertionError(f"no group for {name}")


def preset_table(config: dict) -> dict[str, tuple[int, ...]]:
    return HeartMuLa().expected_tensors(Fields(config, Path("config.json")))


def differences(got: dict, want: dict) -> list[str]:
    return [f"{n}: {got.get(n)} != {want.get(n)}" for n in sorted(set(got) | set(want)) if got.get(n) != want.get(n)]


# ---- the hand table is self-consistent and matches the reference's totals ----------------------------


def test_the_hand_written_figures_add_up_to_the_references():
    assert len(RELEASED_TABLE) == 289 == 28 * 9 + 1 + 3 * 9 + 1 + 8
    for _count, layer, params in LAYERS.values():
        assert sum(math.prod(s) for s in layer.values()) == params
    assert sum(GROUPS.values()) == RELEASED_PARAMS
    assert sum(math.prod(s) for s in RELEASED_TABLE.values()) == RELEASED_PARAMS
    assert 4 * RELEASED_PARAMS == RELEASED_F32_BYTES
    # Rows of the audio embedding: codebook k, token t -> t + k * 8197.
    assert TOP_LEVEL["audio_embeddings.weight"][0] == 8 * 8197


def test_the_synthetic_full_config_is_the_released_one():
    assert {k: FULL_CONFIG[k] for k in RELEASED_CONFIG} == RELEASED_CONFIG


# ---- the preset against the hand table ------------------------------------------------------------


def test_the_released_config_implies_the_hand_written_289_tensors():
    shapes = preset_table(RELEASED_CONFIG)
    assert not differences(shapes, RELEASED_TABLE), differences(shapes, RELEASED_TABLE)[:10]
    assert len(shapes) == 289


def test_parameters_and_f32_bytes_per_group_are_the_references():
    shapes = preset_table(RELEASED_CONFIG)
    per_group = dict.fromkeys(GROUPS, 0)
    for name, shape in shapes.items():
        per_group[group_of(name)] += math.prod(shape)
    assert per_group == GROUPS
    assert sum(per_group.values()) == RELEASED_PARAMS
    assert 4 * sum(math.prod(s) for s in shapes.values()) == RELEASED_F32_BYTES
    # The largest tensors in F32, as the reference lists them (a streaming converter's peak).
    largest = sorted(shapes, key=lambda n: math.prod(shapes[n]), reverse=True)[:3]
    assert [(n, 4 * math.prod(shapes[n])) for n in largest] == [
        ("text_embeddings.weight", 1_576_009_728),
        ("audio_embeddings.weight", 805_797_888),
        ("audio_head", 705_073_152),
    ]


def test_the_built_in_flavours_are_heartlibs():
    for name, (layers, heads, kv_heads, dim, ffn, max_seq) in UPSTREAM_FLAVORS.items():
        f = FLAVORS[name]
        got = (f.num_layers, f.num_heads, f.num_kv_heads, f.embed_dim, f.intermediate_dim, f.max_seq_len)
        assert got == (layers, heads, kv_heads, dim, ffn, max_seq), name
    # Head dims the reference states: 128 in the backbone, 384 in the decoder.
    assert (FLAVORS["llama-3B"].head_dim, FLAVORS["llama-300M"].head_dim) == (128, 384)


@pytest.mark.parametrize(
    "backbone, decoder, params",
    [
        # Each stack in the other role: the table follows the flavour, not the position.
        ("llama-300M", "llama-300M", 6 * LLAMA_300M_LAYER_PARAMS),
        ("llama-3B", "llama-3B", 56 * LLAMA_3B_LAYER_PARAMS),
        ("llama-300M", "llama-3B", 3 * LLAMA_300M_LAYER_PARAMS + 28 * LLAMA_3B_LAYER_PARAMS),
    ],
)
def test_the_built_in_flavours_in_either_stack(backbone, decoder, params):
    shapes = preset_table({**RELEASED_CONFIG, "backbone_flavor": backbone, "decoder_flavor": decoder})
    want = hand_table(backbone, decoder)
    assert not differences(shapes, want), differences(shapes, want)[:10]
    fixed = sum(math.prod(s) for s in TOP_LEVEL.values()) + 2 * 3072
    assert 4 * sum(math.prod(s) for s in shapes.values()) == 4 * (params + fixed)


def test_smaller_vocabularies_change_only_the_tensors_they_size():
    config = {**RELEASED_CONFIG, "text_vocab_size": 1000, "audio_vocab_size": 100, "audio_num_codebooks": 4}
    want = dict(RELEASED_TABLE)
    want["text_embeddings.weight"] = (1000, 3072)
    want["audio_embeddings.weight"] = (400, 3072)
    want["codebook0_head.weight"] = (100, 3072)
    want["audio_head"] = (3, 3072, 100)
    assert not differences(preset_table(config), want)


def test_inspect_describes_the_released_model():
    shapes = preset_table(RELEASED_CONFIG)
    described = dict(HeartMuLa().describe(Fields(RELEASED_CONFIG, Path("config.json")), shapes))
    assert described == {
        "backbone": "28 layers, hidden size 3072, intermediate size 8192",
        "decoder": "3 layers, hidden size 3072, intermediate size 8192",
        "text vocabulary": "128256",
        "audio": "8 codebooks of 8197 codes",
        "MuQ conditioning dim": "512",
    }


# ---- a third source: torchtune's own modules, built without memory ---------------------------------


@pytest.mark.parametrize("flavor", ["llama-3B", "llama-300M"])
def test_the_layer_tables_are_torchtunes(flavor):
    """torchtune's llama3_2 builder with heartlib's arguments, on the meta device (no weights): its
    state dict, less the token embedding and output heartlib replaces, is the hand-written stack."""
    from conftest import crosscheck

    torch = crosscheck("torch")
    llama3_2 = crosscheck("torchtune.models.llama3_2")
    layers, heads, kv_heads, dim, ffn, max_seq = UPSTREAM_FLAVORS[flavor]
    with torch.device("meta"):
        model = llama3_2.llama3_2(
            vocab_size=128_256,
            num_layers=layers,
            num_heads=heads,
            num_kv_heads=kv_heads,
            embed_dim=dim,
            max_seq_len=max_seq,
            intermediate_dim=ffn,
            attn_dropout=0.0,
            norm_eps=1e-5,
            rope_base=500_000,
            scale_factor=32,
        )
    model.tok_embeddings = torch.nn.Identity()
    model.output = torch.nn.Identity()
    theirs = {f"backbone.{k}": tuple(v.shape) for k, v in model.state_dict().items()}
    want = {n: s for n, s in hand_table(flavor, flavor).items() if n.startswith("backbone.")}
    assert not differences(theirs, want), differences(theirs, want)[:10]


# ---- the config's edges, with counts worked out by hand -------------------------------------------


def custom(backbone: dict, decoder: dict | None = None, **top: object) -> dict:
    """The released config with custom flavours `b` (and `d`, default the released decoder)."""
    flavors = {"b": {"num_heads": 2, "num_kv_heads": 1, "embed_dim": 8, "intermediate_dim": 16, **backbone}}
    config = {**RELEASED_CONFIG, "backbone_flavor": "b", "flavors": flavors, **top}
    if decoder is not None:
        flavors["d"] = {"num_heads": 2, "num_kv_heads": 1, "embed_dim": 8, "intermediate_dim": 16, **decoder}
        config["decoder_flavor"] = "d"
    return config


def refusal(config: dict) -> str:
    with pytest.raises(CheckpointError) as err:
        preset_table(config)
    return str(err.value)


def test_the_tensor_count_limit_is_burns_exactly():
    # 10 tensors besides the layers, 9 per layer: 10 + 9 * 11110 = 100,000, Burn's limit, is fine.
    # The released decoder (llama-300M) brings 3 layers, so the backbone may have 11107.
    assert len(preset_table(custom({"num_layers": 11107}))) == 100_000
    message = refusal(custom({"num_layers": 11108}))
    assert "'flavors.b.num_layers' gives HeartMuLa 100,009 tensors, more than the 100,000" in message
    # Two custom flavours: counted together, and the key named is the one bringing the most.
    assert len(preset_table(custom({"num_layers": 11000}, {"num_layers": 110}))) == 100_000
    assert "'flavors.b.num_layers' gives HeartMuLa 100,009" in refusal(
        custom({"num_layers": 11001}, {"num_layers": 110})
    )
    assert "'flavors.d.num_layers'" in refusal(custom({"num_layers": 10}, {"num_layers": 11101}))


def test_a_flavour_name_used_twice_counts_its_layers_twice():
    config = {**custom({"num_layers": 5556}), "decoder_flavor": "b"}  # 10 + 9 * 2 * 5556 = 100,018
    assert "'flavors.b.num_layers' gives HeartMuLa 100,018 tensors" in refusal(config)
    config = {**custom({"num_layers": 5555}), "decoder_flavor": "b"}  # 10 + 9 * 11110 = 100,000
    assert len(preset_table(config)) == 100_000


def test_sizes_at_their_minimums():
    assert "odd head dim (3)" in refusal(custom({"num_layers": 1, "embed_dim": 6}))
    for key in ("num_layers", "num_heads", "num_kv_heads", "embed_dim", "intermediate_dim"):
        assert f"'flavors.b.{key}'" in refusal(custom({"num_layers": 1, key: 0}))
    assert len(preset_table(custom({"num_layers": 1, "embed_dim": 4}))) == 10 + 9 * (1 + 3)  # head dim 2
    for key in ("text_vocab_size", "audio_vocab_size", "muq_dim"):
        assert preset_table({**RELEASED_CONFIG, key: 1})
        assert f"'{key}'" in refusal({**RELEASED_CONFIG, key: 0})
    # The depth decoder predicts codebooks 1..k-1 from `audio_head`: k = 2 is the least it can be.
    assert preset_table({**RELEASED_CONFIG, "audio_num_codebooks": 2})["audio_head"] == (1, 3072, 8197)
    assert "'audio_num_codebooks'" in refusal({**RELEASED_CONFIG, "audio_num_codebooks": 1})


@pytest.mark.parametrize(
    ("model_type", "recognized"),
    [("heartmula", True), ("heartcodec", False), ("llama", False), ("HeartMuLa", False), (None, True)],
)
def test_the_preset_recognizes_only_its_own_model_type(model_type, recognized):
    config = {k: v for k, v in RELEASED_CONFIG.items() if k != "model_type"}
    if model_type is not None:
        config["model_type"] = model_type
    assert HeartMuLa().recognizes(Fields(config, Path("config.json"))) is recognized
    # Without a model_type, a config is HeartMuLa's only if it names a backbone flavour.
    assert not HeartMuLa().recognizes(Fields({"dim": 8}, Path("config.json")))


def test_inspect_counts_layers_from_the_highest_index():
    shapes = preset_table(RELEASED_CONFIG)
    only_first = {n: s for n, s in shapes.items() if not re.match(r"decoder\.layers\.[12]\.", n)}
    described = dict(HeartMuLa().describe(Fields(RELEASED_CONFIG, Path("config.json")), only_first))
    assert described["decoder"].startswith("1 layers")
