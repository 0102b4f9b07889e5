"""The dataset card (README.md) of the SFT mix that `longalign data build sft` writes: the mix, cleaning, lengths."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from longalign_hf.data.sft.length_stats import HISTOGRAM_FILE

if TYPE_CHECKING:
    from huggingface_hub import DatasetCard, DatasetCardData

    from longalign_hf.data.sft.report import SFTBuildReport


def build_command(long: str, short: str, out_dir: Path, short_ratio: float | None, tokenizer: str, seed: int) -> str:
    """The `longalign data build sft` command line that makes this mix, for the card."""
    ratio = f" --short-ratio {short_ratio}" if short_ratio is not None else ""
    return f"longalign data build sft --long {long} --short {short}{ratio} --out {out_dir} --tokenizer {tokenizer} --seed {seed}"


def dataset_card(card_data: DatasetCardData, report: SFTBuildReport, command: str, repo_id: str | None) -> DatasetCard:
    """The card: `card_data` as its YAML header, then the mix, the cleaning counts and the length statistics of
    `report`, and `command`; its loading examples name `repo_id`, or a placeholder path."""
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
