"""Smoke tests: the quick variants of the benchmark scripts run and print their tables (no timing asserted)."""

import numpy as np
import pytest
import torch


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
    # Two processes only: the single-process path is the recipe's own, which test_recipe.py runs.
    results = benchmark("throughput").main(["--quick", "--processes", "2"])
    out = capsys.readouterr().out
    assert "| mode | processes | samples | seconds | samples/s | tokens/s | vs naive | target | status |" in out
    assert [(r["mode"], r["processes"]) for r in results] == [
        (mode, 2) for mode in ("naive", "sort", "pack (token)", "pack (sequence)")
    ]
    # Every mode trains on the same samples and tokens.
    assert len({(r["samples"], r["tokens"]) for r in results}) == 1


def test_throughput_gpu_skips_cleanly_without_cuda(benchmark, capsys):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present, so the benchmark would run instead of skipping")
    assert benchmark("throughput_gpu").main([]) == []
    assert "No CUDA device: skipped" in capsys.readouterr().out


def test_throughput_gpu_flop_count_and_peaks(benchmark):
    module = benchmark("throughput_gpu")
    config = module.model_config("1b", vocab_size=32000, max_length=4096)
    h, inner = config.hidden_size, config.intermediate_size
    kv = config.num_key_value_heads * h // config.num_attention_heads  # k and v width (grouped-query attention)
    per_layer = 2 * h * h + 2 * h * kv + 3 * h * inner + 2 * h  # q, o; k, v; gate, up, down; two norms
    expected = config.num_hidden_layers * per_layer + h + 32000 * h  # + final norm + LM head (embedding excluded)
    with torch.device("meta"):
        model = module.AutoModelForCausalLM.from_config(config)
    assert module.matrix_parameters(model) == expected
    lengths = np.array([100, 300])
    attention = 6 * 22 * 2048 * (100**2 + 300**2)
    assert module.model_flops(lengths, config, expected) == pytest.approx(6 * expected * 400 + attention)
    assert module.peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert module.peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert module.peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert module.peak_tflops("NVIDIA L40") == 181.0 and module.peak_tflops("NVIDIA L4") == 121.0
    assert module.peak_tflops("Tesla T4") is None


@pytest.mark.slow
def test_throughput_gpu_runs_on_cpu(benchmark, capsys):
    results = benchmark("throughput_gpu").main(["--device", "cpu", "--quick", "--attention", "sdpa"])
    out = capsys.readouterr().out
    assert "| attention | mode | seconds | tokens/s | samples/s | vs naive | peak GiB | MFU |" in out
    assert [(r["attention"], r["mode"]) for r in results] == [("sdpa", m) for m in ("naive", "sort", "pack")]
    assert len({(r["samples"], r["tokens"]) for r in results}) == 1
    assert all(r["mfu"] is None and r["seconds"] > 0 for r in results)


def test_packed_attention_quick(benchmark, capsys):
    results = benchmark("packed_attention").main(["--quick"])
    out = capsys.readouterr().out
    assert "| samples / pack | tokens / sample | sdpa_packed | sdpa + block-diagonal mask | mask / packed |" in out
    assert [(r["samples"], r["sample_tokens"]) for r in results] == [(1, 512), (8, 64), (64, 8)]
