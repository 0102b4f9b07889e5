"""The long documents Self-Instruct generates from: a folder of text files, a .jsonl/.json/.parquet file, or a Hub set.

`longalign data generate --docs SOURCE` reads them with `load_documents`, one `(document id, text)` at a time.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from longalign_hf import command_args
from longalign_hf.errors import UserInputError, row_location


def load_documents(
    source: str,
    text_column: str = "text",
    id_column: str | None = None,
    name: str | None = None,
    split: str = "train",
    glob: str = "**/*.txt",
) -> Iterator[tuple[str, str]]:
    """Yield `(document id, text)` from a folder of text files, a .jsonl/.json/.parquet file, or a Hub data set id.

    Folder: the files matching `glob`, in sorted order, id = their path under the folder. Data set: rows in order,
    id = `id_column` (as a string) or `row-N`. A source that cannot be read, holds no documents, or has a row whose
    text is not a string (a number, a null) raises `UserInputError` naming the file (and line) and what to do.
    """
    folder = Path(source).expanduser()
    if folder.is_dir():
        paths = sorted(path for path in folder.glob(glob) if path.is_file())
        if not paths:
            raise UserInputError(
                f"--docs {source}: no file matches --glob {glob!r}; pass another --glob (e.g. '**/*.md'), or a "
                ".jsonl/.json/.parquet file or a Hub data set id with a text column"
            )
        for path in paths:
            try:
                text = path.read_text(encoding="utf-8")
            except UnicodeDecodeError as exc:
                raise UserInputError(
                    f"{path}: not UTF-8 text ({exc}); convert it to UTF-8, remove it, or narrow --glob"
                ) from None
            yield path.relative_to(folder).as_posix(), text
        return
    if folder.is_file() and folder.suffix.lower() not in (".jsonl", ".json", ".parquet"):
        raise UserInputError(
            f"--docs {source}: a {folder.suffix or 'extensionless'} file is not a document source; put the documents "
            "in a folder (one text file each) and pass the folder, or pass a .jsonl/.json/.parquet file with a text "
            "column"
        )
    from longalign_hf.data.sft_data import load_chat_dataset

    with command_args.quiet_datasets_log():  # its own ERROR lines would come before our one-line reason
        dataset = load_chat_dataset(source, name=name, split=split)
    for column, option in ((text_column, "--text-column"), (id_column, "--id-column")):
        if column is not None and column not in dataset.column_names:
            raise UserInputError(
                f"--docs {source}: no column {column!r} (columns: {', '.join(dataset.column_names)}); pass {option}"
            )
    if len(dataset) == 0:
        raise UserInputError(f"--docs {source}: no rows, so no documents; give a source with at least one document")
    columns = [text_column] + ([id_column] if id_column else [])
    for index, row in enumerate(dataset.select_columns(columns)):
        text = row[text_column]
        if text is None:
            raise UserInputError(
                f"{row_location(source, index)}: {text_column!r} is null, not a document; remove the row or give it "
                "its text (or pass the column that holds the documents as --text-column)"
            )
        if not isinstance(text, str):
            raise UserInputError(
                f"{row_location(source, index)}: {text_column!r} is not text but {type(text).__name__} {text!r:.40}; "
                "pass the column that holds the documents as --text-column"
            )
        yield (str(row[id_column]) if id_column else f"row-{index}"), text
