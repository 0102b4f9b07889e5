"""The benchmarks' `--chart` figures draw exactly the figures of their tables, from hand-made results.

The quick runs of throughput, planner_vs_trl and sequence_parallel (test_benchmarks.py) check their charts against
the printed tables; the scripts whose quick run is not launched there are driven here through `main` with `run`
replaced by hand-made results, so the table and the chart come from the same call; so are planner_vs_trl's axolotl
rows, which need axolotl (not installed in CI).
"""

import math
import re

import pytest
from chart_check import assert_png, bar_labels, bars

GIB, MIB = 2**30, 2**20


def _close(expected: dict[str, list[float]]) -> dict:
    return {name: pytest.approx(values) for name, values in expected.items()}


def _title(figure) -> str:
    return " ".join(figure.get_suptitle().split())  # as one line: `save` wraps long titles


def _legend(axes) -> list[str]:
    return [text.get_text() for text in axes.get_legend().get_texts()]


def _lines(axes, label: str) -> list:
    """The segments of the dashed lines (targets, chance) whose legend name starts with `label`."""
    return [segment for collection in axes.collections if collection.get_label().startswith(label)
            for segment in collection.get_segments()]  # fmt: skip


def test_throughput_chart_draws_tokens_per_second_and_the_ratio_to_naive(benchmark, tmp_path):
    module = benchmark("throughput")
    seconds = {"naive": (10.0, 20.0), "sort": (8.0, 12.5), "pack (token)": (9.0, 8.0), "pack (sequence)": (8.0, 10.0)}
    results = [
        {"mode": mode, "processes": n, "samples": 40, "tokens": 20000, "runtime": runtime,
         "runtimes": [runtime - 1, runtime, runtime + 2]}
        for n in (1, 2) for mode, runtime in ((mode, seconds[mode][n - 1]) for mode in seconds)
    ]  # fmt: skip
    figure = module.chart(results, tmp_path / "throughput.png", "python benchmark/throughput.py", repeats=3)
    assert_png(tmp_path / "throughput.png")
    (axes,) = figure.axes
    assert bars(axes) == _close({mode: [20000 / s for s in seconds[mode]] for mode in seconds})
    # 1 process: sort 10 / 8 = 1.25x naive; 2 processes: pack (token) 20 / 8 = 2.50x.
    assert bar_labels(axes)["sort"] == ["2,500\n1.25x naive", "1,600\n1.60x naive"]
    assert bar_labels(axes)["pack (token)"] == ["2,222\n1.11x naive", "2,500\n2.50x naive"]
    assert _legend(axes) == [*module.MODES, "target: pack >= 2x naive (2+ processes)"]
    # The target: 2x naive's 1,000 tokens/s, over the packing bars of 2 processes only (group 1, its last two bars of
    # width 0.2: from 1.0 to 1.4).
    ((start, end),) = _lines(axes, "target")
    assert start[1] == end[1] == 2000 and (start[0], end[0]) == pytest.approx((1.0, 1.4))
    # The labels sit inside their bars, so none covers the target line drawn just above the packing bars.
    patches = [patch for container in axes.containers if hasattr(container, "patches") for patch in container.patches]
    renderer = figure.canvas.get_renderer()
    for text, patch in zip(axes.texts, patches, strict=True):
        label, bar = text.get_window_extent(renderer), patch.get_window_extent(renderer)
        assert bar.y0 < label.y0 and label.y1 < bar.y1, (text.get_text(), label, bar)
    assert [tick.get_text() for tick in axes.get_xticklabels()] == ["1 process", "2 processes"]
    assert "tokens/s" in axes.get_ylabel() and "40 samples, 20,000 tokens" in _title(figure)


def test_planner_vs_trl_chart_draws_seconds_on_a_log_scale_and_fill(benchmark, tmp_path):
    module = benchmark("planner_vs_trl")
    rows = [
        {"method": "plan_packs bfd", "library": "longalign_hf", "seconds": 0.5, "vs_ours": 1.0, "packs": 10,
         "fill": 0.99},
        {"method": "TRL bfd over the whole set", "library": "TRL 9.9", "seconds": 50.0, "vs_ours": 100.0, "packs": 11,
         "fill": 0.9},
    ]  # fmt: skip
    figure = module.chart(rows, tmp_path / "planner.png", "python benchmark/planner_vs_trl.py", "2 lengths", 64, 3)
    assert_png(tmp_path / "planner.png")
    seconds, fill = figure.axes
    assert bars(seconds) == {"seconds": [0.5, 50.0]} and bars(fill) == {"fill": [0.99, 0.9]}
    assert bar_labels(seconds) == {"seconds": ["0.5 s (1x)", "50 s (100x)"]}
    assert bar_labels(fill) == {"fill": ["0.99000", "0.90000"]}
    assert seconds.get_xscale() == "log" and fill.get_xlim() == (0, 1.25)
    assert [tick.get_text() for tick in seconds.get_yticklabels()] == [row["method"] for row in rows]
    assert [patch.get_facecolor() for patch in seconds.containers[0]][1] != seconds.containers[0][0].get_facecolor()
    assert _legend(fill) == ["longalign_hf", "TRL 9.9"]
    assert "vs TRL's pack_dataset" in _title(figure) and "axolotl" not in _title(figure)


def test_planner_vs_trl_main_prints_and_draws_axolotl_rows(benchmark, tmp_path, monkeypatch, capsys):
    # axolotl's rows as `run` returns them when axolotl imports (faked here: CI has no axolotl), one dropping samples.
    module = benchmark("planner_vs_trl")
    common = {"columns": "", "samples": 100, "tokens": 6000}
    rows = [
        {"method": "plan_packs bfd", "library": "longalign_hf", "seconds": 0.01, "packs": 1, "fill": 0.91, **common},
        {"method": "TRL bfd over the whole set", "library": "TRL 9.9", "seconds": 0.2, "packs": 1, "fill": 0.91,
         **common},
        {"method": "axolotl first-fit", "library": "axolotl 0.19.0", "seconds": 0.3, "packs": 1, "fill": 0.91,
         "dropped": 0, "dropped_tokens": 0, **common},
        {"method": "axolotl next-fit", "library": "axolotl 0.19.0", "seconds": 0.1, "packs": 2, "fill": 0.44,
         "dropped": 3, "dropped_tokens": 240, **{**common, "samples": 97, "tokens": 5760}},
    ]  # fmt: skip
    for row in rows:
        row["vs_ours"] = row["seconds"] / 0.01
    monkeypatch.setattr(module, "run", lambda *args, **kwargs: rows)
    monkeypatch.setattr(module._axolotl_packer, "multipack_or_reason", lambda: (object(), ""))
    monkeypatch.setattr(module._axolotl_packer, "describe", lambda: "# axolotl 0.19.0: as its trainer")
    figures, chart = [], module.chart
    monkeypatch.setattr(module, "chart", lambda *args, **kwargs: figures.append(chart(*args, **kwargs)))
    module.main(["--quick", "--chart", str(tmp_path / "planner.png")])
    out = capsys.readouterr().out
    assert "\n# axolotl 0.19.0: as its trainer\n" in out and "skipped" not in out
    assert "| axolotl first-fit |  | 0.3 | 30x | 1 | 0.91000 |" in out
    assert "| axolotl next-fit |  | 0.1 | 10x | 2 | 0.44000 |" in out
    # Dropped samples are said under the table, never hidden.
    assert out.rstrip().endswith(
        "Every method packed each of the 5,000 samples exactly once (6,889,087 tokens), except: axolotl next-fit "
        "dropped 3 (240 tokens); the rest at most once."
    )
    assert_png(tmp_path / "planner.png")
    (figure,) = figures
    seconds, fill = figure.axes
    assert bars(seconds) == {"seconds": [0.01, 0.2, 0.3, 0.1]}
    assert bar_labels(fill)["fill"][2:] == ["0.91000", "0.44000 (3 samples dropped)"]
    # One colour and one legend entry per library, named with its version.
    colors = [patch.get_facecolor() for patch in seconds.containers[0]]
    assert colors[2] == colors[3] and len({colors[0], colors[1], colors[2]}) == 3
    assert [patch.get_facecolor() for patch in fill.get_legend().get_patches()] == colors[:3]
    assert _legend(fill) == ["longalign_hf", "TRL 9.9", "axolotl 0.19.0"]
    assert "vs TRL's pack_dataset and axolotl's multipack sampler" in _title(figure)


def test_loss_memory_main_draws_its_table(benchmark, tmp_path, monkeypatch, capsys):
    module = benchmark("loss_memory")
    results = [
        {"tokens": 4096, "chunked": 2 * GIB, "full": 8 * GIB, "full_measured": True, "full_oom": False},
        {"tokens": 32768, "chunked": 2.5 * GIB, "full": 64 * GIB, "full_measured": False, "full_oom": False},
    ]
    monkeypatch.setattr(module, "run", lambda *args: results)
    module.main(["--tokens", "4096,32768", "--chart", str(tmp_path / "loss.png")])
    assert "| 32,768 | 2.50 | ~64.00 | 0.039 | <= 0.1 | PASS |" in capsys.readouterr().out
    assert_png(tmp_path / "loss.png")

    figure = module.chart(results, tmp_path / "again.png", "python benchmark/loss_memory.py", "vocabulary 8")
    (axes,) = figure.axes
    assert bars(axes) == {"ours (chunked)": [2, 2.5], "full logits": [8, 64]}  # GiB, as the table
    assert bar_labels(axes) == {"ours (chunked)": ["2.00\n0.250x full", "2.50\n0.039x full"],
                                "full logits": ["8.00", "~64.00"]}  # fmt: skip
    assert [bool(patch.get_hatch()) for patch in axes.containers[-1]] == [False, True]  # the extrapolated one
    assert axes.get_yscale() == "log" and "GiB" in axes.get_ylabel()
    assert _legend(axes)[-1].startswith("~ full logits, extrapolated")
    # Under 1 GiB everywhere: MiB, whole numbers; no full logits at all: no bar and no ratio.
    small = [{"tokens": 256, "chunked": 300 * MIB, "full": None, "full_measured": False, "full_oom": False}]
    (axes,) = module.chart(small, tmp_path / "small.png", "python benchmark/loss_memory.py", "vocabulary 8").axes
    assert bar_labels(axes) == {"ours (chunked)": ["300"], "full logits": [""]} and "MiB" in axes.get_ylabel()
    assert bars(axes)["ours (chunked)"] == [300] and math.isnan(bars(axes)["full logits"][0])


def test_sequence_parallel_chart_draws_both_memory_columns_per_rank(benchmark, tmp_path):
    module = benchmark("sequence_parallel")
    results = [
        {"length": 4096, "sp_size": 1, "saved_bytes": 400 * MIB, "peak_bytes": 900 * MIB, "step_seconds": 1.0},
        {"length": 4096, "sp_size": 2, "saved_bytes": 200 * MIB, "peak_bytes": 600 * MIB, "step_seconds": 1.0},
        {"length": 8192, "sp_size": 1, "saved_bytes": 800 * MIB, "peak_bytes": 1500 * MIB, "step_seconds": 2.0},
        {"length": 8192, "sp_size": 2, "saved_bytes": 400 * MIB, "peak_bytes": 900 * MIB, "step_seconds": 2.0},
    ]
    figure = module.chart(results, tmp_path / "sp.png", "python benchmark/sequence_parallel.py", 2, False)
    assert_png(tmp_path / "sp.png")
    activations, peak = figure.axes
    assert activations.get_title() == "activations per rank (MiB)" and peak.get_title() == "peak RSS above start (MiB)"
    assert bars(activations) == {"sp_size 1": [400, 800], "sp_size 2": [200, 400]}
    assert bars(peak) == {"sp_size 1": [900, 1500], "sp_size 2": [600, 900]}
    assert bar_labels(peak) == {"sp_size 1": ["900", "1,500"], "sp_size 2": ["600\n0.67x", "900\n0.60x"]}
    assert [tick.get_text() for tick in peak.get_xticklabels()] == ["4,096", "8,192"]
    assert _legend(peak) == ["sp_size 1", "sp_size 2"] and "activation checkpointing off" in _title(figure)


def _weighting_results() -> dict:
    """Two seeds of two modes on one long-input and one short-input task, and the base model."""
    losses = {"base (before fine-tuning)": (9.0, 8.0, 7.0, 6.0), "pack + token": (1.2, 1.4, 2.0, 2.2),
              "pack + sequence": (1.1, 1.3, 2.3, 2.1)}  # majority seed 0, 1; sort seed 0, 1  # fmt: skip
    runs = [
        {"mode": mode, "seed": seed, "seconds": 1.0, "tokens": 10, "train_loss": [1.0],
         "tasks": {"majority": {"answer_loss": values[seed], "exact_match": 0.5 * seed, "token_accuracy": 0.5},
                   "sort": {"answer_loss": values[2 + seed], "exact_match": 0.0, "token_accuracy": 0.25}}}
        for seed in (0, 1) for mode, values in losses.items()
    ]  # fmt: skip
    return {
        "sizes": {}, "settings": {"steps": 3, "hidden_size": 32, "num_layers": 2}, "seeds": [0, 1],
        "modes": ["pack + token", "pack + sequence"], "tasks": ["majority", "sort"], "runs": runs,
        "samples_per_step": {"pack": "1 pack(s)", "naive/sort": 3}, "train_samples": 4, "train_tokens": 40,
        "heldout_samples": 2,
    }  # fmt: skip


def test_weighting_effect_main_draws_its_per_task_table(benchmark, tmp_path, monkeypatch, capsys,
                                                         library_log_level):  # fmt: skip
    module = benchmark("weighting_effect")
    monkeypatch.setattr(module, "run", lambda *args: _weighting_results())
    figures, chart = [], module.chart
    monkeypatch.setattr(module, "chart", lambda *args: figures.append(chart(*args)) or figures[-1])
    module.main(["--modes", "pack + token,pack + sequence", "--tasks", "majority,sort", "--chart",
                 str(tmp_path / "weighting.png")])  # fmt: skip
    table = capsys.readouterr().out
    assert "| majority | long input | pack + token | 1.300 (1.200-1.400) | 0.25 (0.00-0.50) |" in table
    assert "| sort | short input | pack + sequence | 2.200 (2.100-2.300) | 0.00 (0.00-0.00) |" in table
    assert_png(tmp_path / "weighting.png")

    (figure,) = figures
    loss, exact = figure.axes
    # The fine-tuned modes, mean over seeds as in the table; the base model is not drawn.
    assert bars(loss) == _close({"pack + token": [1.3, 2.1], "pack + sequence": [1.2, 2.2]})
    assert bar_labels(loss) == {"pack + token": ["1.300", "2.100"], "pack + sequence": ["1.200", "2.200"]}
    assert bars(exact) == _close({"pack + token": [0.25, 0.0], "pack + sequence": [0.25, 0.0]})
    assert bar_labels(exact)["pack + token"] == ["0.25", "0.00"]
    # Whiskers from the lowest to the highest seed: majority, pack + token spans 1.2-1.4.
    whiskers = [segment for collection in loss.collections if not collection.get_label().startswith("chance")
                for segment in collection.get_segments()]  # fmt: skip
    assert [list(point[1] for point in segment) for segment in whiskers][0] == pytest.approx([1.2, 1.4])
    # Chance (ln(10) / 2 and 0.10) is drawn over the 10-letter task only.
    ((start, end),) = _lines(loss, "chance")
    assert start[1] == pytest.approx(math.log(10) / 2) and -0.5 < start[0] < end[0] < 0.5
    assert [segment[0][1] for segment in _lines(exact, "chance")] == [0.1]
    assert [tick.get_text() for tick in loss.get_xticklabels()] == ["majority\n(long input)", "sort\n(short input)"]
    assert _legend(exact) == ["pack + token", "pack + sequence", "chance on majority:\nloss 1.151, exact match 0.10"]
    assert "--modes 'pack + token,pack + sequence'" in figure.texts[-1].get_text()  # the command, as a shell takes it
    assert re.search(r"base model \(not drawn\): answer loss 6\.00-9\.00", _title(figure))
