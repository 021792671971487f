"""The repositories a conversion fetches, as the presets name them, and the options that replace them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from .._presets import PRESETS


@dataclass(frozen=True)
class RepoSpec:
    """One repository a conversion needs: where its files go in CKPT_ROOT (`folder`, or the root
    itself for the runtime files), which files to fetch and which must be there."""

    role: str
    repo: str
    revision: str | None
    folder: str | None
    patterns: tuple[str, ...]
    required: tuple[str, ...]

    @property
    def label(self) -> str:
        return f"{self.repo}@{self.revision or 'main'}"


MODEL_PATTERNS = ("config.json", "*.safetensors", "*.safetensors.index.json")


MODEL_REQUIRED = ("config.json", "*.safetensors")


# HeartMuLa's runtime files' role (--gen-repo, --gen-revision), as its preset declares it.
RUNTIME_ROLE = next(p.runtime_role for p in PRESETS if p.runtime_role is not None)


def default_specs() -> list[RepoSpec]:
    """The repositories a conversion fetches, as the presets name them: each model's default
    release, laid out as upstream's README does (every release of a model lands in the model's
    first folder name, where heartlib looks for it), then the runtime files' repository."""
    specs = [
        RepoSpec(p.hub_role, p.releases[0].repo, None, p.folder_names[0], MODEL_PATTERNS, MODEL_REQUIRED)
        for p in PRESETS
    ]
    specs += [
        RepoSpec(
            p.runtime_role or f"{p.hub_role}-runtime", p.runtime_repo, None, None, p.runtime_files, p.runtime_files
        )
        for p in PRESETS
        if p.runtime_repo is not None
    ]
    return specs


def repo_specs(
    repos: Mapping[str, str | None] | None = None,
    revisions: Mapping[str, str | None] | None = None,
    releases: Mapping[str, str | None] | None = None,
) -> list[RepoSpec]:
    """`default_specs` with some roles (`lm`, `codec`, `gen`) fetched from another repository:
    any (`repos`), or a model's release by name (`releases`, any case), at a revision
    (`revisions`). A ValueError for an unknown release or a role given both."""
    chosen = {role: repo for role, repo in (repos or {}).items() if repo}
    for role, name in (releases or {}).items():
        if not name:
            continue
        if role in chosen:
            raise ValueError(f"{role}: give a repository or a release, not both")
        chosen[role] = release_repo(role, name)
    revisions = revisions or {}
    return [
        replace(s, repo=chosen.get(s.role) or s.repo, revision=revisions.get(s.role) or s.revision)
        for s in default_specs()
    ]


def release_repo(role: str, name: str) -> str:
    """The repository of the release `name` (any case) of the model whose Hub role is `role`."""
    preset = next((p for p in PRESETS if p.hub_role == role), None)
    if preset is None:
        raise ValueError(f"no model has releases under {role!r} (roles: {', '.join(p.hub_role for p in PRESETS)})")
    found = next((r.repo for r in preset.releases if r.name.lower() == name.lower()), None)
    if found is None:
        raise ValueError(f"{name!r} is no release of {preset.title} ({', '.join(r.name for r in preset.releases)})")
    return found
