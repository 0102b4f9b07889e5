"""Errors a user can act on, and the JSON-lines reader and row locator every loader shares, so bad data says where.

Stdlib only: the `longalign` command imports this before it knows which subcommand runs.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any


class UserInputError(ValueError):
    """Bad input from the user (a file, a row, a flag value): the message says which, what was wrong and what to do.

    The `longalign` command prints it as one line and exits with status 2 (a traceback only with `--debug`).
    """


def iter_jsonl(path: str | os.PathLike, *, skip_cut_last_line: bool = False) -> Iterator[tuple[int, Any]]:
    """Yield `(line_number, record)` for every non-blank line of a JSON-lines file.

    Raises `UserInputError` naming the file and line when a line is not JSON. With `skip_cut_last_line`, a bad *last*
    line that does not end in a newline (a write cut short by a crash) is skipped instead, so resumable outputs redo
    that one record.

    Example:
        >>> import tempfile
        >>> path = tempfile.mkdtemp() + "/rows.jsonl"
        >>> _ = open(path, "w").write('{"a": 1}\\n\\n{"a": 2\\n')
        >>> try:
        ...     list(iter_jsonl(path))
        ... except UserInputError as error:
        ...     print(str(error).removeprefix(path))
        , line 3: not valid JSON (Expecting ',' delimiter at column 8); fix or delete that line
    """
    with open(path, "rb") as handle:
        lines = handle.read().split(b"\n")
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            yield number, json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            if skip_cut_last_line and number == len(lines):
                return
            reason = f"{error.msg} at column {error.colno}" if isinstance(error, json.JSONDecodeError) else str(error)
            raise UserInputError(
                f"{path}, line {number}: not valid JSON ({reason}); fix or delete that line"
            ) from None


def row_location(source: str, index: int) -> str:
    """Where row `index` (from 0) of a data source is, for an error message: its line for a local .jsonl file.

    Example:
        >>> import tempfile
        >>> path = tempfile.mkdtemp() + "/rows.jsonl"
        >>> _ = open(path, "w").write('{"a": 1}\\n\\n{"a": 2}\\n')
        >>> row_location(path, 1).removeprefix(path)
        ', line 3'
        >>> row_location("org/name", 1)
        'org/name: row 1 (rows count from 0)'
    """
    if os.path.isfile(source) and source.lower().endswith(".jsonl"):
        for position, (number, _) in enumerate(iter_jsonl(source)):
            if position == index:
                return f"{source}, line {number}"
    return f"{source}: row {index} (rows count from 0)"


def check_data_file(path: str | os.PathLike) -> None:
    """Refuse an empty data file, or a `.jsonl` / `.json` file whose text is not JSON, naming the file and line.

    Call it before handing a local file to `datasets.load_dataset`, whose errors name neither.
    """
    path = os.fspath(path)
    if os.path.getsize(path) == 0 or not _has_text(path):
        raise UserInputError(f"{path} is empty: it holds no rows; give a file with at least one record")
    extension = os.path.splitext(path)[1].lower()
    if extension == ".jsonl":
        for _ in iter_jsonl(path):
            pass
    elif extension == ".json":
        with open(path, "rb") as handle:
            text = handle.read()
        try:
            json.loads(text)
        except json.JSONDecodeError as error:
            if text.lstrip().startswith(b"{") and error.msg == "Extra data":
                # JSON lines under a .json name, which `datasets` reads too: check it line by line.
                for _ in iter_jsonl(path):
                    pass
                return
            raise UserInputError(
                f"{path}, line {error.lineno}: not valid JSON ({error.msg} at column {error.colno}); fix the file "
                "(a .json file holds one JSON document; use .jsonl for one record per line)"
            ) from None


def _has_text(path: str) -> bool:
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 16):
            if chunk.strip():
                return True
    return False
