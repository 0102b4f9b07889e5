"""Shared by the benchmarks that draw their table as a PNG (`--chart PATH`): grouped bars, titles, the command line.

Drawn with matplotlib's Agg backend on a `Figure` of its own (no pyplot, no display, nothing left open), as the needle
heatmap is (`longalign_hf.evaluation.needle.heatmap`). Each script's `chart(...)` builds its figure with these
helpers and returns it, so a test can read back the bars it drew (`axes.containers`: one `BarContainer` per series,
labelled with the series' name, its bars' heights and its `datavalues`).
"""

from __future__ import annotations

import math
import os
import platform
import shlex
import textwrap
from collections.abc import Sequence
from pathlib import Path

# Colour-blind-safe (Okabe-Ito), one per series in the order the table lists them.
COLORS = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000"]


def machine(cuda: bool = False) -> str:
    """The machine in a few words, for a chart's title: the GPU's name, or the CPU's cores and architecture."""
    if cuda:
        import torch

        return torch.cuda.get_device_name()
    return f"{os.cpu_count()}-core {platform.machine()} CPU"


def command_line(script: str, argv: Sequence[str]) -> str:
    """The command that made a chart, to paste in a shell: `python benchmark/x.py ARGS` (quoted where needed)."""
    return f"python benchmark/{script} {shlex.join(argv)}".rstrip()


def new_figure(panels: int = 1, width: float = 6.4, height: float = 4.8, sharey: bool = False):
    """A figure of `panels` axes side by side, `width` inches each; returns `(figure, [axes, ...])`."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width * panels, height), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, panels, sharey=sharey, squeeze=False)[0]
    return figure, list(axes)


def grouped_bars(
    axes,
    groups: Sequence[str],
    series: dict[str, Sequence[float | None]],
    labels: dict[str, Sequence[str]] | None = None,
    spread: dict[str, Sequence[tuple[float, float] | None]] | None = None,
    log: bool = False,
    horizontal: bool = False,
    label_rotation: float = 0,
    labels_inside: bool = False,
) -> dict:
    """Draw one bar per (group, series) on `axes`, the series side by side within each group; `None`: no bar.

    `labels` are the texts written at the end of each bar (the table's cells), or in its middle with `labels_inside`
    (where a line drawn just above the bars, such as a target, must stay visible); `spread` the (low, high) of each bar
    drawn as a whisker. The value axis is logarithmic with `log` and leaves room for the labels. Returns
    `{series name: BarContainer}`.
    """
    width = 0.8 / len(series)
    containers = {}
    for index, (name, values) in enumerate(series.items()):
        positions = [group + (index - (len(series) - 1) / 2) * width for group in range(len(groups))]
        heights = [math.nan if value is None else value for value in values]
        whiskers = None
        if spread and spread.get(name):
            low_high = [(math.nan, math.nan) if pair is None else pair for pair in spread[name]]
            whiskers = [[h - low for h, (low, _) in zip(heights, low_high)],
                        [high - h for h, (_, high) in zip(heights, low_high)]]  # fmt: skip
        color = COLORS[index % len(COLORS)]
        if horizontal:
            container = axes.barh(positions, heights, height=width, xerr=whiskers, label=name, color=color,
                                  capsize=3)  # fmt: skip
        else:
            container = axes.bar(positions, heights, width=width, yerr=whiskers, label=name, color=color, capsize=3)
        if labels and labels.get(name):
            # On a white box: a target or chance line passing through a label leaves it readable.
            box = {"facecolor": "white", "edgecolor": "none", "pad": 0.5, "alpha": 0.85}
            axes.bar_label(container, labels=list(labels[name]), padding=0 if labels_inside else 3, fontsize=8,
                           rotation=label_rotation, bbox=box, label_type="center" if labels_inside else "edge")  # fmt: skip
        containers[name] = container
    (axes.set_yticks if horizontal else axes.set_xticks)(range(len(groups)), list(groups))
    _leave_room_for_labels(axes, series, spread, log, horizontal, label_rotation)
    return containers


def _leave_room_for_labels(axes, series, spread, log: bool, horizontal: bool, label_rotation: float) -> None:
    """Scale the value axis (log or linear, from 0) so the labels above the longest bar fit; plain tick numbers."""
    from matplotlib.ticker import FuncFormatter

    (axes.set_xscale if horizontal else axes.set_yscale)("log" if log else "linear")
    value_axis = axes.xaxis if horizontal else axes.yaxis
    value_axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:,.12g}"))  # 30,000 and 0.1: not 3e4, 10^-1
    values = [v for vs in series.values() for v in vs if v is not None and math.isfinite(v)]
    values += [high for pairs in (spread or {}).values() for pair in pairs if pair for high in pair[1:]]
    positive = [value for value in values if value > 0]
    if not positive:  # nothing above zero (an all-zero column): matplotlib's default limits
        return
    if log:  # from the decade below the smallest bar, so that a bar's length still reads as its size
        low = 10 ** math.floor(math.log10(min(positive)))
        # Room for the labels as a share of the decades drawn: a label beside a bar (horizontal) needs the most.
        share = 0.4 if horizontal else 0.3 if label_rotation else 0.15
        limits = (low, max(positive) * max(4.0, (max(positive) / low) ** share))
    else:  # rotated labels stand taller than flat ones
        limits = (0, max(positive) * (1.45 if label_rotation else 1.2))
    (axes.set_xlim if horizontal else axes.set_ylim)(*limits)


def legend(axes, handles=None, names=None, **options) -> None:
    """A legend outside `axes`, on its right (it then covers no bar or label): the bar series first, in the order
    drawn (the table's), then the lines (targets, chance). `handles` and `names` default to those of `axes`."""
    from matplotlib.container import BarContainer

    if handles is None:
        handles, names = axes.get_legend_handles_labels()
    order = sorted(range(len(names)), key=lambda index: not isinstance(handles[index], BarContainer))
    axes.legend(
        [handles[i] for i in order], [names[i] for i in order], fontsize=8, title_fontsize=8, loc="upper left",
        bbox_to_anchor=(1.02, 1), borderaxespad=0, **options,
    )  # fmt: skip


def save(figure, path: str | os.PathLike, title: str, command: str) -> Path:
    """Title the figure, write the command that made it along the bottom, lay it out and save it as a PNG.

    Title lines longer than the figure is wide are wrapped.
    """
    columns = int(figure.get_figwidth() * 10)  # characters of an 11-point title per line
    figure.suptitle("\n".join(textwrap.fill(line, columns) for line in title.splitlines()), fontsize=11)
    figure.text(0.005, 0.005, f"$ {command}", fontsize=7, family="monospace", color="0.35", va="bottom")
    figure.tight_layout(rect=(0, 0.03, 1, 1))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    return path
