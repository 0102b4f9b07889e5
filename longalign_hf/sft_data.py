"""Chat data for SFT: load by Hub id, file or folder, mix several sets, tokenize with assistant-only targets.

Bad-row policy (`bad_rows`): rows without a usable `messages` list (missing, wrong roles, no assistant turn) stop the
run with the source, the row number and the reason (`"error"`, the default), or are counted, dropped and reported
(`"skip"`). Samples longer than `max_length` are cut from the right (`overflow="truncate"`, the paper's choice) or
dropped (`overflow="drop"`); samples left without any target token are dropped. Every drop is counted and logged.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import datasets

from .chat import OVERFLOW_POLICIES, ConversationError, tokenize_conversation

logger = logging.getLogger(__name__)

_FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}
BAD_ROW_POLICIES = ("error", "skip")


def load_chat_dataset(
    path: str,
    name: str | None = None,
    split: str = "train",
    data_dir: str | None = None,
    data_files=None,
) -> datasets.Dataset:
    """Load a chat data set from a Hub id, a local jsonl/json/parquet file, or a local folder.

    A folder written by `Dataset.save_to_disk` is loaded with `load_from_disk`; any other folder (parquet/json shards,
    or a Hub-ready folder with a README `configs:` section) goes through `load_dataset`.
    """
    if os.path.isfile(path):
        extension = os.path.splitext(path)[1].lower()
        if extension not in _FILE_BUILDERS:
            raise ValueError(f"{path}: unsupported data file type {extension!r}; use .jsonl, .json or .parquet")
        return datasets.load_dataset(_FILE_BUILDERS[extension], data_files=path, split="train")
    if os.path.isdir(path):
        if os.path.exists(os.path.join(path, "state.json")) or os.path.exists(os.path.join(path, "dataset_dict.json")):
            loaded = datasets.load_from_disk(path)
            return loaded[split] if isinstance(loaded, datasets.DatasetDict) else loaded
        return datasets.load_dataset(path, name=name, split=split, data_dir=data_dir, data_files=data_files)
    if path.startswith((".", "/", "~")) or os.path.splitext(path)[1].lower() in _FILE_BUILDERS:
        raise FileNotFoundError(f"data set {path!r} does not exist: give an existing file, folder or a Hub id")
    return datasets.load_dataset(path, name=name, split=split, data_dir=data_dir, data_files=data_files)


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
            raise ValueError(f"give one positive fraction per data set, got {fractions} for {len(parts)} sets")
        shares = [f / sum(fractions) for f in fractions]
        total = min(len(part) / share for part, share in zip(parts, shares))
        parts = [part.select(range(min(len(part), round(share * total)))) for part, share in zip(parts, shares)]
    for index, part in enumerate(parts):
        missing = set(columns) - set(part.column_names)
        if missing:
            raise ValueError(f"data set {index} of the mixture lacks column(s) {', '.join(sorted(missing))}")
    parts = [part.select_columns(list(columns)) for part in parts]
    return datasets.concatenate_datasets(parts).shuffle(seed=seed)


@dataclass
class PreparationReport:
    """What `prepare_sft_dataset` kept, cut and dropped, and why."""

    source: str
    rows: int = 0
    kept: int = 0
    truncated: int = 0
    dropped: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)

    def summary(self) -> str:
        dropped = ", ".join(f"{count} {reason}" for reason, count in self.dropped.items()) or "none"
        return (
            f"{self.source}: {self.rows} rows -> {self.kept} samples kept, {self.truncated} truncated, dropped: "
            f"{dropped}" + (f" (e.g. {'; '.join(self.examples)})" if self.examples else "")
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
                "_drop": category, "_reason": f"row {index}: {reason}"}  # fmt: skip
    num_targets = sum(label != -100 for label in sample["labels"][1:])
    return {
        **sample,
        "length": len(sample["input_ids"]),
        "num_target_tokens": num_targets,
        "_drop": "" if num_targets else "no target token left",
        "_reason": "" if num_targets else f"row {index}: no assistant token within max_length={max_length}",
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
        raise ValueError(
            f"{source}: no `messages` column (columns: {', '.join(dataset.column_names)}). Chat data must hold "
            "`messages` lists of {role, content}; convert ShareGPT `conversations` with `longalign data build sft`."
        )
    tokenized = dataset.map(
        _tokenize_row,
        with_indices=True,
        fn_kwargs={"tokenizer": tokenizer, "max_length": max_length, "overflow": overflow},
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
            raise ValueError(
                f"{source}: {tokenized[index]['_reason']}. Fix the row, or pass `bad_rows='skip'` to drop and count "
                "such rows."
            )
    keep = [index for index, category in enumerate(drops) if not category]
    tokenized = tokenized.select(keep).remove_columns(["_drop", "_reason"])
    report.kept = len(tokenized)
    report.truncated = sum(tokenized["truncated"])
    (logger.warning if report.dropped else logger.info)(report.summary())
    if report.kept == 0:
        raise ValueError(f"{source}: no trainable sample left. {report.summary()}")
    return tokenized, report
