"""The Hugging Face Hub at both ends: fetch the three upstream repositories a conversion needs, and
push a publish-layout folder as one commit. Everything goes through `huggingface_hub` (its cache,
resumable downloads, progress bars, HF_TOKEN / `hf auth login`, HF_HUB_OFFLINE,
HF_ENDPOINT); nothing here speaks HTTP itself but through huggingface_hub's own session and
headers (`stream`: shards read by range straight into packs).

Files are downloaded into the Hugging Face cache, never copied out of it: a CKPT_ROOT made by
`download` holds symbolic links into the cache's snapshot folders. The 22 GB are stored once,
shared with every other tool that reads the cache (heartlib, ComfyUI nodes, `hf download`), a second
run downloads nothing, and HF_HUB_OFFLINE=1 works from the cache alone. The links also record where
each model came from (`models--ORG--NAME/snapshots/COMMIT/`), which packs then carry as
`source_repo` and `source_revision` (see `checkpoint.hub_source`). Every file fetched is checked
against the digest the Hub gave for it before anything reads it (`integrity`): huggingface_hub
checks sizes only."""

from ._client import INSTALL_HINT, THREAD_NAME, hub_errors, human, progress_bars
from .download import Fetched, check, check_space, download, fetch, lay_out, plan
from .push import Upload, push_folder
from .repos import MODEL_PATTERNS, RUNTIME_ROLE, RepoSpec, default_specs, release_repo, repo_specs

__all__ = [
    "INSTALL_HINT",
    "MODEL_PATTERNS",
    "RUNTIME_ROLE",
    "THREAD_NAME",
    "Fetched",
    "RepoSpec",
    "Upload",
    "check",
    "check_space",
    "default_specs",
    "download",
    "fetch",
    "hub_errors",
    "human",
    "lay_out",
    "plan",
    "progress_bars",
    "push_folder",
    "release_repo",
    "repo_specs",
]
