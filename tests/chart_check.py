"""Reading back a benchmark chart (`benchmark/_charts.py`): the PNG written, and what each bar series drew."""

from pathlib import Path


def assert_png(path: str | Path) -> None:
    """`path` is a PNG of a readable size with something drawn on it (not one flat colour)."""
    from PIL import Image

    with Image.open(path) as image:
        assert image.format == "PNG", image.format
        assert 600 <= image.width <= 2500 and 400 <= image.height <= 1500, image.size
        low, high = image.convert("L").getextrema()
        assert low < 64 and high > 192, (low, high)  # dark text and lines on a light background


def bars(axes) -> dict[str, list[float]]:
    """Each bar series' drawn lengths, by its legend name (NaN where it has no bar)."""
    return {
        container.get_label(): [
            patch.get_width() if container.orientation == "horizontal" else patch.get_height() for patch in container
        ]
        for container in _bar_containers(axes)
    }


def bar_labels(axes) -> dict[str, list[str]]:
    """Each bar series' value labels (the texts written at its bars' ends), by its legend name."""
    texts, labels = [text.get_text() for text in axes.texts], {}
    for container in _bar_containers(axes):
        labels[container.get_label()], texts = texts[: len(container)], texts[len(container) :]
    return labels


def _bar_containers(axes) -> list:
    from matplotlib.container import BarContainer

    return [container for container in axes.containers if isinstance(container, BarContainer)]
