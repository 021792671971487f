"""The sanity hook: its forward against torchtune's llama3_2, and end to end on packs that are right
and packs that are broken in ways only running the model shows."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_clean_failure, linked, rewrite_tensor, run_cli, run_process

# CI installs torch and torchtune and sets this, so that a missing one fails instead of skipping.
if os.environ.get("HEARTMULA_REQUIRE_TORCH") == "1":
    import torch
else:
    torch = pytest.importorskip("torch")

from heartmula_burn import _sanity as sanity
from heartmula_burn._fields import Fields
from heartmula_burn._presets.heartmula import FLAVOR_KEYS, Flavor, HeartMuLaConfig, forward
from heartmula_burn._presets.heartmula.sanity import HeartMuLaRunner


def _torchtune():
    if os.environ.get("HEARTMULA_REQUIRE_TORCH") == "1":
        from torchtune.models import llama3_2
    else:
        llama3_2 = pytest.importorskip("torchtune.models.llama3_2")
    return llama3_2


def _random_weights(prefix: str, f: Flavor, seed: int) -> dict:
    """Weights large enough (std 0.2) that every layer moves the residual stream visibly."""
    from heartmula_burn._presets.heartmula import layer_shapes

    g = torch.Generator().manual_seed(seed)
    weights = {}
    for name, shape in layer_shapes(prefix, f).items():
        if name.endswith(".scale"):
            weights[name] = 1.0 + 0.1 * torch.randn(shape, generator=g)
        else:
            weights[name] = 0.2 * torch.randn(shape, generator=g)
    return weights


def _torchtune_decoder(f: Flavor, weights: dict, prefix: str, batch: int, cache_len: int):
    """torchtune's builder, set up as heartlib sets up HeartMuLa's backbone and decoder: identity
    token embedding and output, KV caches on."""
    llama3_2 = _torchtune()
    model = llama3_2.llama3_2(
        vocab_size=16,
        num_layers=f.num_layers,
        num_heads=f.num_heads,
        num_kv_heads=f.num_kv_heads,
        embed_dim=f.embed_dim,
        max_seq_len=f.max_seq_len,
        intermediate_dim=f.intermediate_dim,
        attn_dropout=0.0,
        norm_eps=1e-5,
        rope_base=500_000,
        scale_factor=32,
    )
    model.tok_embeddings = torch.nn.Identity()
    model.output = torch.nn.Identity()
    state = {k[len(prefix) + 1 :]: v for k, v in weights.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and all("rope" in k or "cache" in k for k in missing), (missing, unexpected)
    model.setup_caches(batch_size=batch, dtype=torch.float32, decoder_max_seq_len=cache_len)
    return model.eval()


# Real head dims (128 as in the backbone, 384 as in the decoder) with few heads and layers.
FLAVORS = {
    "backbone-like": Flavor(
        num_layers=3, num_heads=4, num_kv_heads=2, embed_dim=512, intermediate_dim=320, max_seq_len=8192
    ),
    "decoder-like": Flavor(
        num_layers=2, num_heads=2, num_kv_heads=1, embed_dim=768, intermediate_dim=256, max_seq_len=2048
    ),
}


def _both(f: Flavor, start: int, prompt_len: int = 7, seed: int = 0):
    """Outputs of ours and torchtune's for a prompt at positions start.., then one cached step."""
    weights = _random_weights("m", f, seed)
    g = torch.Generator().manual_seed(seed + 1)
    prompt = torch.randn(2, prompt_len, f.embed_dim, generator=g)
    step = torch.randn(2, 1, f.embed_dim, generator=g)
    cache_len = prompt_len + 1

    ours = forward.Transformer(weights, "m", f)
    cache = forward.KVCache.empty(f.num_layers)
    ours_prompt = ours(prompt, torch.arange(start, start + prompt_len), cache)
    ours_step = ours(step, torch.tensor([start + prompt_len]), cache)

    tt = _torchtune_decoder(f, weights, "m", batch=2, cache_len=cache_len)
    causal = torch.tril(torch.ones(cache_len, cache_len, dtype=torch.bool))
    with torch.no_grad():
        pos = torch.arange(start, start + prompt_len).expand(2, -1)
        tt_prompt = tt(prompt, input_pos=pos, mask=causal[None, :prompt_len].expand(2, -1, -1))
        pos = torch.tensor([[start + prompt_len]]).expand(2, -1)
        tt_step = tt(step, input_pos=pos, mask=causal[None, prompt_len:].expand(2, -1, -1))
    return (ours_prompt, ours_step), (tt_prompt, tt_step)


# max |ours - torchtune| over the prompt and over the cached step, per case, each about 3x the error
# measured on x86-64 with torch 2.x (outputs peak at about 4, where one f32 ulp is 4.8e-7). The
# decoder-like step measured exactly 0: its bound is 4 ulps at the peak. A wrong RMSNorm epsilon
# (1e-6 for 1e-5) moves these by 2.4e-5 to 9.2e-5, which the old bound of 1e-4 let through.
BOUNDS = {
    # (flavor, far): (prompt, step)      measured: prompt, step
    ("backbone-like", False): (12e-6, 6e-6),  # 3.93e-6, 1.85e-6
    ("backbone-like", True): (24e-6, 7e-6),  # 7.75e-6, 2.15e-6
    ("decoder-like", False): (13e-6, 2e-6),  # 4.29e-6, 0
    ("decoder-like", True): (10e-6, 2e-6),  # 3.10e-6, 0
}


@pytest.mark.parametrize("flavor", FLAVORS)
@pytest.mark.parametrize("far", [False, True])
def test_forward_matches_torchtune(flavor, far):
    f = FLAVORS[flavor]
    # Far: the last positions the RoPE cache covers, where the llama3 scaling matters most.
    (op, os_), (tp, ts) = _both(f, start=f.max_seq_len - 10 if far else 0)
    assert op.shape == tp.shape and os_.shape == ts.shape
    assert tp.abs().max() > 0.5  # the comparison is between non-trivial outputs
    prompt_bound, step_bound = BOUNDS[flavor, far]
    prompt_error, step_error = (op - tp).abs().max().item(), (os_ - ts).abs().max().item()
    assert prompt_error < prompt_bound, f"prompt: max |ours - torchtune| = {prompt_error:.3g}"
    assert step_error < step_bound, f"cached step: max |ours - torchtune| = {step_error:.3g}"


def test_comparison_catches_missing_rope_scaling(monkeypatch):
    """The llama3 frequency scaling only shows at long positions; dropping it must fail the bound there."""
    monkeypatch.setattr(forward, "ROPE_SCALE_FACTOR", 1)
    (op, _), (tp, _) = _both(FLAVORS["backbone-like"], start=5000)
    assert (op - tp).abs().max().item() > 1000 * BOUNDS["backbone-like", True][0]


@pytest.mark.parametrize("head_dim", [128, 384])
def test_rope_frequencies_are_torchtunes(head_dim):
    from torchtune.models.llama3_1._position_embeddings import Llama3ScaledRoPE

    rope = Llama3ScaledRoPE(dim=head_dim, max_seq_len=16, base=500_000, scale_factor=32)
    assert torch.equal(forward.rope_frequencies(head_dim), rope.theta)


# ---------------------------------------------------------------------------------------------
# The whole model: sanity's frames against heartlib's generate_frame, rebuilt from torch modules

# Small sizes with the released structure (GQA in both stacks, 8 codebooks, MuQ and CFG rows). The
# backbone's 6 query heads share 2 KV heads: with 4 over 2, a group of heads - kv_heads would pass too.
FRAME_CONFIG = HeartMuLaConfig(
    backbone=Flavor(num_layers=2, num_heads=6, num_kv_heads=2, embed_dim=384, intermediate_dim=384, max_seq_len=64),
    decoder=Flavor(num_layers=2, num_heads=2, num_kv_heads=1, embed_dim=128, intermediate_dim=192, max_seq_len=16),
    text_vocab_size=300,
    audio_vocab_size=97,
    audio_num_codebooks=8,
    muq_dim=48,
    backbone_flavor="small",
    decoder_flavor="small",
)


def _frame_weights(cfg: HeartMuLaConfig, seed: int = 7) -> dict:
    """Realistic scales: norms near 1, Linear weights and audio_head about 1/sqrt(fan_in), embeddings
    about 1 (what RMSNorm then sees in the released model)."""
    from heartmula_burn._presets.heartmula import expected_tensors

    g = torch.Generator().manual_seed(seed)
    weights = {}
    for name, shape in sorted(expected_tensors(cfg).items()):
        x = torch.randn(shape, generator=g)
        if name.endswith(".scale"):
            x = 1.0 + 0.1 * x
        elif name == "audio_head":
            x = x / shape[1] ** 0.5  # [codebook, in, out]
        elif name.endswith("bias"):
            x = 0.02 * x
        elif not name.endswith("embeddings.weight") and not name.endswith("embedding.weight"):
            x = x / shape[-1] ** 0.5  # [out, in]
        weights[name] = x
    return weights


class HeartlibFrames(torch.nn.Module):
    """heartlib's HeartMuLa (modeling_heartmula.py) for one batch of two rows (conditional, then
    unconditional), written out from upstream's generate_frame with torch modules under upstream's
    names (strict load) and torchtune's decoders. Sampling is greedy on the guided logits, or forced."""

    def __init__(self, weights: dict, cfg: HeartMuLaConfig):
        super().__init__()
        bb, dec, v, k = cfg.backbone.embed_dim, cfg.decoder.embed_dim, cfg.audio_vocab_size, cfg.audio_num_codebooks
        self.cfg = cfg
        self.text_embeddings = torch.nn.Embedding(cfg.text_vocab_size, bb)
        self.audio_embeddings = torch.nn.Embedding(v * k, bb)
        self.unconditional_text_embedding = torch.nn.Embedding(1, bb)
        self.projection = torch.nn.Linear(bb, dec, bias=False)
        self.codebook0_head = torch.nn.Linear(bb, v, bias=False)
        self.audio_head = torch.nn.Parameter(torch.empty(k - 1, dec, v))
        self.muq_linear = torch.nn.Linear(cfg.muq_dim, bb)
        own = {n: w for n, w in weights.items() if not n.startswith(("backbone.", "decoder."))}
        self.load_state_dict(own, strict=True)
        stack = {p: {n: w for n, w in weights.items() if n.startswith(f"{p}.")} for p in ("backbone", "decoder")}
        self.backbone = _torchtune_decoder(cfg.backbone, stack["backbone"], "backbone", 2, cfg.backbone.max_seq_len)
        self.decoder = _torchtune_decoder(cfg.decoder, stack["decoder"], "decoder", 2, k)
        self.backbone_mask = torch.tril(
            torch.ones(cfg.backbone.max_seq_len, cfg.backbone.max_seq_len, dtype=torch.bool)
        )
        self.decoder_mask = torch.tril(torch.ones(k, k, dtype=torch.bool))
        self.uncond = torch.tensor([False, True])

    def pick(self, logits: torch.Tensor, cfg_scale: float) -> torch.Tensor:
        guided = logits[1:] + (logits[:1] - logits[1:]) * cfg_scale
        return guided.argmax(-1, keepdim=True).repeat(2, 1)

    @torch.no_grad()
    def generate_frame(self, tokens, tokens_mask, input_pos, cfg_scale, muq=None, starts=None, forced=None):
        """Returns the frame's codes [2, K], its codebook-0 logits, the decoder's logits [K-1, 2, V]
        and the backbone's last hidden state. `forced`: [K] codes used in place of the greedy ones."""
        v, k = self.cfg.audio_vocab_size, self.cfg.audio_num_codebooks
        b = tokens.size(0)
        unconditional = self.unconditional_text_embedding(torch.zeros(1, dtype=torch.long))
        text = self.text_embeddings(tokens[:, :, -1])
        text = torch.where(self.uncond.view(b, 1, 1).expand_as(text), unconditional, text)
        audio = self.audio_embeddings(tokens[:, :, :-1] + v * torch.arange(k))
        embeds = torch.cat([audio, text.unsqueeze(-2)], dim=-2)
        h = (embeds * tokens_mask.unsqueeze(-1)).sum(dim=2, dtype=embeds.dtype)
        if muq is not None:
            m = self.muq_linear(muq)
            m = torch.where(self.uncond.view(b, 1).expand_as(m), unconditional, m)
            h[torch.arange(b), starts] = m
        h = self.backbone(h, input_pos=input_pos, mask=self.backbone_mask[input_pos])
        last_h = h[:, -1, :]
        c0_logits = self.codebook0_head(last_h)
        choose = (
            (lambda i, li: forced[i].expand(2, 1)) if forced is not None else (lambda i, li: self.pick(li, cfg_scale))
        )
        sample = choose(0, c0_logits)
        self.decoder.reset_caches()
        curr_h = torch.cat([last_h.unsqueeze(1), self.audio_embeddings(sample)], dim=1)
        curr_pos = torch.arange(0, 2).unsqueeze(0).repeat(b, 1)
        samples, logits = [sample], []
        for i in range(1, k):
            dh = self.decoder(self.projection(curr_h), input_pos=curr_pos, mask=self.decoder_mask[curr_pos])
            li = torch.mm(dh[:, -1, :], self.audio_head[i - 1])
            sample = choose(i, li)
            curr_h = self.audio_embeddings(sample + i * v)
            samples.append(sample)
            logits.append(li)
            curr_pos = curr_pos[:, -1:] + 1
        return torch.cat(samples, dim=1), c0_logits, torch.stack(logits), last_h


# The forward check's inputs as the reference gives them (heartmula-model.md, 3.2): fixed ids framed
# by BOS/EOS, the MuQ placeholder row between tags and lyrics, the CFG variant's guidance scale.
REFERENCE_TAGS = (128000, 1000, 2000, 3000, 128001)
REFERENCE_LYRICS = (128000, 4000, 5000, 6000, 7000, 128001)
REFERENCE_CFG_SCALE = 1.5


def _heartlib_outputs(weights: dict, cfg: HeartMuLaConfig, frames: int) -> dict:
    """What sanity's runner computes, through HeartlibFrames, driven as heartlib's pipeline drives
    generate_frame: the prompt (tags, a MuQ row, lyrics; text column only), then each frame fed back
    as a row of audio codes with the text column masked out, at the next position."""
    k, v, cfg_scale = cfg.audio_num_codebooks, cfg.audio_vocab_size, REFERENCE_CFG_SCALE
    text = [t % cfg.text_vocab_size for t in (*REFERENCE_TAGS, 0, *REFERENCE_LYRICS)]
    s = len(text)
    tokens = torch.zeros(2, s, k + 1, dtype=torch.long)
    tokens[:, :, k] = torch.tensor(text)
    mask = torch.zeros(2, s, k + 1, dtype=torch.bool)
    mask[:, :, k] = True
    muq = (0.01 * torch.sin(torch.arange(cfg.muq_dim, dtype=torch.float32))).expand(2, -1)
    prompt = {
        "tokens": tokens,
        "tokens_mask": mask,
        "input_pos": torch.arange(s).expand(2, -1),
        "cfg_scale": cfg_scale,
    }

    def row(codes):  # heartlib's _pad_audio_token: the codes, then a masked-out text column
        padded = torch.cat([codes, torch.full((2, 1), 5)], dim=1).unsqueeze(1)
        padded_mask = torch.ones_like(padded, dtype=torch.bool)
        padded_mask[..., -1] = False
        return padded, padded_mask

    out = {}
    model = HeartlibFrames(weights, cfg)
    forced = torch.tensor([(100 * (i + 1)) % v for i in range(k)])
    _, out["c0_logits"], out["decoder_logits"], out["h_last"] = model.generate_frame(
        **prompt, muq=muq.clone(), starts=len(REFERENCE_TAGS), forced=forced
    )
    padded, padded_mask = row(forced.expand(2, -1))
    out["frame2_c0_logits"] = model.generate_frame(padded, padded_mask, torch.full((2, 1), s), cfg_scale)[1]

    model = HeartlibFrames(weights, cfg)  # fresh caches
    codes = []
    frame = model.generate_frame(**prompt, muq=muq.clone(), starts=len(REFERENCE_TAGS))[0]
    for f in range(1, frames + 1):
        codes.append(frame[0])
        if f < frames:
            padded, padded_mask = row(frame)
            frame = model.generate_frame(padded, padded_mask, torch.full((2, 1), s + f - 1), cfg_scale)[0]
    out["greedy_codes"] = torch.stack(codes)
    return out


# max |ours - heartlib's| per output, about 3x the error measured on x86-64 with torch 2.x (outputs
# peak at 2.8 to 5.0, where one f32 ulp is 2.4e-7 to 4.8e-7).
FRAME_BOUNDS = {
    "h_last": 4e-6,  # measured 1.22e-6
    "c0_logits": 5e-6,  # 1.71e-6
    "decoder_logits": 4.5e-6,  # 1.55e-6
    "frame2_c0_logits": 2e-6,  # 6.0e-7
}


@pytest.fixture(scope="module")
def frame_weights() -> dict:
    return _frame_weights(FRAME_CONFIG)


@pytest.fixture(scope="module")
def heartlib_frames(frame_weights) -> dict:
    return _heartlib_outputs(frame_weights, FRAME_CONFIG, frames=3)


def _ours(weights: dict, frames: int) -> dict:
    from heartmula_burn._presets.heartmula.sanity import forward_outputs

    return forward_outputs(forward.HeartMuLa(weights, FRAME_CONFIG), frames)


def test_frames_match_heartlibs_generate_frame(frame_weights, heartlib_frames):
    ours, theirs = _ours(frame_weights, frames=3), heartlib_frames
    for name, bound in FRAME_BOUNDS.items():
        assert ours[name].shape == theirs[name].shape, name
        assert theirs[name].abs().max() > 0.5, name  # non-trivial outputs
        error = (ours[name] - theirs[name]).abs().max().item()
        assert error < bound, f"{name}: max |ours - heartlib| = {error:.3g}"
    assert torch.equal(ours["greedy_codes"], theirs["greedy_codes"]), (ours["greedy_codes"], theirs["greedy_codes"])


@pytest.mark.parametrize(
    "fault",
    ["audio_head codebooks swapped", "projection transposed", "unconditional row replaced", "muq bias dropped"],
)
def test_frame_comparison_catches_a_wrong_weight(fault, frame_weights, heartlib_frames):
    """Negative controls: the same comparison with one weight wrong on our side fails far above the bounds."""
    weights = frame_weights
    wrong = dict(weights)
    if fault == "audio_head codebooks swapped":
        wrong["audio_head"] = weights["audio_head"][[1, 0, *range(2, FRAME_CONFIG.audio_num_codebooks - 1)]]
    elif fault == "projection transposed":  # square only in part: the first 128 columns, transposed
        p = weights["projection.weight"].clone()
        p[:, :128] = p[:, :128].T.clone()
        wrong["projection.weight"] = p
    elif fault == "unconditional row replaced":
        wrong["unconditional_text_embedding.weight"] = weights["text_embeddings.weight"][:1]
    else:
        wrong["muq_linear.bias"] = torch.zeros_like(weights["muq_linear.bias"])
    ours, theirs = _ours(wrong, frames=1), heartlib_frames
    worst = max((ours[n] - theirs[n]).abs().max().item() / b for n, b in FRAME_BOUNDS.items())
    assert worst > 1000, f"{fault}: only {worst:.3g}x the bound"


def _frame_checks(out: dict) -> dict[str, sanity.Check]:
    """Sanity's checks of HeartMuLa's outputs, by a runner whose config.json describes FRAME_CONFIG."""
    c = FRAME_CONFIG
    flavors = {"frame-backbone": c.backbone, "frame-decoder": c.decoder}
    doc = {
        "backbone_flavor": "frame-backbone",
        "decoder_flavor": "frame-decoder",
        "flavors": {name: {k: getattr(f, k) for k in FLAVOR_KEYS} for name, f in flavors.items()},
        **{k: getattr(c, k) for k in ("text_vocab_size", "audio_vocab_size", "audio_num_codebooks", "muq_dim")},
    }
    runner = HeartMuLaRunner(Fields(doc, Path("config.json")), frames=len(out["greedy_codes"]))
    result = sanity.SanityResult(pack="lm.bpk", reference=None, device="cpu", pack_dtype="F32", frames=runner.frames)
    runner.output_checks(out, result)
    return {check.name: check for check in result.checks}


CACHE_CHECK = "KV cache agrees with a full recompute"


def test_output_checks_pass_on_sound_frames(frame_weights):
    checks = _frame_checks(_ours(frame_weights, frames=3))
    assert len(checks) == 5 and all(check.ok for check in checks.values()), checks


def test_cache_check_fails_on_a_cache_kept_in_bfloat16(frame_weights, monkeypatch):
    """Negative control for the KV cache check: keys and values stored in bfloat16 (a cache kept at
    half precision) move frame 2's logits far less than a wrong weight does, but far beyond the
    summation-order differences the check allows."""

    class Bfloat16Entries(list):
        def __setitem__(self, i, tensor):
            super().__setitem__(i, tensor.to(torch.bfloat16).float())

    def empty(cls, num_layers):
        return cls(Bfloat16Entries([None] * num_layers), Bfloat16Entries([None] * num_layers))

    sound = _frame_checks(_ours(frame_weights, frames=1))[CACHE_CHECK]
    monkeypatch.setattr(forward.KVCache, "empty", classmethod(empty))
    out = _ours(frame_weights, frames=1)
    cached, recomputed = out["frame2_c0_logits"], out["frame2_c0_recomputed"]
    peak = recomputed.abs().max().item()
    relative = (cached - recomputed).abs().max().item() / max(1.0, peak)
    # Measured 6.2e-4 (a sound cache: 3e-7): small beside the logits, large beside float noise.
    assert 3e-4 < relative < 1e-2, relative
    faulty = _frame_checks(out)[CACHE_CHECK]
    assert sound.ok and not faulty.ok, (sound, faulty)


@pytest.fixture(scope="module")
def sound_frame(frame_weights):
    return _ours(frame_weights, frames=1)


@pytest.mark.parametrize(
    ("peak", "diff", "ok"),
    # The README's rule: within 1e-4 of the larger of 1 and the recomputed logits' peak.
    [(0.5, 0.9e-4, True), (0.5, 1.1e-4, False), (3.0, 2.9e-4, True), (3.0, 3.1e-4, False)],
)
def test_cache_check_allows_1e4_of_the_larger_of_1_and_the_peak(sound_frame, peak, diff, ok):
    out = dict(sound_frame)
    recomputed = out["frame2_c0_recomputed"] / out["frame2_c0_recomputed"].abs().max() * peak
    cached = recomputed.clone()
    cached[0, 3] += diff
    out["frame2_c0_recomputed"], out["frame2_c0_logits"] = recomputed, cached
    assert _frame_checks(out)[CACHE_CHECK].ok is ok


@pytest.mark.parametrize(
    ("code", "finite", "ok"),
    [(0, True, True), (FRAME_CONFIG.audio_vocab_size - 1, True, True), (-1, True, False)]
    + [(FRAME_CONFIG.audio_vocab_size, True, False), (FRAME_CONFIG.audio_vocab_size + 5, True, False)]
    + [(5, False, False)],
)
def test_greedy_check_wants_codes_in_the_vocabulary_and_finite_logits(sound_frame, code, finite, ok):
    out = dict(sound_frame)
    out["greedy_codes"] = out["greedy_codes"].clone()
    out["greedy_codes"][0, 2] = code
    out["greedy_finite"] = torch.tensor(finite)
    assert _frame_checks(out)["greedy decode of 1 frame(s)"].ok is ok


@pytest.mark.parametrize(
    ("output", "check"),
    [
        ("c0_logits", "prompt codebook-0 logits finite"),
        ("decoder_logits", "teacher-forced logits, codebooks 1-7 finite"),
        ("frame2_c0_logits", "frame 2 codebook-0 logits (KV cache) finite"),
    ],
)
def test_a_nan_logit_fails_its_own_finite_check_only(sound_frame, output, check):
    out = dict(sound_frame)
    out[output] = out[output].clone()
    out[output].view(-1)[7] = float("nan")
    checks = _frame_checks(out)
    assert not checks[check].ok
    finite = [name for name in checks if name.endswith(" finite")]
    assert len(finite) == 3 and all(checks[name].ok for name in finite if name != check), checks


def test_the_backbone_sees_each_position_once_in_pipeline_order(frame_weights, monkeypatch):
    """The backbone's calls and their positions, as heartlib's pipeline makes them: the 12-row prompt
    (5 tags, the MuQ row, 6 lyrics) at 0..11, frame 2's row at 12 through the cache, the same 13
    rows recomputed without it, then each greedy frame but the last fed back at the next position."""
    seen = []
    backbone_call = forward.Transformer.__call__

    def recording(self, h, positions, cache):
        if self.prefix == "backbone":
            seen.append(positions.tolist())
        return backbone_call(self, h, positions, cache)

    monkeypatch.setattr(forward.Transformer, "__call__", recording)
    _ours(frame_weights, frames=3)
    assert seen == [list(range(12)), [12], list(range(13)), [12], [13]]


def test_no_frames_decoded_when_none_are_asked_for(frame_weights):
    out = _ours(frame_weights, frames=0)
    assert out["greedy_codes"].shape == (0, FRAME_CONFIG.audio_num_codebooks)
    assert _frame_checks(out)["greedy decode of 0 frame(s)"].ok


# ---------------------------------------------------------------------------------------------
# End to end, on the tiny synthetic checkpoint


def _sanity(*args):
    proc = run_cli("sanity", *args, "--device", "cpu", "--json")
    report = json.loads(proc.stdout) if proc.stdout.strip() else None
    return proc, report


def _checks(report) -> dict:
    return {c["name"]: c for c in report["checks"]}


@pytest.fixture(scope="module")
def packs(tiny_ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("sanity_packs")
    for dtype in ("f32", "bf16"):
        run_cli("pack", tiny_ckpt, "-o", out / f"{dtype}.bpk", "--dtype", dtype, "-q", check_rc=0)
    return out


def test_f32_pack_matches_checkpoint_exactly(packs, tiny_ckpt):
    proc, report = _sanity(packs / "f32.bpk", "--reference", tiny_ckpt, "--frames", "3")
    assert proc.returncode == 0, proc.stderr
    checks = _checks(report)
    assert report["ok"] and all(c["ok"] for c in checks.values())
    for name in HeartMuLaRunner.compared[:-1]:
        assert report["figures"][f"reference: {name}: max_abs_diff"] == 0.0
    assert len(report["figures"]["greedy_codes"]) == 3
    assert report["figures"]["max_abs_c0_logit"] > 0


def test_bf16_pack_matches_cast_reference_and_reports_the_loss(packs, tiny_ckpt):
    proc, report = _sanity(packs / "bf16.bpk", "--reference", tiny_ckpt)
    assert proc.returncode == 0, proc.stderr
    checks = _checks(report)
    exact = [c for n, c in checks.items() if n.startswith("reference cast to the pack's dtypes (289 tensors)")]
    assert len(exact) == len(HeartMuLaRunner.compared) and all(c["ok"] for c in exact)
    loose = [c for n, c in checks.items() if n.startswith("vs the uncast reference")]
    assert len(loose) == len(HeartMuLaRunner.compared) and all(c["ok"] is None for c in loose)
    # Rounding to bf16 does change the logits, and that is reported, not hidden.
    assert report["figures"]["vs the uncast reference (lossy cast, not judged): c0_logits: max_abs_diff"] > 0


def test_another_pack_as_reference(packs):
    proc, report = _sanity(packs / "bf16.bpk", "--reference", packs / "f32.bpk")
    assert proc.returncode == 0 and report["ok"], proc.stderr


def test_python_api_returns_a_result(packs, tiny_ckpt):
    result = sanity.run(packs / "f32.bpk", reference=tiny_ckpt, device="cpu", frames=1)
    assert result.ok and result.device == "cpu" and result.pack_dtype == "F32"
    assert {"load_s", "forward_s", "reference_load_s", "reference_forward_s"} <= set(result.timings)


def test_one_ulp_in_one_weight_fails_the_reference_check(packs, tiny_ckpt, tmp_path):
    """Bit-identical is checked exactly: one element of the backbone's final norm scale, one ulp
    larger in magnitude (the next float away from zero), changes the final hidden state it
    multiplies, and every output after it, by about 1e-7 relative; any tolerance would pass it."""
    from heartmula_burn import open_pack

    name, element = "backbone.norm.scale", 5
    with open_pack(packs / "f32.bpk") as pack:
        info = pack.info(name)
        assert info.dtype == "F32"
        offset = info.file_offset + 4 * element
    raw = bytearray((packs / "f32.bpk").read_bytes())
    before = np.frombuffer(bytes(raw[offset : offset + 4]), "<f4")[0]
    bits = int.from_bytes(raw[offset : offset + 4], "little") + 1  # the next float in magnitude
    raw[offset : offset + 4] = bits.to_bytes(4, "little")
    after = np.frombuffer(bytes(raw[offset : offset + 4]), "<f4")[0]
    assert after != before and abs(after) == np.nextafter(abs(before), np.float32(np.inf))
    (tmp_path / "ulp.bpk").write_bytes(raw)

    proc, report = _sanity(tmp_path / "ulp.bpk", "--reference", tiny_ckpt)
    assert proc.returncode == 1, proc.stderr
    failed = [c["name"] for c in report["checks"] if c["ok"] is False]
    assert failed[0] == "reference: h_last" and "reference: c0_logits" in failed, failed
    assert 0 < report["figures"]["reference: h_last: max_abs_diff"] < 1e-5
    assert "sanity check failed: reference: h_last" in proc.stderr


def test_transposed_square_weight_fails_the_reference_check(tiny_ckpt, tmp_path):
    # Square, so every shape still fits: only running the model shows it.
    broken = rewrite_tensor(tiny_ckpt, "backbone.layers.3.attn.output_proj.weight", lambda a: a.T)
    run_cli("pack", broken, "-o", tmp_path / "t.bpk", "-q", check_rc=0)
    proc, report = _sanity(tmp_path / "t.bpk", "--reference", tiny_ckpt)
    assert proc.returncode == 1
    failed = [c["name"] for c in report["checks"] if c["ok"] is False]
    assert "reference: c0_logits" in failed and "reference: h_last" in failed
    assert "sanity check failed: reference: h_last" in proc.stderr


def test_swapped_tensors_fail_the_reference_check(tiny_ckpt, tmp_path):
    manifest = tmp_path / "m.json"
    run_cli("manifest", linked(tiny_ckpt, tmp_path), "-o", manifest, check_rc=0)
    doc = json.loads(manifest.read_text())
    by_name = {t["name"]: t for t in doc["tensors"]}
    a, b = by_name["decoder.layers.0.mlp.w1.weight"], by_name["decoder.layers.1.mlp.w1.weight"]
    a["source"], b["source"] = b["source"], a["source"]
    manifest.write_text(json.dumps(doc))
    run_cli("pack", "--manifest", manifest, "-o", tmp_path / "s.bpk", "-q", check_rc=0)
    proc, report = _sanity(tmp_path / "s.bpk", "--reference", tiny_ckpt)
    assert proc.returncode == 1
    failed = {c["name"] for c in report["checks"] if c["ok"] is False}
    # The backbone never touches the decoder: the fault shows exactly where the swapped weights act.
    assert failed == {"reference: decoder_logits", "reference: greedy_codes"} or failed == {"reference: decoder_logits"}
    assert "sanity check failed: reference: decoder_logits" in proc.stderr


def test_transposed_rectangular_weight_fails_the_shape_check(tiny_ckpt, tmp_path):
    broken = rewrite_tensor(tiny_ckpt, "decoder.layers.1.mlp.w2.weight", lambda a: a.T)
    run_cli("pack", broken, "-o", tmp_path / "r.bpk", "--any-model", "-q", check_rc=0)
    proc, report = _sanity(tmp_path / "r.bpk", "--config", broken / "HeartMuLa-oss-3B" / "config.json")
    assert proc.returncode == 1
    assert [c["name"] for c in report["checks"]] == ["tensors and shapes"]
    assert "decoder.layers.1.mlp.w2.weight" in report["checks"][0]["figure"]


def test_non_finite_weight_is_named_without_a_reference(tiny_ckpt, tmp_path):
    def poison(a):
        a = a.copy()
        a[0, 1] = np.nan
        return a

    broken = rewrite_tensor(tiny_ckpt, "projection.weight", poison)
    run_cli("pack", broken, "-o", tmp_path / "n.bpk", "-q", check_rc=0)
    proc, report = _sanity(tmp_path / "n.bpk")
    assert proc.returncode == 1
    weights = _checks(report)["weights finite"]
    assert weights["ok"] is False and "'projection.weight' (1)" in weights["figure"]


def test_pack_without_config_asks_for_one(tiny_ckpt, tmp_path):
    run_cli("pack", tiny_ckpt, "-o", tmp_path / "a.bpk", "--any-model", "-q", check_rc=0)
    proc = run_cli("sanity", tmp_path / "a.bpk", "--device", "cpu")
    assert_clean_failure(proc, str(tmp_path / "a.bpk"), "--config")
    config = tiny_ckpt / "HeartMuLa-oss-3B" / "config.json"
    run_cli("sanity", tmp_path / "a.bpk", "--device", "cpu", "--config", config, check_rc=0)


def test_cuda_when_there_is_none_is_a_clean_error(packs):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    proc = run_cli("sanity", packs / "f32.bpk", "--device", "cuda")
    assert_clean_failure(proc, "--device cuda", "CUDA is not available")


def test_without_torch_the_command_says_how_to_install_it(packs, tmp_path):
    # A `torch` that cannot be imported, first on the path.
    fake = tmp_path / "no_torch" / "torch"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('No module named torch')\n")
    env = {**os.environ, "PYTHONPATH": str(fake.parent)}
    proc = run_process("sanity", packs / "f32.bpk", env=env)
    assert_clean_failure(proc, "needs PyTorch", "pip install 'heartmula-burn[sanity]'")
