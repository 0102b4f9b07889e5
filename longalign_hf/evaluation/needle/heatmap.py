"""The needle-in-a-haystack picture: a depth-by-length heatmap, drawn with matplotlib's Agg backend (no display).

Depth (% of the haystack) runs down the y axis from 0 at the top, context length (tokens) along the x axis, and the
colour is the score, from red (0) through yellow to green (1), the colours of the LongAlign release's `vis.py`.
A cell with no record (a skipped length, a run still in progress) is left grey. Rows are the asked depths; where a
needle could not be put near its asked depth, the cell says where it went.
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
    depth_tolerance: float | None = None,
) -> Path:
    """Draw `records` (each with `length`, `depth` and `value_key`) as a depth x length heatmap PNG at `path`.

    Records of the same (length, depth) cell are averaged; records whose value is `None` are left out. Every cell
    is annotated with its value. With `depth_tolerance`, a cell whose needle reached a depth (the first of a record's
    `needle_depths`) more than that many points from its row's is annotated with the depth reached too, e.g.
    `0.67 @58%`. Raises `ValueError` if no record has a value. Returns the path written.

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
    reached: dict[tuple[int, float], list[float]] = defaultdict(list)
    for record in records:
        if record.get(value_key) is not None:
            cell = (int(record["length"]), float(record["depth"]))
            cells[cell].append(float(record[value_key]))
            reached[cell].append(float((record.get("needle_depths") or [record["depth"]])[0]))
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
    off_depth = False
    for row, values in enumerate(grid):
        for column, value in enumerate(values):
            if math.isnan(value):
                continue
            label = f"{value:.2g}"
            depth = mean(reached[(lengths[column], depths[row])])
            if depth_tolerance is not None and abs(depth - depths[row]) > depth_tolerance:
                label, off_depth = f"{label} @{depth:.0f}%", True
            axes.text(column, row, label, ha="center", va="center", fontsize=8)
    axes.set_xticks(range(len(lengths)), [str(length) for length in lengths], rotation=45)
    axes.set_yticks(range(len(depths)), [f"{depth:g}" for depth in depths])
    axes.set_xlabel("Context length (tokens)")
    axes.set_ylabel("Depth (%)")
    axes.set_title(title)
    if off_depth:
        axes.set_xlabel(
            f"Context length (tokens); @N%: the needle went to depth N, over {depth_tolerance:g} points from its row's"
        )
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    return path
