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
"""

from __future__ import annotations

import argparse
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from longalign_hf import command_args
from longalign_hf.data.chat import VALID_ROLES
from longalign_hf.data.hub import check_out_folder, push_hub_folder, staged_folder
from longalign_hf.errors import UserInputError, iter_jsonl

if TYPE_CHECKING:
    import datasets
    from huggingface_hub import DatasetCard, DatasetCardData
    from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

# Lengths are measured in this tokenizer's tokens unless `--tokenizer` names the one of the model you train: ungated,
# with a chat template, and good at Chinese, which the LongAlign data mixes in.
DEFAULT_TOKENIZER = "Qwen/Qwen2.5-7B-Instruct"
SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bard": "assistant",
    "bing": "assistant",
    "system": "system",
}
ZERO_WIDTH_CHARACTERS = "\u200b\u200c\u200d\ufeff"
SOURCES = ("long", "short")
LENGTH_THRESHOLDS = (8_000, 32_000)
HISTOGRAM_FILE = "length_histogram.png"

_ZERO_WIDTH_TABLE = str.maketrans("", "", ZERO_WIDTH_CHARACTERS)
_MAX_SHARD_BYTES = 500 * 2**20  # the shard size `Dataset.push_to_hub` uses


def load_tokenizer(name_or_path: str) -> PreTrainedTokenizerBase:
    """Load the tokenizer lengths are counted in; if it cannot be loaded, a `UserInputError` says what to pass."""
    from transformers import AutoTokenizer

    folder = os.path.expanduser(name_or_path)
    if name_or_path.startswith((".", "/", "~")) and not os.path.exists(folder):
        reason = "no such folder"
    elif os.path.isfile(folder):
        reason = "a file, not a folder"
    elif os.path.isdir(folder) and not any(
        os.path.isfile(os.path.join(folder, name)) for name in command_args.TOKENIZER_FILES
    ):
        reason = f"the folder holds no tokenizer file: none of {', '.join(command_args.TOKENIZER_FILES)}"
    else:
        try:
            return AutoTokenizer.from_pretrained(os.path.expanduser(name_or_path))
        except Exception as error:  # offline, unknown id, gated, or a folder without tokenizer files
            lines = str(error).strip().splitlines()
            reason = lines[0] if lines else type(error).__name__
    raise UserInputError(
        f"could not load the tokenizer {name_or_path!r} ({reason}); pass `--tokenizer PATH_OR_ID` with the tokenizer "
        "of the model you will train: a Hub id, or a local folder with its tokenizer files (e.g. written by "
        "`save_pretrained`), which works offline"
    )


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


def _normalize_turn(turn: Any, position: int) -> dict[str, str]:
    if not isinstance(turn, dict):
        raise ValueError(f"turn {position} is a {type(turn).__name__}, expected an object with role and content")
    if "from" in turn or "value" in turn:
        speaker = turn.get("from")
        role = SHAREGPT_ROLES.get(str(speaker).strip().lower())
        if role is None:
            raise ValueError(
                f"turn {position} has `from` {speaker!r}; expected one of {', '.join(SHAREGPT_ROLES)} (ShareGPT)"
            )
        content = turn.get("value")
    else:
        role, content = turn.get("role"), turn.get("content")
        if role not in VALID_ROLES:
            raise ValueError(f"turn {position} has `role` {role!r}; expected one of {', '.join(VALID_ROLES)}")
    if content is None:
        content = ""
    if not isinstance(content, str):
        raise ValueError(f"turn {position} has a {type(content).__name__} content, expected a string")
    return {"role": role, "content": content}


def normalize_conversation(turns: Any) -> list[dict[str, str]]:
    """Turn a `messages` list or a ShareGPT `conversations` list into `{role, content}` turns.

    Each turn may be `{role, content}` or ShareGPT's `{from, value}` (roles mapped with `SHAREGPT_ROLES`); raises a
    `ValueError` naming the turn for anything else.

    Example:
        >>> normalize_conversation([{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"}])
        [{'role': 'user', 'content': 'Hi'}, {'role': 'assistant', 'content': 'Hello!'}]
    """
    if not isinstance(turns, list):
        raise ValueError(f"expected a list of turns, got {type(turns).__name__} {turns!r:.80}")
    return [_normalize_turn(turn, position) for position, turn in enumerate(turns)]


def clean_conversation(messages: Sequence[dict[str, str]]) -> tuple[list[dict[str, str]], int, int]:
    """Remove zero-width characters from assistant turns, and empty assistant turns with the questions they answered.

    Returns the cleaned turns, the number of zero-width characters removed and the number of empty assistant turns
    removed. User turns directly before a removed reply, and at the end of the conversation, are removed too (see the
    module docstring); the result may have no assistant turn left, which the caller drops.
    """
    cleaned: list[dict[str, str]] = []
    removed_characters = removed_turns = 0
    for turn in messages:
        if turn["role"] != "assistant":
            cleaned.append(dict(turn))
            continue
        content = turn["content"].translate(_ZERO_WIDTH_TABLE)
        removed_characters += len(turn["content"]) - len(content)
        if content.strip():
            cleaned.append({"role": "assistant", "content": content})
            continue
        removed_turns += 1
        while cleaned and cleaned[-1]["role"] == "user":
            cleaned.pop()
    while cleaned and cleaned[-1]["role"] == "user":
        cleaned.pop()
    return cleaned, removed_characters, removed_turns


@dataclass
class PartReport:
    """What cleaning kept and removed from one input set, and how much of it went into the mix."""

    name: str
    path: str
    rows: int = 0
    kept: int = 0
    in_mix: int = 0
    bad_rows: int = 0
    no_reply: int = 0
    empty_turns: int = 0
    zero_width: int = 0
    examples: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"{self.name} set {self.path}: {self.rows} rows, {self.kept} kept, {self.in_mix} in the mix; dropped "
            f"{self.bad_rows} bad rows and {self.no_reply} conversations left without a reply; removed "
            f"{self.empty_turns} empty assistant turns and {self.zero_width} zero-width characters"
            + (f" (e.g. {'; '.join(self.examples)})" if self.examples else "")
        )


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


def token_lengths(conversations: Sequence[Sequence[dict[str, str]]], tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Tokens per conversation: through the chat template when the tokenizer has one (what the trainer counts),
    else of the turns' contents joined by blank lines."""
    if tokenizer.chat_template:
        texts = tokenizer.apply_chat_template([list(c) for c in conversations], tokenize=False)
    else:
        texts = ["\n\n".join(turn["content"] for turn in conversation) for conversation in conversations]
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]]


def length_stats(lengths: Sequence[int]) -> dict[str, float]:
    """Count, mean, median, p90 and max of `lengths`, and the share over each of `LENGTH_THRESHOLDS`."""
    import numpy as np

    values = np.asarray(lengths, dtype=np.float64)
    if values.size == 0:
        return {"count": 0}
    stats = {
        "count": int(values.size),
        "mean": float(values.mean()),
        "median": float(np.median(values)),
        "p90": float(np.percentile(values, 90)),
        "max": int(values.max()),
    }
    for threshold in LENGTH_THRESHOLDS:
        stats[f"over_{threshold}"] = float((values > threshold).mean())
    return stats


def format_length_stats(stats: dict[str, dict[str, float]]) -> str:
    """A Markdown table with one row per set of `length_stats`."""
    over = [f"> {threshold // 1000}k" for threshold in LENGTH_THRESHOLDS]
    lines = [
        "| set | samples | mean | median | p90 | max | " + " | ".join(over) + " |",
        "|---|---:|---:|---:|---:|---:|" + "---:|" * len(over),
    ]
    for name, row in stats.items():
        if not row["count"]:
            lines.append(f"| {name} | 0 |" + " - |" * (4 + len(over)))
            continue
        shares = " | ".join(f"{row[f'over_{threshold}']:.1%}" for threshold in LENGTH_THRESHOLDS)
        lines.append(
            f"| {name} | {row['count']} | {row['mean']:,.0f} | {row['median']:,.0f} | {row['p90']:,.0f} | "
            f"{row['max']:,} | {shares} |"
        )
    return "\n".join(lines)


def _plot_lengths(lengths: dict[str, list[int]], tokenizer_name: str, path: Path) -> None:
    import numpy as np
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 4.5))
    axes = figure.subplots()
    everything = [length for values in lengths.values() for length in values]
    bins = np.geomspace(max(1, min(everything)), max(everything) + 1, 40)
    names = [name for name in SOURCES if lengths[name]]
    axes.hist([lengths[name] for name in names], bins=bins, stacked=True, label=names)
    for threshold in LENGTH_THRESHOLDS:
        axes.axvline(threshold, color="grey", linestyle="--", linewidth=1)
    axes.set_xscale("log")
    axes.set_xlabel(f"tokens per sample ({tokenizer_name}, chat template included)")
    axes.set_ylabel("samples")
    axes.set_title("Sample lengths in the SFT mix (dashed: 8k and 32k)")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)


@dataclass
class SFTBuildReport:
    """What `build_sft_dataset` wrote: the folder, per-set cleaning reports, length statistics and the push URL."""

    out_dir: Path
    parts: list[PartReport]
    stats: dict[str, dict[str, float]]
    tokenizer: str
    short_ratio: float | None
    url: str | None = None

    def length_table(self) -> str:
        return format_length_stats(self.stats)


def _command(long: str, short: str, out_dir: Path, short_ratio: float | None, tokenizer: str, seed: int) -> str:
    ratio = f" --short-ratio {short_ratio}" if short_ratio is not None else ""
    return f"longalign data build sft --long {long} --short {short}{ratio} --out {out_dir} --tokenizer {tokenizer} --seed {seed}"


def _dataset_card(
    card_data: DatasetCardData, report: SFTBuildReport, command: str, repo_id: str | None
) -> DatasetCard:
    from huggingface_hub import DatasetCard

    location = repo_id or "path/to/this/folder"
    total = sum(part.in_mix for part in report.parts)
    ratio = "all of both sets" if report.short_ratio is None else f"short share {report.short_ratio:g}"
    mix_rows = "\n".join(
        f"| {part.name} | `{part.path}` | {part.rows} | {part.kept} | {part.in_mix} | {part.in_mix / total:.1%} |"
        for part in report.parts
    )
    cleaning_rows = "\n".join(
        f"| {part.name} | {part.bad_rows} | {part.no_reply} | {part.empty_turns} | {part.zero_width} |"
        for part in report.parts
    )
    body = f"""
# LongAlign SFT mix

Long-context instruction data mixed with short chat data for supervised fine-tuning with the LongAlign recipe
(Bai et al., 2024): {total} conversations in a `messages` column (`{{role, content}}` turns) and a `source` column
(`long` or `short`).

```python
from datasets import load_dataset

dataset = load_dataset("{location}", split="train")
```

Train on it with longalign-hf: `accelerate launch recipes/sft.py --config recipes/configs/<model>.yaml
--dataset_name {location}`.

## The mix ({ratio}, seed-shuffled)

| set | source | rows | kept after cleaning | in the mix | share |
|---|---|---:|---:|---:|---:|
{mix_rows}

## Cleaning

ShareGPT `conversations` were normalized to `messages`; zero-width characters (U+200B, U+200C, U+200D, U+FEFF) were
removed from assistant turns and empty assistant turns were removed with the questions they answered, as in the
LongAlign code; conversations left without a reply were dropped.

| set | bad rows dropped | conversations left without a reply | empty assistant turns removed | zero-width characters removed |
|---|---:|---:|---:|---:|
{cleaning_rows}

## Lengths

In tokens of `{report.tokenizer}`, through its chat template.

{report.length_table()}

![Histogram of sample lengths in tokens]({HISTOGRAM_FILE})

Made with longalign-hf:

```
{command}
```

## License

The rows keep the licenses and terms of their source data sets listed above; check them before use.
"""
    return DatasetCard(f"---\n{card_data.to_yaml()}\n---\n{body}")


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

    from longalign_hf.data.sft_data import BAD_ROW_POLICIES, mix_datasets

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
    command = _command(long, short, out_dir, short_ratio, tokenizer_name, seed)
    # Written aside and moved in at the end: a failed build leaves OUT as it was (or absent), never half written.
    with staged_folder(out_dir, owned=("data", HISTOGRAM_FILE, "README.md")) as staging:
        _write_shards(mixed, staging)
        _plot_lengths(lengths, tokenizer_name, staging / HISTOGRAM_FILE)
        _dataset_card(card_data, report, command, push_to_hub).save(staging / "README.md")
    logger.info(
        "Wrote %d conversations to %s; load it with datasets.load_dataset(%r)", len(mixed), out_dir, str(out_dir)
    )
    if push_to_hub:
        report.url = push_hub_folder(
            out_dir, push_to_hub, "Build the SFT mix with `longalign data build sft`", private
        )
        logger.info("Pushed to %s; load it with datasets.load_dataset(%r)", report.url, push_to_hub)
    return report


def _main(args: argparse.Namespace) -> int:
    report = build_sft_dataset(
        args.long,
        args.short,
        args.out,
        short_ratio=args.short_ratio,
        tokenizer=args.tokenizer,
        seed=args.seed,
        bad_rows=args.bad_rows,
        license=args.license,
        push_to_hub=args.push_to_hub,
        private=args.private,
    )
    print(f"Lengths in tokens of {report.tokenizer}:\n{report.length_table()}")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `longalign data build sft`."""
    from longalign_hf.data import build_subparsers  # here, not at the top: longalign_hf.data imports the builders

    parser = build_subparsers(subparsers).add_parser(
        "sft",
        help="SFT mix: long + short chat data -> cleaned, mixed, Hub-ready parquet folder",
        description=(
            "Read long data (LongAlign-10k `messages` format) and short chat data (`messages` or ShareGPT "
            "`conversations`), remove zero-width characters and empty replies from assistant turns, mix them, and "
            "write a folder of parquet shards with a dataset card and a length histogram that "
            "datasets.load_dataset(OUT) reads offline; optionally push it to the Hub."
        ),
    )
    parser.add_argument("--long", required=True, metavar="FILE_OR_ID", help="long data: Hub id, file or folder")
    parser.add_argument("--short", required=True, metavar="FILE_OR_ID", help="short chat data: Hub id, file or folder")
    parser.add_argument(
        "--short-ratio",
        type=command_args.open_fraction,
        metavar="R",
        help="share of short samples in the mix, between 0 and 1 (default: all rows of both sets)",
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="folder to write the Hub-ready dataset to")
    parser.add_argument(
        "--tokenizer",
        default=DEFAULT_TOKENIZER,
        metavar="PATH_OR_ID",
        help="tokenizer the length statistics are counted in: a Hub id, or a local folder (works offline) "
        f"(default: {DEFAULT_TOKENIZER}, from the Hub)",
    )
    parser.add_argument("--seed", type=command_args.seed, default=42, help="seed of the shuffles (default: 42)")
    parser.add_argument(
        "--bad-rows",
        choices=("error", "skip"),  # `sft_data.BAD_ROW_POLICIES`, which imports `datasets`: too slow for `--help`
        default="error",
        help="a malformed row stops the build (error, default) or is dropped and counted (skip)",
    )
    parser.add_argument("--license", default="other", help="license id for the dataset card (default: other)")
    parser.add_argument(
        "--push-to-hub",
        metavar="ORG/NAME",
        help="also upload the folder to this Hub dataset, with your token (HF_TOKEN or `hf auth login`)",
    )
    parser.add_argument("--private", action="store_true", help="create the Hub dataset as private")
    parser.set_defaults(func=_main)
