"""ACE-Step 1.5's upstream name and shape tables (heartmula_burn._presets.acestep.upstream), proven against the real
files: each table, from the real config.json, gives the exact byte count the Hugging Face Hub lists for its file,
and the byte count itself is checked against files the `safetensors` package really writes."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from heartmula_burn._presets.acestep.upstream import (
    PLANNER_CONFIGS,
    QWEN3_EMBEDDING_CONFIG,
    TURBO_CONFIG,
    VAE_CONFIG,
    Shapes,
    dit_checkpoint,
    qwen3_checkpoint,
    safetensors_file_size,
    vae_checkpoint,
)

PT = {"format": "pt"}

# Byte counts from the Hub's file listings (shared/reference/acestep-model.md).
TURBO_DIT_BYTES = 4_787_825_604  # acestep-v15-turbo/model.safetensors (acestep-v15-sft's is the same)
VAE_BYTES = 337_431_388  # vae/diffusion_pytorch_model.safetensors
EMBEDDING_BYTES = 1_191_586_416  # Qwen3-Embedding-0.6B/model.safetensors
PLANNER_1_7B_BYTES = 3_708_521_528  # acestep-5Hz-lm-1.7B/model.safetensors
PLANNER_0_6B_BYTES = 1_325_804_024  # ACE-Step/acestep-5Hz-lm-0.6B model.safetensors

# The runtime crate keeps verbatim copies of three upstream config.json files: its source in
# cargo's registry (wherever a build of rust/runtime-check, or `cargo info`, fetched it).
_REGISTRY = Path(os.environ.get("CARGO_HOME", Path.home() / ".cargo")) / "registry" / "src"
TESTDATA = next(
    iter(sorted(_REGISTRY.glob("*/maolan-generate-0.0.19/src/acestep/testdata"))), _REGISTRY / "maolan-generate"
)


def _assert_ints(shapes: Shapes) -> None:
    for name, shape in shapes.items():
        assert isinstance(shape, tuple), name
        assert all(type(d) is int and d > 0 for d in shape), (name, shape)


# ---- the real files' sizes -------------------------------------------------------------------------------------


def test_turbo_dit_is_the_real_file() -> None:
    shapes = dit_checkpoint(TURBO_CONFIG)
    _assert_ints(shapes)
    assert safetensors_file_size(shapes, "BF16", PT) == TURBO_DIT_BYTES
    assert len(shapes) == 677


def test_vae_is_the_real_file() -> None:
    shapes = vae_checkpoint(VAE_CONFIG)
    _assert_ints(shapes)
    assert safetensors_file_size(shapes, "BF16", PT) == VAE_BYTES
    assert len(shapes) == 365


def test_text_encoder_is_the_real_file_without_model_prefix() -> None:
    shapes = qwen3_checkpoint(QWEN3_EMBEDDING_CONFIG, "")
    _assert_ints(shapes)
    assert safetensors_file_size(shapes, "BF16", PT) == EMBEDDING_BYTES
    assert len(shapes) == 310  # the reference's text encoder count: the whole file, nothing dropped
    # The prefix is not a free choice: with it (or without the metadata) the header, so the file, is another size.
    assert safetensors_file_size(qwen3_checkpoint(QWEN3_EMBEDDING_CONFIG, "model."), "BF16", PT) != EMBEDDING_BYTES
    assert safetensors_file_size(shapes, "BF16", None) != EMBEDDING_BYTES


def test_planner_1_7b_is_the_real_file_without_model_prefix() -> None:
    shapes = qwen3_checkpoint(PLANNER_CONFIGS["1.7B"], "")
    assert "lm_head.weight" not in shapes
    assert safetensors_file_size(shapes, "BF16", PT) == PLANNER_1_7B_BYTES
    assert safetensors_file_size(qwen3_checkpoint(PLANNER_CONFIGS["1.7B"], "model."), "BF16", PT) != PLANNER_1_7B_BYTES


def test_planner_0_6b_is_the_real_file_with_model_prefix_and_no_metadata() -> None:
    shapes = qwen3_checkpoint(PLANNER_CONFIGS["0.6B"], "model.")
    assert "lm_head.weight" not in shapes
    assert all(name.startswith("model.") for name in shapes)
    assert safetensors_file_size(shapes, "BF16", None) == PLANNER_0_6B_BYTES
    assert safetensors_file_size(shapes, "BF16", PT) != PLANNER_0_6B_BYTES
    assert safetensors_file_size(qwen3_checkpoint(PLANNER_CONFIGS["0.6B"], ""), "BF16", None) != PLANNER_0_6B_BYTES


def test_planner_4b_table_is_qwen3_4b_with_the_planner_vocabulary() -> None:
    shapes = qwen3_checkpoint(PLANNER_CONFIGS["4B"], "model.")
    assert len(shapes) == 36 * 11 + 2
    assert shapes["model.embed_tokens.weight"] == (217204, 2560)
    params = sum(int(np.prod(s)) for s in shapes.values())
    assert 3.9e9 < params < 4.2e9  # "about 8 GB" of BF16 in two shards


# ---- the subsets the reference counts ---------------------------------------------------------------------------

# The condition pack keeps these prefixes of the DiT file (after the reference's renames) ...
CONDITION_KEPT = (
    "encoder.text_projector.",
    "encoder.lyric_encoder.",
    "encoder.timbre_encoder.",
    "detokenizer.",
    "tokenizer.quantizer.project_in.",
    "tokenizer.quantizer.project_out.",
)
# ... less these.
CONDITION_DROPPED = ("encoder.timbre_encoder.special_token",)


def test_dit_subsets_match_the_reference_counts() -> None:
    shapes = dit_checkpoint(TURBO_CONFIG)
    decoder = [n for n in shapes if n.startswith("decoder.")]
    condition = [n for n in shapes if n.startswith(CONDITION_KEPT) and n not in CONDITION_DROPPED]
    assert len(decoder) == 476
    assert len(condition) == 171
    # What neither pack takes: the CFG null embedding, the timbre CLS token, the audio tokenizer's encoder half.
    rest = sorted(set(shapes) - set(decoder) - set(condition))
    assert len(rest) == 30
    assert {n for n in rest if not n.startswith("tokenizer.attention_pooler.")} == {
        "null_condition_emb",
        "encoder.timbre_encoder.special_token",
        "tokenizer.audio_acoustic_proj.weight",
        "tokenizer.audio_acoustic_proj.bias",
    }
    # The renames the reference names exist on the upstream side.
    for name in ("decoder.proj_in.1.weight", "decoder.proj_out.1.weight", "decoder.proj_in.1.bias"):
        assert name in shapes
    # At 4 bytes a parameter the two packs are the reference's 6.30 GB and 2.85 GB.
    assert round(sum(4 * int(np.prod(shapes[n])) for n in decoder) / 1e9, 2) == 6.30
    assert round(sum(4 * int(np.prod(shapes[n])) for n in condition) / 1e9, 2) == 2.85


def test_dit_fixed_shapes() -> None:
    shapes = dit_checkpoint(TURBO_CONFIG)
    assert shapes["tokenizer.quantizer.project_in.weight"] == (6, 2048)
    assert shapes["tokenizer.quantizer.project_out.weight"] == (2048, 6)
    assert shapes["decoder.time_embed.linear_1.weight"] == (2048, 256)
    assert shapes["decoder.time_embed_r.time_proj.weight"] == (6 * 2048, 2048)
    assert shapes["decoder.proj_in.1.weight"] == (2048, 192, 2)
    assert shapes["decoder.proj_out.1.weight"] == (2048, 64, 2)  # ConvTranspose1d: [in, out, k]
    assert shapes["detokenizer.special_tokens"] == (1, 5, 2048)


def test_vae_decoder_count() -> None:
    shapes = vae_checkpoint(VAE_CONFIG)
    decoder = [n for n in shapes if n.startswith("decoder.")]
    assert len(decoder) == 182
    assert all(n.startswith(("encoder.", "decoder.")) for n in shapes)
    assert shapes["decoder.block.0.conv_t1.weight_g"] == (2048, 1, 1)  # transposed conv: norm over in_channels
    assert shapes["decoder.block.0.conv_t1.weight_v"] == (2048, 1024, 20)  # upsampling ratio 10
    assert "decoder.conv2.bias" not in shapes
    assert round(sum(4 * int(np.prod(shapes[n])) for n in decoder) / 1e9, 2) == 0.34


# ---- tiny configs ------------------------------------------------------------------------------------------------


def test_tiny_configs_build_the_same_name_sets() -> None:
    tiny: dict[str, Any] = {
        **TURBO_CONFIG,
        "hidden_size": 32,
        "intermediate_size": 48,
        "head_dim": 8,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "text_hidden_dim": 16,
        "timbre_hidden_dim": 8,
        "audio_acoustic_hidden_dim": 8,
        "in_channels": 24,
        "fsq_dim": 32,
    }
    full, small = dit_checkpoint(TURBO_CONFIG), dit_checkpoint(tiny)
    assert set(full) == set(small)
    assert small["tokenizer.quantizer.project_in.weight"] == (6, 32)
    assert small["decoder.time_embed.linear_1.weight"] == (32, 256)
    # An FSQ whose dim is its codebook dim has no projections at all.
    assert "tokenizer.quantizer.project_in.weight" not in dit_checkpoint({**tiny, "fsq_dim": 6})
    vae_tiny = {**VAE_CONFIG, "encoder_hidden_size": 4, "decoder_channels": 4, "decoder_input_channels": 2}
    assert set(vae_checkpoint(vae_tiny)) == set(vae_checkpoint(VAE_CONFIG))


# ---- the configs are the real ones ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "file,config",
    [
        ("acestep_v15_turbo_config.json", TURBO_CONFIG),
        ("oobleck_vae_config.json", VAE_CONFIG),
        ("qwen3_embedding_config.json", QWEN3_EMBEDDING_CONFIG),
    ],
)
def test_configs_are_the_verbatim_copies(file: str, config: dict[str, Any]) -> None:
    path = TESTDATA / file
    if not path.is_file():
        pytest.skip(f"{path} not on this machine")
    assert json.loads(path.read_text(encoding="utf-8")) == config


# ---- safetensors_file_size against the safetensors package ------------------------------------------------------


def _random_table(rng: random.Random) -> Shapes:
    parts = ["layers", "weight", "bias", "a", "Z", "norm", "x_y", "é"]
    table: Shapes = {}
    for _ in range(rng.randint(1, 40)):
        name = ".".join(rng.choice(parts) + (str(rng.randint(0, 120)) if rng.random() < 0.5 else "") for _ in "ab")
        table[name] = tuple(rng.randint(0, 9) for _ in range(rng.randint(0, 3)))
    return table


@pytest.mark.parametrize("seed", range(12))
def test_file_size_equals_a_file_written_by_safetensors_numpy(seed: int, tmp_path: Path) -> None:
    from safetensors.numpy import save_file

    rng = random.Random(seed)
    table = _random_table(rng)
    for dtype, np_dtype in (("F16", np.float16), ("F32", np.float32), ("I64", np.int64), ("U8", np.uint8)):
        for metadata in (None, PT, {"format": "np", "k": "v" * rng.randint(0, 9)}):
            path = tmp_path / f"{dtype}.safetensors"
            save_file({k: np.zeros(s, dtype=np_dtype) for k, s in table.items()}, str(path), metadata=metadata)
            assert safetensors_file_size(table, dtype, metadata) == path.stat().st_size, (dtype, metadata, table)


@pytest.mark.parametrize("seed", range(4))
def test_file_size_equals_a_bf16_file_written_by_safetensors_torch(seed: int, tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    table = _random_table(random.Random(100 + seed))
    for metadata in (None, PT):
        path = tmp_path / "bf16.safetensors"
        save_file({k: torch.zeros(s, dtype=torch.bfloat16) for k, s in table.items()}, str(path), metadata=metadata)
        assert safetensors_file_size(table, "BF16", metadata) == path.stat().st_size


def test_file_size_of_a_scaled_down_real_table(tmp_path: Path) -> None:
    """The real DiT names (long, many, with digits that sort as text) at tiny shapes, written for real."""
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    table = dit_checkpoint(
        {**TURBO_CONFIG, "hidden_size": 16, "intermediate_size": 8, "head_dim": 4, "fsq_dim": 16, "in_channels": 12}
    )
    path = tmp_path / "dit.safetensors"
    save_file({k: torch.zeros(s, dtype=torch.bfloat16) for k, s in table.items()}, str(path), metadata=PT)
    assert safetensors_file_size(table, "BF16", PT) == path.stat().st_size


# ---- cross-checks against the libraries upstream builds on, where installed -------------------------------------


def test_fsq_quantizer_state_dict_is_vector_quantize_pytorchs() -> None:
    pytest.importorskip("torch")
    vqp = pytest.importorskip("vector_quantize_pytorch")
    for dim in (2048, 32, 6):
        quantizer = vqp.ResidualFSQ(dim=dim, levels=TURBO_CONFIG["fsq_input_levels"], num_quantizers=1)
        ours = {
            k.removeprefix("tokenizer.quantizer."): v
            for k, v in dit_checkpoint({**TURBO_CONFIG, "fsq_dim": dim}).items()
            if k.startswith("tokenizer.quantizer.")
        }
        assert ours == {k: tuple(v.shape) for k, v in quantizer.state_dict().items()}


def test_weight_norm_shapes_are_torchs() -> None:
    torch = pytest.importorskip("torch")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.nn.utils.weight_norm is deprecated, and is what diffusers uses
        conv = torch.nn.utils.weight_norm(torch.nn.Conv1d(64, 2048, kernel_size=7, padding=3))
        conv_t = torch.nn.utils.weight_norm(torch.nn.ConvTranspose1d(2048, 1024, kernel_size=20, stride=10))
        last = torch.nn.utils.weight_norm(torch.nn.Conv1d(128, 2, kernel_size=7, bias=False))
    shapes = vae_checkpoint(VAE_CONFIG)
    for prefix, module in (("decoder.conv1.", conv), ("decoder.block.0.conv_t1.", conv_t), ("decoder.conv2.", last)):
        expected = {prefix + k: tuple(v.shape) for k, v in module.state_dict().items()}
        assert {k: shapes[k] for k in expected} == expected
        assert not [k for k in shapes if k.startswith(prefix) and k not in expected]
