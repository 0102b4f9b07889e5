"""The needle-in-a-haystack picture: a depth-by-length heatmap, drawn with matplotlib's Agg backend (no display).

Depth (% of the haystack) runs down the y axis from 0 at the top, context length (tokens) along the x axis, and the
colour is the score, from red (0) through yellow to green (1), the colours of the LongAlign release's `vis.py`.
A cell with no record (a skipped length, a run still in progress) is left grey.
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path
from statistics import mean
from typing import Any

# The reference figure's colours: red, yellow, green.
_COLORS = ["#F0496E", "#EBB839", "#0CD79F"]


def plot_heatmap(
    records: Iterable[Mapping[str, Any]],
    path: str | os.PathLike,
    title: str = "Needle in a haystack",
    value_key: str = "score",
    vmin: float = 0.0,
    vmax: float = 1.0,
) -> Path:
    """Draw `records` (each with `length`, `depth` and `value_key`) as a depth x length heatmap PNG at `path`.

    Records of the same (length, depth) cell are averaged; records whose value is `None` are left out. Every cell
    is annotated with its value. Returns the path written.

    Example:

    ```python
    records = [{"length": 1000, "depth": 0, "score": 1.0}, {"length": 1000, "depth": 50, "score": 0.5}]
    plot_heatmap(records, "outputs/needle.png")
    ```
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import LinearSegmentedColormap
    from matplotlib.figure import Figure

    cells: dict[tuple[int, float], list[float]] = defaultdict(list)
    for record in records:
        if record.get(value_key) is not None:
            cells[(int(record["length"]), float(record["depth"]))].append(float(record[value_key]))
    if not cells:
        raise ValueError(f"No record has a `{value_key}` value: there is nothing to draw in {path}.")
    lengths = sorted({length for length, _ in cells})
    depths = sorted({depth for _, depth in cells})
    grid = [
        [mean(cells[(length, depth)]) if (length, depth) in cells else math.nan for length in lengths]
        for depth in depths
    ]

    figure = Figure(figsize=(max(6.0, 1.1 * len(lengths) + 2.5), max(4.0, 0.5 * len(depths) + 1.8)), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    cmap = LinearSegmentedColormap.from_list("needle", _COLORS).with_extremes(bad="#D9D9D9")
    image = axes.imshow(grid, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto", interpolation="nearest")
    figure.colorbar(image, ax=axes, label=value_key)
    for row, values in enumerate(grid):
        for column, value in enumerate(values):
            if not math.isnan(value):
                axes.text(column, row, f"{value:.2g}", ha="center", va="center", fontsize=8)
    axes.set_xticks(range(len(lengths)), [str(length) for length in lengths], rotation=45)
    axes.set_yticks(range(len(depths)), [f"{depth:g}" for depth in depths])
    axes.set_xlabel("Context length (tokens)")
    axes.set_ylabel("Depth (%)")
    axes.set_title(title)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    return path
