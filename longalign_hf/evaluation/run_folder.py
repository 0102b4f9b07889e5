"""What the evaluation commands share: the output folder (default path, settings guard, resumable records), the exit
status, and their flags' number types.

`longalign eval longbench-chat` and `longalign eval needle` write answers to a JSON-lines file as they come, so a
rerun of the same command skips what is done. Two rules keep such a folder honest:

- `run.json` holds the settings that decide the answers. A rerun with other settings into a folder that already
  holds answers is refused (`check_settings`), naming each setting that differs, instead of mixing answers of two
  settings in one score. It is written (`write_settings`) only once every input has been checked, so a run that
  fails validation leaves nothing behind that would refuse the corrected rerun.
- A run that ends with cases left unscored (a judge that failed) exits with status 1 (`exit_status`) unless the
  user passed `--allow-incomplete`; the summary and `results.json` say how many.

The flag types of every `longalign` command live here too (`count`, `count_or_zero`, `at_least_zero`, `positive`,
`open_fraction`, `seed`, `DTYPES`), so a bad value is an argument error, the same in every command; and so do the
checks that name the flag of a path that cannot be written (`check_can_create`, `make_folder`) and
`quiet_datasets_log`, which keeps the `datasets` library's own error lines out of the way while a load error is
translated into ours.

Stdlib only: the `longalign` command imports the modules that use this before it knows which subcommand runs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

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
    make_folder(output_dir, "--output-dir")
    try:
        (output_dir / SETTINGS_FILE).write_text(
            json.dumps(settings, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
        )
    except OSError as error:
        raise UserInputError(
            f"--output-dir {output_dir}: cannot write {SETTINGS_FILE} there ({error.strerror or error}); pass a "
            "folder you can write to"
        ) from None


def check_can_create(path: str | os.PathLike, flag: str, kind: str = "folder", wanted: str | None = None) -> None:
    """Refuse a `flag` path (a `kind` of "folder" or "file" to create or add to) that cannot be written, before
    anything is. `wanted` says what to pass instead of an existing path of the other kind.

    Refused, with a `UserInputError` naming the flag and what to do: a path that exists as the other kind, a path
    below a file, and a path in a folder this user may not write to. Reads only; a file system that refuses a write
    for other reasons (e.g. `/proc`) is caught where the path is made (`make_folder`).

    >>> check_can_create(__file__, "--output-dir")
    Traceback (most recent call last):
    ...
    longalign_hf.errors.UserInputError: --output-dir ...run_folder.py is a file: pass a folder (it is created if ...
    """
    path = Path(path).expanduser()
    try:
        path.stat()
    except (FileNotFoundError, NotADirectoryError):  # to be made (or below a file: said below)
        pass
    except OSError as error:  # a name too long, a loop of links, no permission to look
        raise UserInputError(f"{flag} {path}: {error.strerror or error}; pass another path") from None
    if path.exists():
        if kind == "folder" and not path.is_dir():
            raise UserInputError(f"{flag} {path} is a file: pass {wanted or 'a folder (it is created if missing)'}")
        if kind == "file" and path.is_dir():
            raise UserInputError(f"{flag} {path} is a folder: pass {wanted or 'a file (it is created if missing)'}")
        if not os.access(path, os.W_OK | (os.X_OK if path.is_dir() else 0)):
            raise UserInputError(f"{flag} {path}: no permission to write it; pass a path you can write to")
        return
    existing = path.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UserInputError(
            f"{flag} {path}: {existing} is a file, so nothing can be created below it; pass another path"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserInputError(f"{flag} {path}: no permission to write in {existing}; pass a path you can write to")


def make_folder(path: str | os.PathLike, flag: str) -> Path:
    """Create the folder `path` (and its parents) for `flag`; an OS error is a `UserInputError` naming the flag."""
    path = Path(path)
    check_can_create(path, flag)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserInputError(
            f"{flag} {path}: cannot create this folder ({error.strerror or error}); pass a folder you can write to"
        ) from None
    return path


@contextlib.contextmanager
def quiet_datasets_log() -> Iterator[None]:
    """Hide the `datasets` library's own log lines (e.g. ERROR "Failed to read schema ...") while it loads data
    whose errors the caller translates into one line of its own; the level is restored afterwards."""
    library = logging.getLogger("datasets")
    level = library.level
    library.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        library.setLevel(level)


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


def looks_like_a_path(name: str) -> bool:
    """A Hub id is `name` or `org/name`; anything else (`./x`, `/x`, `~/x`, `a/b/c`) can only be a local path."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or (os.sep != "/" and os.sep in name)


def one_line(error: BaseException) -> str:
    """The first line of an error's message (a library's multi-line message inside ours), or its type's name."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def count(value: str) -> int:
    """An argparse type: a whole number of at least 1."""
    return _number(value, int, 1, "a whole number of at least 1")


def count_or_zero(value: str) -> int:
    """An argparse type: a whole number of at least 0."""
    return _number(value, int, 0, "a whole number of at least 0")


def at_least_zero(value: str) -> float:
    """An argparse type: a number of at least 0 (e.g. a temperature)."""
    return _number(value, float, 0, "a number of at least 0")


def seed(value: str) -> int:
    """An argparse type: a random seed, a whole number from 0 to 2**32 - 1 (what numpy and `set_seed` take)."""
    number = _number(value, int, 0, "a seed: a whole number from 0 to 4294967295")
    if number >= 2**32:
        raise argparse.ArgumentTypeError(f"{value!r} is not a seed: a whole number from 0 to 4294967295")
    return number


def positive(value: str) -> float:
    """An argparse type: a number above 0 (e.g. a timeout in seconds)."""
    return _number(value, float, 0, "a number above 0", strict=True)


def open_fraction(value: str) -> float:
    """An argparse type: a number between 0 and 1, both excluded (e.g. a share of the mix)."""
    number = _number(value, float, 0, "a number between 0 and 1 (both excluded)", strict=True)
    if number >= 1:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number between 0 and 1 (both excluded)")
    return number


def _number(value: str, kind: type, low: float, wanted: str, strict: bool = False) -> Any:
    try:
        number = kind(value)
    except ValueError:
        number = None
    # NaN compares false with everything, so it is refused with the rest; so is infinity.
    if number is None or not (number > low if strict else number >= low) or number == float("inf"):
        raise argparse.ArgumentTypeError(f"{value!r} is not {wanted}")
    return number
