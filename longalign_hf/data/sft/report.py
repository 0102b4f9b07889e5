"""What `longalign data build sft` reports: per input set, what cleaning kept and removed; for the build, the folder,
the length statistics and the push URL. The build fills it in (`build`), the card reads it (`card`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from longalign_hf.data.sft.length_stats import format_length_stats

SOURCES = ("long", "short")


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
        """One line for the log: rows read, kept and mixed, and what cleaning dropped and removed."""
        return (
            f"{self.name} set {self.path}: {self.rows} rows, {self.kept} kept, {self.in_mix} in the mix; dropped "
            f"{self.bad_rows} bad rows and {self.no_reply} conversations left without a reply; removed "
            f"{self.empty_turns} empty assistant turns and {self.zero_width} zero-width characters"
            + (f" (e.g. {'; '.join(self.examples)})" if self.examples else "")
        )


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
        """The length statistics as a Markdown table (one row per set, and `all`)."""
        return format_length_stats(self.stats)
