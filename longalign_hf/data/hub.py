"""Publishing a Hub-ready data set folder."""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import HfApi


def push_hub_folder(out_dir: str | Path, repo_id: str, commit_message: str, private: bool = False) -> str:
    """Upload a Hub-ready folder to the Hub dataset `repo_id` (created if missing); returns the commit URL.

    The token is the user's (`HF_TOKEN` or `hf auth login`), found by `huggingface_hub`; it is never printed or
    written here.
    """
    api = HfApi()
    api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    commit = api.upload_folder(
        folder_path=str(out_dir), repo_id=repo_id, repo_type="dataset", commit_message=commit_message
    )
    return commit.commit_url
