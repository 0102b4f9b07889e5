"""Lengths in tokens of a chat data set: per conversation, summary statistics, a Markdown table and a histogram.

numpy and matplotlib are imported by the functions that use them, so the commands that import this stay light.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

LENGTH_THRESHOLDS = (8_000, 32_000)
HISTOGRAM_FILE = "length_histogram.png"


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


def plot_lengths(lengths: dict[str, list[int]], tokenizer_name: str, path: Path) -> None:
    """Save a histogram of `lengths` (set name -> lengths; sets stacked in that order, empty ones left out) to `path`,
    on a log scale with a dashed line at each of `LENGTH_THRESHOLDS`."""
    import numpy as np
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 4.5))
    axes = figure.subplots()
    everything = [length for values in lengths.values() for length in values]
    bins = np.geomspace(max(1, min(everything)), max(everything) + 1, 40)
    names = [name for name, values in lengths.items() if values]
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
