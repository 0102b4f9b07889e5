"""Chat data for SFT: load by Hub id, file or folder, mix several sets, tokenize with assistant-only targets.

Bad-row policy (`bad_rows`): rows without a usable `messages` list (missing, wrong roles, no assistant turn) stop the
run with the source, the row number and the reason (`"error"`, the default), or are counted, dropped and reported
(`"skip"`). Samples longer than `max_length` are cut from the right (`overflow="truncate"`, the paper's choice) or
dropped (`overflow="drop"`). Empty assistant turns (nothing but whitespace) are masked: they have no target, as in
the paper's code. Samples left without any target token are dropped. Every drop and mask is counted and logged.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import datasets
from datasets.fingerprint import Hasher

from longalign_hf.data import chat
from longalign_hf.data.chat import BAD_ROW_POLICIES, OVERFLOW_POLICIES, ConversationError, tokenize_conversation
from longalign_hf.errors import UserInputError, check_data_file

logger = logging.getLogger(__name__)

_FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}
_FORMAT_HINTS = {
    "json": "a .jsonl file holds one JSON object per line and a .json file a list of objects, each with a `messages` "
    "list; fix the file",
    "parquet": "write it again (e.g. with `Dataset.to_parquet`) or give the data as .jsonl",
}
# `datasets` keys its map cache on `_tokenize_row`'s name, not its code: with this digest of the code that makes the
# labels, a new version of it tokenizes again instead of reusing labels cached by an older one.
_CODE_DIGEST = hashlib.sha256(Path(chat.__file__).read_bytes() + Path(__file__).read_bytes()).hexdigest()


def load_chat_dataset(
    path: str,
    name: str | None = None,
    split: str = "train",
    data_dir: str | None = None,
    data_files=None,
) -> datasets.Dataset:
    """Load a chat data set from a Hub id, a local jsonl/json/parquet file, or a local folder.

    A folder written by `Dataset.save_to_disk` is loaded with `load_from_disk`; any other folder (parquet/json shards,
    or a Hub-ready folder with a README `configs:` section) goes through `load_dataset`. A file or folder that cannot
    be read raises `UserInputError` naming it (and the line, for JSON) and what to do; so does a Hub id that cannot
    be loaded, with the original error as its `__cause__`.
    """
    local = os.path.expanduser(path)
    if os.path.isfile(local):
        return _load_file(local)
    if os.path.isdir(local):
        return _load_folder(local, name, split, data_dir, data_files)
    if path.startswith((".", "/", "~")) or os.path.splitext(path)[1].lower() in _FILE_BUILDERS:
        raise UserInputError(f"data set {path!r} does not exist: give an existing file, folder or a Hub id")
    try:
        return datasets.load_dataset(path, name=name, split=split, data_dir=data_dir, data_files=data_files)
    except Exception as error:
        raise UserInputError(
            f"could not load data set {path!r} from the Hugging Face Hub ({_describe(error)}), and no local file or "
            "folder has that name. Check the id, `name` and `split`, your network connection (and login, for a gated "
            "set), or give a local .jsonl/.json/.parquet file or folder"
        ) from error


def _load_file(path: str) -> datasets.Dataset:
    extension = os.path.splitext(path)[1].lower()
    if extension not in _FILE_BUILDERS:
        raise UserInputError(f"{path}: unsupported data file type {extension!r}; use .jsonl, .json or .parquet")
    check_data_file(path)
    builder = _FILE_BUILDERS[extension]
    try:
        return datasets.load_dataset(builder, data_files=path, split="train")
    except Exception as error:
        reason = _describe(error)
        if "corresponds to no data" in reason:  # `[]` or `{}`: valid JSON without a row
            raise UserInputError(f"{path} holds no rows; give a file with at least one record") from error
        raise UserInputError(
            f"{path}: could not be read as {builder.upper()} data ({reason}); {_FORMAT_HINTS[builder]}"
        ) from error


def _load_folder(path: str, name, split, data_dir, data_files) -> datasets.Dataset:
    if os.path.exists(os.path.join(path, "state.json")) or os.path.exists(os.path.join(path, "dataset_dict.json")):
        try:
            loaded = datasets.load_from_disk(path)
        except Exception as error:
            raise UserInputError(
                f"{path}: not a readable `save_to_disk` folder ({_describe(error)}); save it again with "
                "`Dataset.save_to_disk`, or give a folder of .jsonl/.json/.parquet files"
            ) from error
        if not isinstance(loaded, datasets.DatasetDict):
            return loaded
        if split not in loaded:
            raise UserInputError(f"{path} has no split {split!r}; choose one of {', '.join(loaded)}")
        return loaded[split]
    try:
        return datasets.load_dataset(path, name=name, split=split, data_dir=data_dir, data_files=data_files)
    except Exception as error:
        if data_files is None:
            _check_json_files(os.path.join(path, data_dir or ""))
        raise UserInputError(
            f"{path}: could not load this folder as a data set ({_describe(error)}); give a folder of "
            ".jsonl/.json/.parquet data files (or one written by `save_to_disk`), and check `split`, `name` and "
            "`data_dir`"
        ) from error


def _check_json_files(folder: str) -> None:
    """Name the file and line when a JSON shard of a folder that `datasets` failed on is not JSON."""
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith((".", "__")))
        for file in sorted(files):
            file_path = os.path.join(root, file)
            is_json = os.path.splitext(file)[1].lower() in (".json", ".jsonl")
            if is_json and not file.startswith(".") and os.path.getsize(file_path) > 0:
                check_data_file(file_path)


def _describe(error: BaseException) -> str:
    """The innermost cause of `error`, on one line: `datasets` wraps the useful part (e.g. a JSON parse error)."""
    while error.__cause__ is not None:
        error = error.__cause__
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def mix_datasets(
    parts: list[datasets.Dataset],
    fractions: list[float] | None = None,
    seed: int = 0,
    columns: Sequence[str] = ("messages",),
) -> datasets.Dataset:
    """Concatenate chat data sets (keeping `columns`), optionally in the given shares, and shuffle with `seed`.

    `fractions` are normalized to sum to one; the mixture is the largest one in which no set is oversampled (as
    TRL's `DatasetMixtureConfig`): each set contributes its first `round(share * total)` rows.
    """
    if fractions is not None:
        if len(fractions) != len(parts) or any(f is None or f <= 0 for f in fractions):
            raise UserInputError(f"give one positive fraction per data set, got {fractions} for {len(parts)} sets")
        shares = [f / sum(fractions) for f in fractions]
        total = min(len(part) / share for part, share in zip(parts, shares))
        parts = [part.select(range(min(len(part), round(share * total)))) for part, share in zip(parts, shares)]
    for index, part in enumerate(parts):
        missing = set(columns) - set(part.column_names)
        if missing:
            raise UserInputError(f"data set {index} of the mixture lacks column(s) {', '.join(sorted(missing))}")
    parts = [part.select_columns(list(columns)) for part in parts]
    return datasets.concatenate_datasets(parts).shuffle(seed=seed)


def check_conversations(dataset: datasets.Dataset, source: str, batch_size: int = 1000) -> None:
    """Refuse the first row without a usable `messages` conversation, naming `source` and the row.

    The same check `prepare_sft_dataset` makes while tokenizing, run on one source before it is mixed with others,
    while its row numbers still point into its file.
    """
    if "messages" not in dataset.column_names:
        raise UserInputError(
            f"{source}: no `messages` column (columns: {', '.join(dataset.column_names)}). Chat data must hold "
            "`messages` lists of {role, content}; convert ShareGPT `conversations` with `longalign data build sft`."
        )
    for start in range(0, len(dataset), batch_size):
        for offset, messages in enumerate(dataset[start : start + batch_size]["messages"]):
            try:
                chat.validate_messages(messages)
            except ConversationError as error:
                raise UserInputError(
                    f"{source}, row {start + offset} (rows count from 0): {error}. Fix the row, or pass "
                    "`bad_rows='skip'` (`--bad_rows skip`) to drop and count such rows."
                ) from None


@dataclass
class PreparationReport:
    """What `prepare_sft_dataset` kept, cut and dropped, and why."""

    source: str
    rows: int = 0
    kept: int = 0
    truncated: int = 0
    empty_turns: int = 0
    dropped: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)

    def summary(self) -> str:
        dropped = ", ".join(f"{count} {reason}" for reason, count in self.dropped.items()) or "none"
        return (
            f"{self.source}: {self.rows} rows -> {self.kept} samples kept, {self.truncated} truncated, "
            f"{self.empty_turns} empty assistant turns masked, dropped: {dropped}"
            + (f" (e.g. {'; '.join(self.examples)})" if self.examples else "")
        )


def _tokenize_row(row, index, tokenizer, max_length, overflow):
    try:
        if "messages" not in row or row["messages"] is None:
            raise ConversationError("no `messages`")
        sample = tokenize_conversation(row["messages"], tokenizer, max_length=max_length, overflow=overflow)
    except ConversationError as error:
        reason = str(error)
        category = "over max_length" if "over max_length" in reason else "bad row"
        return {"input_ids": [], "labels": [], "truncated": 0, "length": 0, "num_target_tokens": 0,
                "_drop": category, "_reason": f"row {index}: {reason}", "_empty": 0}  # fmt: skip
    empty_turns = sample.pop("empty_turns")
    num_targets = sum(label != -100 for label in sample["labels"][1:])
    if num_targets:
        reason = ""
    elif empty_turns == sum(turn["role"] == "assistant" for turn in row["messages"]):
        reason = f"row {index}: every assistant turn is empty"
    else:
        reason = f"row {index}: no assistant token within max_length={max_length}"
    return {
        **sample,
        "length": len(sample["input_ids"]),
        "num_target_tokens": num_targets,
        "_drop": "" if num_targets else "no target token left",
        "_reason": reason,
        "_empty": empty_turns,
    }


def prepare_sft_dataset(
    dataset: datasets.Dataset,
    tokenizer,
    max_length: int | None,
    overflow: str = "truncate",
    bad_rows: str = "error",
    num_proc: int | None = None,
    source: str = "dataset",
) -> tuple[datasets.Dataset, PreparationReport]:
    """Tokenize a `messages` data set into `input_ids`, `labels`, `length` and `num_target_tokens` columns.

    Returns the tokenized set and a `PreparationReport` (also logged). See the module docstring for the policies.
    """
    if overflow not in OVERFLOW_POLICIES:
        raise ValueError(f"overflow must be one of {OVERFLOW_POLICIES}, got {overflow!r}")
    if bad_rows not in BAD_ROW_POLICIES:
        raise ValueError(f"bad_rows must be one of {BAD_ROW_POLICIES}, got {bad_rows!r}")
    if "messages" not in dataset.column_names:
        raise UserInputError(
            f"{source}: no `messages` column (columns: {', '.join(dataset.column_names)}). Chat data must hold "
            "`messages` lists of {role, content}; convert ShareGPT `conversations` with `longalign data build sft`."
        )
    tokenized = dataset.map(
        _tokenize_row,
        with_indices=True,
        fn_kwargs={"tokenizer": tokenizer, "max_length": max_length, "overflow": overflow},
        new_fingerprint=Hasher.hash([dataset._fingerprint, tokenizer, max_length, overflow, _CODE_DIGEST]),
        remove_columns=dataset.column_names,
        num_proc=num_proc,
        desc=f"Tokenizing {source}",
    )
    report = PreparationReport(source=source, rows=len(tokenized))
    drops = tokenized["_drop"]
    for index, category in enumerate(drops):
        if not category:
            continue
        report.dropped[category] += 1
        if len(report.examples) < 3:
            report.examples.append(tokenized[index]["_reason"])
        if category == "bad row" and bad_rows == "error":
            raise UserInputError(
                f"{source}: {tokenized[index]['_reason']}. Fix the row (rows count from 0), or pass `bad_rows='skip'` "
                "to drop and count such rows."
            )
    keep = [index for index, category in enumerate(drops) if not category]
    report.empty_turns = sum(tokenized["_empty"])
    tokenized = tokenized.select(keep).remove_columns(["_drop", "_reason", "_empty"])
    report.kept = len(tokenized)
    report.truncated = sum(tokenized["truncated"])
    (logger.warning if report.dropped else logger.info)(report.summary())
    if report.kept == 0:
        raise UserInputError(f"{source}: no trainable sample left. {report.summary()}")
    return tokenized, report
