"""What every `longalign` command shares: its flags' number types (so a bad value is an argument error, the same in
every command), the checks that name the flag of a path that cannot be written, and quiet loading of `datasets`
while its errors are translated into one line of ours.

Stdlib only: the `longalign` command imports the modules that use this before it knows which subcommand runs.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from longalign_hf.errors import UserInputError

# Files of which a tokenizer folder holds at least one (`save_pretrained` writes tokenizer_config.json and more).
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "tokenizer.model", "spiece.model", "vocab.json", "vocab.txt",
)  # fmt: skip


def check_can_create(path: str | os.PathLike, flag: str, kind: str = "folder", wanted: str | None = None) -> None:
    """Refuse a `flag` path (a `kind` of "folder" or "file" to create or add to) that cannot be written, before
    anything is. `wanted` says what to pass instead of an existing path of the other kind.

    Refused, with a `UserInputError` naming the flag and what to do: a path that exists as the other kind, a path
    below a file, and a path in a folder this user may not write to. Reads only; a file system that refuses a write
    for other reasons (e.g. `/proc`) is caught where the path is made (`make_folder`).

    >>> check_can_create(__file__, "--output-dir")
    Traceback (most recent call last):
    ...
    longalign_hf.errors.UserInputError: --output-dir ...command_args.py is a file: pass a folder (it is created if ...
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
