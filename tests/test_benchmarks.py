"""Smoke tests: the quick variants of the benchmark scripts run and print their tables (no timing asserted)."""

import importlib
from pathlib import Path

import pytest

BENCHMARK_DIR = Path(__file__).resolve().parents[1] / "benchmark"


@pytest.fixture
def benchmark(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARK_DIR))
    return importlib.import_module


def test_loss_memory_quick(benchmark, capsys):
    results = benchmark("loss_memory").main(["--quick"])
    out = capsys.readouterr().out
    assert "| tokens | ours (chunked) | full logits | ours / full | target | status |" in out
    assert [row["tokens"] for row in results] == [256, 1024]
    assert all(row["chunked"] > 0 and row["full_measured"] for row in results)


def test_data_pipeline_quick(benchmark, capsys):
    benchmark("data_pipeline").main(["--quick"])
    out = capsys.readouterr().out
    assert "| samples | tokens | packs | fill | seconds |" in out and "| 10,000 |" in out
    assert "| pack tokens | samples | collate ms | step ms | collate / step | target | status |" in out


@pytest.mark.slow
@pytest.mark.multiprocess
def test_throughput_quick(benchmark, capsys):
    results = benchmark("throughput").main(["--quick"])
    out = capsys.readouterr().out
    assert "| mode | processes | samples | seconds | samples/s | tokens/s | vs naive | target | status |" in out
    assert [(r["mode"], r["processes"]) for r in results] == [
        (mode, n) for n in (1, 2) for mode in ("naive", "sort", "pack (token)", "pack (sequence)")
    ]
    # Every mode trains on the same samples and tokens.
    assert len({(r["samples"], r["tokens"]) for r in results}) == 1
