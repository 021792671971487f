"""Every model the presets know goes the whole way: synthetic checkpoint -> pack -> verify ->
sanity (against the checkpoint) -> publish-layout. A model added to the registry is held to this
without a new test; its tensor count must be written below by hand (from upstream's index), or
this fails."""

from __future__ import annotations

import json

import pytest
from conftest import crosscheck, run_cli
from heartmula_burn import open_pack
from heartmula_burn._presets import PRESETS

# Tensors in upstream's released checkpoint of each model (model.safetensors.index.json), by hand.
RELEASED_TENSORS = {"heartmula": 289, "heartcodec": 818}


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.name)
def test_every_registered_model_goes_from_synthetic_to_published(preset, tmp_path):
    crosscheck("torch")
    root, out, published = tmp_path / "ckpt", tmp_path / "out", tmp_path / "published"
    run_cli("synthetic", root, "--model", preset.name, check_rc=0)
    model_dir = root / preset.folder_names[0]
    assert (model_dir / "config.json").is_file()

    pack = out / preset.pack_name
    run_cli("pack", root, "-o", f"{out}/", "-q", check_rc=0)
    with open_pack(pack) as opened:
        assert len(opened.tensors) == RELEASED_TENSORS[preset.name]
        assert opened.metadata["model"] == preset.name
    assert sorted(p.name for p in out.iterdir()) == sorted([preset.pack_name, *preset.runtime_files])

    run_cli("verify", pack, "--against", root, "-q", check_rc=0)
    # ... and verify does look: the last data byte flipped in a copy fails it.
    bad = tmp_path / "bad.bpk"
    data = bytearray(pack.read_bytes())
    data[-1] ^= 0x01
    bad.write_bytes(bytes(data))
    assert run_cli("verify", bad, "--against", root, "-q").returncode == 1
    proc = run_cli("sanity", pack, "--reference", root, "--device", "cpu", "--frames", "1", "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    assert report["ok"] and report["model"] == preset.name
    assert any(c["ok"] for c in report["checks"])

    run_cli("publish-layout", published, "--pack", pack, "-q", check_rc=0)
    files = sorted(p.name for p in published.iterdir())
    assert files == sorted([".gitattributes", "README.md", preset.pack_name, *preset.runtime_files])
    card = (published / "README.md").read_text()
    assert preset.card_loading and preset.card_loading in card
    assert (published / preset.pack_name).read_bytes() == pack.read_bytes()


def test_a_second_model_with_runtime_files_gets_its_own_hub_role(monkeypatch: pytest.MonkeyPatch) -> None:
    """Runtime files' repositories are roles of their models: a second model shipping runtime files
    adds its own options instead of a second --gen-repo (which argparse would refuse)."""
    from heartmula_burn._cli import build_parser
    from heartmula_burn._hub import repos
    from heartmula_burn._presets.heartcodec import HeartCodec

    class CodecWithFiles(HeartCodec):
        runtime_files = ("codec_config.json",)
        runtime_repo = "someone/codec-files"

    monkeypatch.setattr(repos, "PRESETS", (*repos.PRESETS[:1], CodecWithFiles()))
    roles = [spec.role for spec in repos.default_specs()]
    assert roles == ["lm", "codec", "gen", "codec-runtime"]
    options = build_parser().commands["download"]._option_string_actions
    assert "--gen-repo" in options and "--codec-runtime-repo" in options


def test_help_texts_follow_the_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """`synthetic`, `sanity` and `publish-layout` describe the models registered, with figures
    computed from their presets: today's two models by upstream's counts (by hand, above, and the
    real checkpoints' F32 sizes), and a model added to the registry without a word of CLI code."""
    from heartmula_burn._cli import build_parser
    from heartmula_burn._cli import publish as publish_cli
    from heartmula_burn._cli import sanity as sanity_cli
    from heartmula_burn._cli import synthetic as synthetic_cli
    from heartmula_burn._presets.heartcodec import HeartCodec

    def helps() -> dict[str, str]:
        commands = build_parser().commands
        return {
            name: " ".join(commands[name].format_help().split()) for name in ("synthetic", "sanity", "publish-layout")
        }

    today = helps()
    for preset in PRESETS:
        count = RELEASED_TENSORS[preset.name]
        assert f"{preset.folder_names[0]}/ with all {count} tensor names" in today["synthetic"]
        assert f"{preset.title}: {preset.sanity_summary}." in " ".join(today["sanity"].split())
        assert preset.pack_name in today["publish-layout"]
    assert "15.75 GB + 6.64 GB in F32" in today["synthetic"]  # the released checkpoints, widened
    assert "--tokenizer PATH tokenizer.json (default: beside the HeartMuLa pack)" in today["publish-layout"]

    class Fourth(HeartCodec):
        name, title, pack_name = "fourth", "FourthModel", "fourth.bpk"
        folder_names = ("Fourth-oss",)
        runtime_files = ("fourth_vocab.json",)
        sanity_summary = "its own forward"

    added = (*PRESETS, Fourth())
    for module in (publish_cli, sanity_cli, synthetic_cli):
        monkeypatch.setattr(module, "PRESETS", added)
    monkeypatch.setattr(publish_cli, "RUNTIME_FILES", ("tokenizer.json", "gen_config.json", "fourth_vocab.json"))
    grown = helps()
    assert "Fourth-oss/ with all 818 tensor names" in grown["synthetic"]  # the codec's shapes, renamed
    assert "FourthModel: its own forward." in grown["sanity"]
    assert "fourth.bpk" in grown["publish-layout"]
    assert "--fourth-vocab PATH fourth_vocab.json (default: beside the FourthModel pack)" in grown["publish-layout"]


def test_a_second_model_packed_by_name_is_one_registration(monkeypatch: pytest.MonkeyPatch) -> None:
    """A model packed by name registers a NamedModel; --model, its Hub options, `synthetic --model`
    and the lookups by variant and by pack then know it, with no CLI code of its own."""
    from types import MappingProxyType

    from heartmula_burn import _presets
    from heartmula_burn._cli import _common, build_parser
    from heartmula_burn._cli import download as download_cli
    from heartmula_burn._cli import publish as publish_cli
    from heartmula_burn._cli import synthetic as synthetic_cli
    from heartmula_burn._presets.acestep.named import AceStep

    class Other(AceStep):
        model, title = "other-1", "Other 1"
        variants = MappingProxyType({"other-small": "the small one"})
        hub_roles = MappingProxyType({"other": "Other-Repo"})
        repositories = MappingProxyType({"Other-Repo": "someone/other"})
        synthetic_name, synthetic_note = "other", "Other's folders"

        def add_options(self, group, one_of):  # no options of its own
            pass

    added = (*_presets.NAMED_MODELS, Other())
    for module in (_presets, _common, download_cli, synthetic_cli, publish_cli):
        monkeypatch.setattr(module, "NAMED_MODELS", added)
    commands = build_parser().commands
    for command in ("pack", "download"):
        options = commands[command]._option_string_actions
        assert options["--model"].choices == ("acestep-turbo", "acestep-sft", "other-small")
        assert "--other-repo" in options and "--acestep-repo" in options and "--planner" in options
    assert "(default someone/other)" in " ".join(commands["pack"].format_help().split())
    assert "--model other writes Other's folders." in " ".join(commands["synthetic"].format_help().split())
    assert _presets.named_model("other-small").title == "Other 1"
    assert _presets.named_model("acestep-sft").title == "ACE-Step 1.5"
    assert _presets.named_model_of_pack({"model": "other-1"}).title == "Other 1"
    assert _presets.named_model_of_pack({"model": "heartmula"}) is None
