"""What the evaluation commands share: the output folder (default path, settings guard, resumable records), the exit
status and the options they share.

`longalign eval longbench-chat` and `longalign eval needle` write answers to a JSON-lines file as they come, so a
rerun of the same command skips what is done. Two rules keep such a folder honest:

- `run.json` holds the settings that decide the answers. A rerun with other settings into a folder that already
  holds answers is refused (`check_settings`), naming each setting that differs, instead of mixing answers of two
  settings in one score. It is written (`write_settings`) only once every input has been checked, so a run that
  fails validation leaves nothing behind that would refuse the corrected rerun.
- A run that ends with cases left unscored (a judge that failed) exits with status 1 (`exit_status`) unless the
  user passed `--allow-incomplete`; the summary and `results.json` say how many.

The flag types, path checks and quiet `datasets` loading every command shares are in `longalign_hf.command_args`.

Stdlib only: the `longalign` command imports the modules that use this before it knows which subcommand runs.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any, TextIO

from longalign_hf import command_args
from longalign_hf.errors import UserInputError

logger = logging.getLogger(__name__)

SETTINGS_FILE = "run.json"
# The `--dtype` choices of the evaluation commands: "auto" (the checkpoint's) or a floating-point torch dtype.
DTYPES = ("auto", "bfloat16", "float16", "float32", "float64")
ATTN_IMPLEMENTATION_HELP = (
    "attention backend: eager, sdpa, flash_attention_2, flash_attention_3, flex_attention, sdpa_packed, "
    "varlen_packed (any name transformers' AttentionInterface knows), or a Hub kernel org/repo[@revision][:function]; "
    "checked before the model loads (default: transformers')"
)
ALLOW_INCOMPLETE_HELP = "exit 0 even when some cases could not be scored (default: exit 1 and say how many)"


def default_output_dir(model: str, root: str | os.PathLike) -> Path:
    """`root/MODEL`, with the model id or path made a folder name (`org/name` -> `org--name`).

    >>> default_output_dir("THUDM/LongAlign-7B-64k", "outputs/needle").as_posix()
    'outputs/needle/THUDM--LongAlign-7B-64k'
    """
    return Path(root, re.sub(r"[^A-Za-z0-9._-]+", "--", model.strip("/")) or "model")


def check_settings(output_dir: Path, settings: dict[str, Any], has_answers: bool) -> None:
    """Refuse a rerun whose `settings` differ from those in `output_dir/run.json` when the folder holds answers.

    Reads only. Without saved answers nothing could be mixed, so other settings are accepted (and `write_settings`
    replaces the file). Answers with no `run.json` (a folder from before settings were recorded) are accepted with a
    warning.
    """
    path = output_dir / SETTINGS_FILE
    if not has_answers:
        return
    if not path.exists():
        logger.warning(
            "%s holds answers but no %s: assuming they were made with the settings of this run.", output_dir, path.name
        )
        return
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserInputError(
            f"{path} is not valid JSON ({error}): restore it, or delete {output_dir} to start over"
        ) from None
    if not isinstance(saved, dict):
        raise UserInputError(f"{path} does not hold a JSON object of settings: restore it, or delete {output_dir}")
    changed = sorted(key for key in settings.keys() | saved.keys() if saved.get(key) != settings.get(key))
    if changed:
        details = ", ".join(f"{key}: {saved.get(key)!r} -> {settings.get(key)!r}" for key in changed)
        raise UserInputError(
            f"{output_dir} holds answers made with other settings ({details}): rerun with the same settings, pass "
            "another --output-dir, or delete the folder to start over"
        )


def write_settings(output_dir: Path, settings: dict[str, Any]) -> None:
    """Create `output_dir` and record `settings` in its `run.json` (call after every input was checked).

    A folder that cannot be written raises `UserInputError` naming `--output-dir`.
    """
    command_args.make_folder(output_dir, "--output-dir")
    try:
        (output_dir / SETTINGS_FILE).write_text(
            json.dumps(settings, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
        )
    except OSError as error:
        raise UserInputError(
            f"--output-dir {output_dir}: cannot write {SETTINGS_FILE} there ({error.strerror or error}); pass a "
            "folder you can write to"
        ) from None


def open_for_append(path: Path) -> TextIO:
    """Open a JSON-lines file of answers to append to, first dropping a last line that a crash cut short.

    Readers skip such a line (`iter_jsonl(..., skip_cut_last_line=True)`) and its answer is made again; dropping it
    keeps the file valid JSON lines once new records follow.
    """
    if path.exists():
        data = path.read_bytes()
        if data and not data.endswith(b"\n"):
            logger.warning("Dropping the last line of %s, cut short by a crash: its answer is made again.", path)
            with path.open("r+b") as handle:
                handle.truncate(data.rfind(b"\n") + 1)
    return path.open("a", encoding="utf-8")


def exit_status(shortfall: str | None, allow_incomplete: bool) -> int:
    """The command's exit status: 1 when some cases could not be scored (`shortfall` says which, e.g. "2 of 12 cases
    have no score"), unless the user passed `--allow-incomplete`; 0 when `shortfall` is `None`."""
    if shortfall is None:
        return 0
    if allow_incomplete:
        logger.warning("%s; exit status 0 as --allow-incomplete asks.", shortfall)
        return 0
    logger.error(
        "%s (see the warnings above): rerun the same command to retry them (judge replies already received are "
        "cached), or pass --allow-incomplete to accept the results as they are.",
        shortfall,
    )
    return 1
