"""A folder ready to push as a model repository: the pack, the runtime files, a .gitattributes
routing large files through Git LFS, and a README model card whose every figure is read from
the pack itself."""

from __future__ import annotations

import hashlib
import math
import os
import re
import shutil
from pathlib import Path
from typing import Any, Callable

from .atomic import staged_folder
from .errors import PackFileError, SourceError
from .packfile import Pack, open_pack

# Burn releases the compatibility checks (rust/burn-compat) run against.
VERIFIED_BURN_VERSIONS = ("0.21.0", "0.22.1")
LFS_THRESHOLD = 10 * 1000 * 1000  # bytes; larger files go through Git LFS
BASE_MODEL = "HeartMuLa/HeartMuLa-oss-3B"


def sha256_of(path: Path, progress: Callable[[int], None] | None = None) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 << 20):
            digest.update(chunk)
            if progress:
                progress(len(chunk))
    return digest.hexdigest()


def architecture(pack: Pack) -> dict[str, int]:
    """HeartMuLa's dimensions, read from tensor shapes (not from any config)."""

    def shape(name: str) -> tuple[int, ...]:
        if name not in pack:
            raise PackFileError.at(pack.path, "missing: not a HeartMuLa pack", tensor=name)
        return pack.info(name).shape

    def layers(prefix: str) -> int:
        found = {int(m.group(1)) for t in pack if (m := re.match(rf"{prefix}\.layers\.(\d+)\.", t.name))}
        return max(found) + 1 if found else 0

    return {
        "backbone_layers": layers("backbone"),
        "backbone_hidden_size": shape("backbone.norm.scale")[0],
        "backbone_intermediate_size": shape("backbone.layers.0.mlp.w1.weight")[0],
        "decoder_layers": layers("decoder"),
        "decoder_hidden_size": shape("decoder.norm.scale")[0],
        "decoder_intermediate_size": shape("decoder.layers.0.mlp.w1.weight")[0],
        "text_vocab_size": shape("text_embeddings.weight")[0],
        "audio_vocab_size": shape("codebook0_head.weight")[0],
        "audio_codebooks": shape("audio_head")[0] + 1,
        "muq_dim": shape("muq_linear.weight")[1],
    }


def model_card(pack: Pack, files: dict[str, tuple[int, str]]) -> str:
    arch = architecture(pack)
    dtypes = sorted({t.dtype for t in pack})
    params = sum(math.prod(t.shape) for t in pack)
    meta = pack.metadata
    rows = "\n".join(f"| `{name}` | {size:,} | `{digest}` |" for name, (size, digest) in files.items())
    meta_rows = "\n".join(f"| `{k}` | `{v}` |" for k, v in meta.items())
    versions = " and ".join(VERIFIED_BURN_VERSIONS)
    return f"""---
license: apache-2.0
base_model: {BASE_MODEL}
library_name: burn
tags:
- burn
- music-generation
- heartmula
---

# HeartMuLa-oss-3B for Burn

[{BASE_MODEL}](https://huggingface.co/{BASE_MODEL}) converted to a single Burn pack
(`heartmula.bpk`) by heartmula-burn {meta.get("version", "")}. License: Apache-2.0, as upstream.

- Tensors: {len(pack)} ({params:,} parameters), dtype {", ".join(dtypes)}; source dtype {meta.get("source_dtype", "unknown")}
- Layout: Burn pack format version 1, {pack.layout} layout, {pack.file_size:,} bytes
- Verified against Burn {versions} (Burn reads every tensor bit for bit, writes identical bytes
  from the same tensors, and a HeartMuLa module loads the pack)

## Architecture

| | backbone | decoder |
| --- | --- | --- |
| layers | {arch["backbone_layers"]} | {arch["decoder_layers"]} |
| hidden size | {arch["backbone_hidden_size"]} | {arch["decoder_hidden_size"]} |
| intermediate size | {arch["backbone_intermediate_size"]} | {arch["decoder_intermediate_size"]} |

Text vocabulary {arch["text_vocab_size"]}, audio vocabulary {arch["audio_vocab_size"]} per codebook,
{arch["audio_codebooks"]} codebooks, MuQ conditioning dim {arch["muq_dim"]}.

## Files

| file | bytes | sha256 |
| --- | --- | --- |
{rows}

## Loading from Rust

Tensors keep their upstream names and PyTorch layout (`Linear` weights are `[out, in]`), so build
every `Linear` with `LinearLayout::Col` and load with a plain `BurnpackStore`:

```rust
use burn_store::{{BurnpackStore, ModuleSnapshot}};

let mut store = BurnpackStore::from_file("heartmula.bpk");
let result = model.load_from(&mut store)?;
assert!(result.missing.is_empty());
// audio_embeddings.weight is read separately, by name.
```

`tokenizer.json` and `gen_config.json` are the runtime files of the upstream release.

## Pack metadata

| key | value |
| --- | --- |
{meta_rows}
"""


def gitattributes(files: dict[str, tuple[int, str]]) -> str:
    lines = ["*.bpk filter=lfs diff=lfs merge=lfs -text"]
    lines += [
        f"{name} filter=lfs diff=lfs merge=lfs -text"
        for name, (size, _) in files.items()
        if size > LFS_THRESHOLD and not name.endswith(".bpk")
    ]
    return "\n".join(lines) + "\n"


def _link_or_copy(source: Path, dest: Path) -> None:
    try:
        os.link(source, dest)  # same filesystem: instant, no second 16 GB on disk
    except OSError:
        shutil.copyfile(source, dest)


def publish_layout(
    out_dir: str | Path,
    pack_path: str | Path,
    *,
    tokenizer: str | Path | None = None,
    gen_config: str | Path | None = None,
    force: bool = False,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Assembles OUT_DIR; it appears whole or not at all (built beside it, then renamed)."""
    out_dir, pack_path = Path(out_dir), Path(pack_path)
    runtime = {
        "tokenizer.json": Path(tokenizer) if tokenizer else pack_path.parent / "tokenizer.json",
        "gen_config.json": Path(gen_config) if gen_config else pack_path.parent / "gen_config.json",
    }
    for name, path in runtime.items():
        if not path.is_file():
            option = "--" + name.split(".")[0].replace("_", "-")
            raise SourceError.at(path, f"{name} not found (give it with {option})")
    with open_pack(pack_path) as pack, staged_folder(out_dir, overwrite=force) as partial:
        _link_or_copy(pack_path, partial / "heartmula.bpk")
        for name, path in runtime.items():
            shutil.copyfile(path, partial / name)
        files = {}
        for name in ("heartmula.bpk", "tokenizer.json", "gen_config.json"):
            path = partial / name
            files[name] = (path.stat().st_size, sha256_of(path, progress))
        (partial / ".gitattributes").write_text(gitattributes(files))
        (partial / "README.md").write_text(model_card(pack, files))
    return {"output": str(out_dir), "files": {k: {"bytes": s, "sha256": d} for k, (s, d) in files.items()}}
