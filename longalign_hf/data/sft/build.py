"""`longalign data build sft`: long and short chat data -> one cleaned, mixed, Hub-ready SFT data set.

```
longalign data build sft --long THUDM/LongAlign-10k --short sharegpt.json --short-ratio 0.9 --out data/longalign-mix
```

Inputs (a Hub id, a .jsonl/.json/.parquet file or a folder, each read with `load_chat_dataset`) hold either a
`messages` column (`{role, content}` turns, the LongAlign-10k format and the one `longalign data generate` writes) or
a ShareGPT `conversations` column (`{from, value}` turns). Every conversation goes through the same steps:

1. ShareGPT turns are normalized: `from` human/user -> `user`, gpt/assistant/chatgpt/bard/bing -> `assistant`,
   system -> `system`, `value` -> `content`. An unknown role, a turn that is not an object, or a content that is not
   a string is a row error (`bad_rows="error"`, naming the source, row and turn) or drops the row and counts it
   (`bad_rows="skip"`). A missing or null content counts as empty.
2. As in the paper's code, zero-width characters (U+200B, U+200C, U+200D, U+FEFF) are removed from assistant turns.
3. As in the paper, empty assistant turns (nothing but whitespace left) are removed, together with the user turns
   they answered; user turns left at the end without an answer go too, so every kept question has its reply and
   user and assistant still alternate. A conversation left without any assistant turn is dropped and counted.

Then both sets are mixed with `mix_datasets`: `short_ratio=None` keeps all of both; a ratio `r` gives the largest
mix in which short samples are a share `r` and no set is repeated. Each set is shuffled with `seed` first, so the
rows a ratio keeps are a random sample rather than the file's first rows; the mix is shuffled with `seed` too.

The output folder holds `data/train-*.parquet` (columns `messages` and `source`: `"long"` or `"short"`), a
`length_histogram.png` of lengths in tokens of `tokenizer` (through its chat template, as the trainer counts them),
and a `README.md` dataset card whose YAML header lists the `configs:` and features, so `datasets.load_dataset(OUT)`
reads it offline and `recipes/sft.py --dataset_name OUT` trains on it. The folder is written aside and moved into
place at the end: a failed build leaves no partial folder (and an earlier build's folder as it was).

The steps live apart, in this folder: normalizing and cleaning in `conversations`, lengths and the histogram in
`length_stats`, what the build reports in `report`, the card in `card`, the command line in `command`.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from longalign_hf import command_args
from longalign_hf.data.hub import check_out_folder, push_hub_folder, staged_folder
from longalign_hf.data.sft.card import build_command, dataset_card
from longalign_hf.data.sft.conversations import clean_conversation, normalize_conversation
from longalign_hf.data.sft.length_stats import HISTOGRAM_FILE, length_stats, plot_lengths, token_lengths
from longalign_hf.data.sft.report import SOURCES, PartReport, SFTBuildReport
from longalign_hf.data.tokenizer import DEFAULT_TOKENIZER, load_tokenizer
from longalign_hf.errors import UserInputError, row_location

if TYPE_CHECKING:
    import datasets
    from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

_MAX_SHARD_BYTES = 500 * 2**20  # the shard size `Dataset.push_to_hub` uses


def _clean_row(row: dict[str, Any], index: int, column: str, source: str, bad_rows: str) -> dict[str, Any]:
    try:
        messages = normalize_conversation(row[column])
    except ValueError as exc:
        if bad_rows == "error":
            raise UserInputError(
                f"{row_location(source, index)}: {exc}; fix the row, or pass `--bad-rows skip` (`bad_rows='skip'`) to "
                "drop and count such rows"
            ) from None
        return {"messages": [], "_drop": "bad row", "_reason": f"row {index}: {exc}", "_zw": 0, "_empty": 0}
    messages, zero_width, empty_turns = clean_conversation(messages)
    has_reply = any(turn["role"] == "assistant" for turn in messages)
    return {
        "messages": messages,
        "_drop": "" if has_reply else "no reply",
        "_reason": "",
        "_zw": zero_width,
        "_empty": empty_turns,
    }


def _load_part(path: str) -> datasets.Dataset:
    """One input set, by `load_chat_dataset`; the `datasets` library's own error lines are kept out of its message."""
    from longalign_hf.data.sft_data import load_chat_dataset

    with command_args.quiet_datasets_log():
        return load_chat_dataset(path)


def _clean_part(dataset: datasets.Dataset, report: PartReport, bad_rows: str) -> datasets.Dataset:
    """Normalize and clean every row of one set into a `messages`-only set; fills `report`."""
    if "messages" in dataset.column_names:
        column = "messages"
    elif "conversations" in dataset.column_names:
        column = "conversations"
    else:
        raise UserInputError(
            f"--{report.name} {report.path}: no `messages` or `conversations` column (columns: "
            f"{', '.join(dataset.column_names)}); chat data needs `messages` ({{role, content}} turns) or ShareGPT "
            "`conversations` ({from, value} turns)"
        )
    cleaned = dataset.map(
        _clean_row,
        with_indices=True,
        fn_kwargs={"column": column, "source": report.path, "bad_rows": bad_rows},
        remove_columns=dataset.column_names,
        desc=f"Cleaning the {report.name} set",
    )
    drops = cleaned["_drop"]
    report.rows = len(cleaned)
    report.bad_rows = drops.count("bad row")
    report.no_reply = drops.count("no reply")
    report.zero_width = sum(cleaned["_zw"])
    report.empty_turns = sum(cleaned["_empty"])
    report.examples = [reason for reason in cleaned["_reason"] if reason][:3]
    cleaned = cleaned.select([index for index, drop in enumerate(drops) if not drop])
    report.kept = len(cleaned)
    if report.kept == 0:
        raise UserInputError(f"--{report.name} {report.path}: no usable conversation left; {report.summary()}")
    return cleaned.select_columns(["messages"])


def _write_shards(dataset: datasets.Dataset, out_dir: Path) -> None:
    data_dir = out_dir / "data"
    data_dir.mkdir()
    num_shards = max(1, math.ceil(dataset.data.nbytes / _MAX_SHARD_BYTES))
    for index in range(num_shards):
        shard = dataset.shard(num_shards, index, contiguous=True)
        shard.to_parquet(str(data_dir / f"train-{index:05d}-of-{num_shards:05d}.parquet"))


def build_sft_dataset(
    long: str,
    short: str,
    out_dir: str | os.PathLike,
    short_ratio: float | None = None,
    tokenizer: str | PreTrainedTokenizerBase = DEFAULT_TOKENIZER,
    seed: int = 42,
    bad_rows: str = "error",
    license: str = "other",
    push_to_hub: str | None = None,
    private: bool = False,
) -> SFTBuildReport:
    """Clean and mix long and short chat data into a Hub-ready folder (see the module docstring); optionally push it.

    Args:
        long: the long set (Hub id, file or folder), `messages` or ShareGPT `conversations`.
        short: the short chat set, in either format.
        out_dir: the folder to write (created; an earlier build's `data/`, histogram and card in it are replaced, other
            files kept). It changes only once everything is written: a failed build leaves it as it was.
        short_ratio: share of short samples in the mix, between 0 and 1 exclusive; `None` keeps all of both sets.
        tokenizer: tokenizer (or its Hub id or folder) to count lengths in, for the statistics and the histogram.
        seed: seed of the shuffles.
        bad_rows: `"error"` stops at the first malformed row with its source and row; `"skip"` drops and counts them.
        license: the `license` of the card (a Hub license id); the default `"other"` points readers to the sources.
        push_to_hub: also upload the folder to this Hub dataset id (`ORG/NAME`), with the user's token.
        private: create the Hub dataset as private.

    Returns:
        An `SFTBuildReport`; `report.length_table()` is the Markdown table of length statistics.
    """
    import datasets
    from datasets.info import DatasetInfosDict
    from huggingface_hub import DatasetCardData

    from longalign_hf.data.chat import BAD_ROW_POLICIES
    from longalign_hf.data.sft_data import mix_datasets

    if short_ratio is not None and not 0 < short_ratio < 1:
        raise UserInputError(
            f"--short-ratio must be between 0 and 1 (exclusive), got {short_ratio}; leave it out to keep all of both "
            "sets"
        )
    if bad_rows not in BAD_ROW_POLICIES:
        raise UserInputError(f"--bad-rows must be one of {', '.join(BAD_ROW_POLICIES)}, got {bad_rows!r}")
    check_out_folder(out_dir)  # before the sets are loaded and cleaned, which takes a while
    tokenizer_name = tokenizer if isinstance(tokenizer, str) else tokenizer.name_or_path or type(tokenizer).__name__
    tok = load_tokenizer(tokenizer) if isinstance(tokenizer, str) else tokenizer
    out_dir = Path(out_dir)

    reports = [PartReport(name=name, path=path) for name, path in zip(SOURCES, (long, short))]
    # Shuffled before the mix: `mix_datasets` takes each set's first rows, which should be a random sample.
    parts = [_clean_part(_load_part(r.path), r, bad_rows).shuffle(seed=seed) for r in reports]
    fractions = None if short_ratio is None else [1 - short_ratio, short_ratio]
    parts = [part.add_column("source", [r.name] * len(part)) for r, part in zip(reports, parts)]
    mixed = mix_datasets(parts, fractions, seed=seed, columns=("messages", "source")).flatten_indices()
    sources = mixed["source"]
    for report in reports:
        report.in_mix = sources.count(report.name)
        logger.info(report.summary())

    lengths: dict[str, list[int]] = {name: [] for name in SOURCES}
    for batch in mixed.iter(batch_size=256):
        for source, length in zip(batch["source"], token_lengths(batch["messages"], tok)):
            lengths[source].append(length)
    stats = {name: length_stats(lengths[name]) for name in SOURCES}
    stats["all"] = length_stats(lengths["long"] + lengths["short"])
    report = SFTBuildReport(out_dir, reports, stats, tokenizer_name, short_ratio)

    card_data = DatasetCardData(
        pretty_name="LongAlign SFT mix",
        license=license,
        task_categories=["text-generation"],
        tags=["long-context", "sft", "longalign"],
        source_datasets=[path for path in (long, short) if not os.path.exists(path)] or None,
    )
    card_data["configs"] = [{"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*"}]}]
    info = datasets.DatasetInfo(features=mixed.features)
    info.splits = datasets.SplitDict()
    info.splits.add(datasets.SplitInfo(name="train", num_examples=len(mixed), num_bytes=mixed.data.nbytes))
    DatasetInfosDict({"default": info}).to_dataset_card_data(card_data)
    command = build_command(long, short, out_dir, short_ratio, tokenizer_name, seed)
    # Written aside and moved in at the end: a failed build leaves OUT as it was (or absent), never half written.
    with staged_folder(out_dir, owned=("data", HISTOGRAM_FILE, "README.md")) as staging:
        _write_shards(mixed, staging)
        plot_lengths(lengths, tokenizer_name, staging / HISTOGRAM_FILE)
        dataset_card(card_data, report, command, push_to_hub).save(staging / "README.md")
    logger.info(
        "Wrote %d conversations to %s; load it with datasets.load_dataset(%r)", len(mixed), out_dir, str(out_dir)
    )
    if push_to_hub:
        report.url = push_hub_folder(
            out_dir, push_to_hub, "Build the SFT mix with `longalign data build sft`", private
        )
        logger.info("Pushed to %s; load it with datasets.load_dataset(%r)", report.url, push_to_hub)
    return report
