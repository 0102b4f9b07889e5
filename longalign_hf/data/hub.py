"""Writing a Hub-ready data set folder all at once, and publishing it."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from longalign_hf.command_args import check_can_create
from longalign_hf.errors import UserInputError


@contextmanager
def staged_folder(out_dir: str | Path, owned: Sequence[str]) -> Iterator[Path]:
    """Yield an empty folder next to `out_dir` to write into; on success, its entries move into `out_dir`.

    A run that fails leaves `out_dir` as it was, or absent, never half written. On success the entries named in
    `owned` (what this writer makes, e.g. `data` and `README.md`) are replaced by the staged ones, or removed when the
    run did not write them (a config an earlier build had); anything else in `out_dir` is kept. A folder that cannot
    be written raises `UserInputError` naming `--out` (call `check_out_folder` first to refuse it before any work).
    """
    out_dir = Path(out_dir)
    check_out_folder(out_dir)
    created = [folder for folder in (out_dir.parent, *out_dir.parent.parents) if not folder.exists()]
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".partial", dir=out_dir.parent))
    except OSError as error:
        _remove_empty(created)
        raise UserInputError(
            f"--out {out_dir}: cannot write there ({error.strerror or type(error).__name__}); pass a folder you can "
            "write to"
        ) from None
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        _remove_empty(created)
        raise
    if not out_dir.exists():
        staging.rename(out_dir)
        return
    for name in owned:
        target = out_dir / name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()
        if (staging / name).exists():
            (staging / name).rename(target)
    shutil.rmtree(staging)


def check_out_folder(out_dir: str | Path) -> None:
    """Refuse an `--out` folder that cannot be written (a file, below a file, no permission), before any work."""
    check_can_create(out_dir, "--out", wanted="a folder to write the data set to")


def _remove_empty(folders: Sequence[Path]) -> None:
    """Remove the folders a failed run made (deepest first), each only while empty."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            break


def push_hub_folder(out_dir: str | Path, repo_id: str, commit_message: str, private: bool = False) -> str:
    """Upload a Hub-ready folder to the Hub dataset `repo_id` (created if missing); returns the commit URL.

    The token is the user's (`HF_TOKEN` or `hf auth login`), found by `huggingface_hub`; it is never printed or
    written here. A failed upload raises `UserInputError` saying what to check; the folder stays complete.
    """
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        commit = api.upload_folder(
            folder_path=str(out_dir), repo_id=repo_id, repo_type="dataset", commit_message=commit_message
        )
    except Exception as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserInputError(
            f"--push-to-hub {repo_id}: the upload failed ({reason}); {out_dir} is written and complete. Check the id "
            "(ORG/NAME), your login (`hf auth login` or HF_TOKEN, with write access) and your network, then run the "
            "command again"
        ) from error
    return commit.commit_url
