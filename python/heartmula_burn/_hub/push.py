"""Pushing a publish-layout folder to the Hub as one commit."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ._client import _hf, _interruptible, hub_errors, progress_bars

if TYPE_CHECKING:
    from huggingface_hub import HfApi


@dataclass(frozen=True)
class Upload:
    """What a push sends (or sent): the files with their sizes, and the commit it made."""

    repo: str
    revision: str
    files: dict[str, int]
    commit_url: str | None = None
    commit: str | None = None


def push_folder(
    folder: Path,
    repo_id: str,
    *,
    message: str,
    description: str = "",
    private: bool = False,
    revision: str | None = None,
    dry_run: bool = False,
    quiet: bool = False,
) -> Upload:
    """Uploads `folder` to `repo_id` in one commit (creating the repository, and the branch
    `revision`, when missing). The Hub routes each file through LFS or not by the folder's
    .gitattributes; a commit is all or nothing, so an upload that fails part-way leaves the
    repository as it was."""
    files = {p.relative_to(folder).as_posix(): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file()}
    branch = revision or "main"
    if dry_run:
        return Upload(repo_id, branch, files)
    client: HfApi = _hf().HfApi()
    label = f"{repo_id}@{branch}"
    with progress_bars(not quiet), hub_errors(label, repo_id):
        client.create_repo(repo_id, private=private, exist_ok=True)
        if revision is not None:
            client.create_branch(repo_id, branch=revision, exist_ok=True)
        info = _interruptible(
            lambda: client.upload_folder(
                repo_id=repo_id,
                folder_path=folder,
                commit_message=message,
                commit_description=description,
                revision=revision,
            )
        )
    return Upload(repo_id, branch, files, info.commit_url, info.oid)
