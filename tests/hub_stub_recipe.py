"""`recipes/sft.py` with the Hugging Face Hub's client replaced by a recorder, for the multi-machine tests.

Launched as `accelerate launch ... tests/hub_stub_recipe.py [recipe options]` with `HUB_STUB_LOG=FILE`: every process
runs the recipe unchanged, except that `HfApi.create_repo` and `HfApi.upload_folder` (the calls `--push_to_hub` makes)
touch no network and append one JSON line each to FILE: the call, the process's `RANK` and what it would upload.
"""

import json
import os
import runpy
import sys

from huggingface_hub import HfApi, RepoUrl

RECIPE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "recipes", "sft.py")


def _record(call: str, **fields) -> None:
    with open(os.environ["HUB_STUB_LOG"], "a", encoding="utf-8") as log:
        log.write(json.dumps({"call": call, "rank": int(os.environ.get("RANK", "0")), **fields}) + "\n")


def _create_repo(self, repo_id: str, **kwargs) -> RepoUrl:
    _record("create_repo", repo_id=repo_id)
    return RepoUrl(f"https://huggingface.co/{repo_id if '/' in repo_id else 'stub-user/' + repo_id}")


def _upload_folder(self, *, repo_id: str, folder_path, **kwargs) -> None:
    _record(
        "upload_folder", repo_id=repo_id, folder=os.path.abspath(folder_path), files=sorted(os.listdir(folder_path))
    )


if __name__ == "__main__":
    HfApi.create_repo = _create_repo
    HfApi.upload_folder = _upload_folder
    sys.argv = [RECIPE, *sys.argv[1:]]
    runpy.run_path(RECIPE, run_name="__main__")
