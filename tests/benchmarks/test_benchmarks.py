"""Smoke tests: the quick variants of the benchmark scripts run and print their tables (no timing asserted)."""

import sys
from importlib import metadata

import numpy as np
import pytest
import torch
from chart_check import assert_png, bar_labels, bars


def _table(out: str, header: str) -> list[list[str]]:
    """The cells of the Markdown table printed under `header` (a line starting with it)."""
    rows = []
    for line in out[out.index(header) :].splitlines()[2:]:  # after the header and its |---| line
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.split("|")[1:-1]])
    return rows


def _drawn(module, monkeypatch) -> list:
    """The figures `module.main` draws: its `chart`, recording what it returns."""
    figures, chart = [], module.chart
    monkeypatch.setattr(module, "chart", lambda *args, **kwargs: figures.append(chart(*args, **kwargs)) or figures[-1])
    return figures


def test_data_pipeline_quick(benchmark, capsys):
    benchmark("data_pipeline").main(["--quick"])
    out = capsys.readouterr().out
    assert "| samples | tokens | packs | fill | seconds |" in out and "| 10,000 |" in out
    assert "| pack tokens | samples | collate ms | step ms | collate / step | target | status |" in out


@pytest.mark.slow
@pytest.mark.multiprocess
def test_throughput_quick(benchmark, capsys, tmp_path, monkeypatch):
    # Two processes only: the single-process path is the recipe's own, which test_recipe.py runs. `--quick` trains
    # the four modes in one launch, one after another.
    module = benchmark("throughput")
    figures = _drawn(module, monkeypatch)
    results = module.main(["--quick", "--processes", "2", "--chart", str(tmp_path / "throughput.png")])
    out = capsys.readouterr().out
    header = "| mode | processes | samples | seconds | samples/s | tokens/s | vs naive | target | status |"
    assert header in out
    assert [(r["mode"], r["processes"]) for r in results] == [
        (mode, 2) for mode in ("naive", "sort", "pack (token)", "pack (sequence)")
    ]
    # Every mode trains on the same samples and tokens.
    assert len({(r["samples"], r["tokens"]) for r in results}) == 1
    # The chart: one bar per row of the table, of its tokens/s, labelled with its tokens/s and vs naive.
    assert_png(tmp_path / "throughput.png")
    (axes,) = figures[0].axes
    table = _table(out, header)
    assert {mode: [round(height)] for mode, (height,) in bars(axes).items()} == {
        row[0]: [int(row[5].replace(",", ""))] for row in table
    }
    assert bar_labels(axes) == {row[0]: [f"{row[5]}\n{row[6]} naive"] for row in table}


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


def test_throughput_gpu_skips_backends_that_cannot_run_and_runs_past_the_budget(benchmark, capsys):
    module = benchmark("throughput_gpu")
    attention = "varlen_packed,sdpa_packed,flash_attention_2,no_such_backend"
    results = module.main(["--device", "cpu", "--quick", "--attention", attention, "--time-budget", "1e-9"])
    out = capsys.readouterr().out
    if not torch.cuda.is_available():
        assert "# skipped flash_attention_2: flash-attn is not installed" in out
    assert "# skipped no_such_backend: no such attention backend is registered" in out
    # No run fits a budget of 1e-9 s: every row says so, and nothing was trained.
    assert [(r["attention"], r["seconds"]) for r in results] == [("varlen_packed", None)] * 4 + [
        ("sdpa_packed", None)
    ] * 4
    assert out.count("not run (time budget)") == 8


def test_throughput_gpu_checks_the_targets_on_an_h100_only(benchmark):
    module = benchmark("throughput_gpu")
    row = {"mode": "pack (sequence)", "vs_naive": 2.3, "mfu": 0.47}
    assert module._target(row, "NVIDIA H100 80GB HBM3") == (">= 2x, MFU >= 45%", "PASS")
    assert module._target({**row, "mfu": 0.40}, "NVIDIA H100 80GB HBM3")[1] == "FAIL"
    assert module._target({**row, "vs_naive": 1.9}, "NVIDIA H100 80GB HBM3")[1] == "FAIL"
    assert module._target(row, "NVIDIA A100-SXM4-80GB") == ("", "")
    assert module._target({**row, "mode": "naive"}, "NVIDIA H100 80GB HBM3") == ("", "")


def test_longest_row_search_stops_at_out_of_memory_failure_budget_and_cap(benchmark):
    module = benchmark("longest_row")

    def train(limit, fail=None):
        def step(length):
            if fail and length == fail:
                raise ValueError("bad shape")
            if length > limit:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return length / 1000, length * 1000

        return step

    rows = module.search(train(limit=4096), start=1024, max_length=2**20)
    assert [(r["length"], r["status"]) for r in rows] == [
        (1024, "trained"), (2048, "trained"), (4096, "trained"), (8192, "out of memory"),
    ]  # fmt: skip
    assert rows[2]["seconds"] == 4.096 and rows[2]["peak_bytes"] == 4096000
    rows = module.search(train(limit=2**30, fail=2048), start=1024, max_length=2**20)
    assert rows[-1] == {"length": 2048, "status": "failed: ValueError: bad shape"}
    assert [r["length"] for r in module.search(train(limit=2**30), start=1024, max_length=4096)] == [1024, 2048, 4096]
    # A fake clock: each step takes the seconds it reports. 1 s, then 2 s (growth 2x: 4 s predicted for 4096 tokens,
    # which fits 10 - 3 = 7 s), then 4 s (8 s predicted for 8192, 3 s left): not tried.
    now = [0.0]

    def timed(length):
        now[0] += length / 1024
        return length / 1024, None

    rows = module.search(timed, start=1024, max_length=2**20, time_budget=10, clock=lambda: now[0])
    assert [r["status"] for r in rows] == ["trained"] * 3 + ["not tried: ~8 s predicted, 3 s left"]


def test_longest_row_recognises_out_of_memory_errors(benchmark):
    module = benchmark("longest_row")
    assert module.is_out_of_memory(torch.cuda.OutOfMemoryError("CUDA out of memory"))
    assert module.is_out_of_memory(RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling cublasCreate"))
    assert not module.is_out_of_memory(RuntimeError("shape mismatch"))


def test_longest_row_row_is_cut_into_samples(benchmark):
    module = benchmark("longest_row")
    assert [len(ids) for ids in module.row_dataset(300, 128, 1000)["input_ids"]] == [128, 128, 44]
    assert [len(ids) for ids in module.row_dataset(300, 0, 1000)["input_ids"]] == [300]


def test_gpu_benchmarks_skip_cleanly_without_cuda(benchmark, capsys):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present, so the benchmarks would run instead of skipping")
    assert benchmark("longest_row").main([]) == []
    assert "No CUDA device: skipped" in capsys.readouterr().out
    assert benchmark("loss_memory").main(["--device", "cuda"]) == []
    assert "No CUDA device: skipped" in capsys.readouterr().out


def test_loss_memory_full_logits_estimate_on_the_gpu(benchmark):
    # bf16 logits and their gradient (2 + 2 bytes) plus the fp32 upcast, its log_softmax and a gradient (3 x 4 bytes).
    assert benchmark("loss_memory")._full_logits_estimate(32768, 128256, "cuda") == 16 * 32768 * 128256


def test_packed_attention_quick(benchmark, capsys):
    results = benchmark("packed_attention").main(["--quick"])
    out = capsys.readouterr().out
    assert "| samples / pack | tokens / sample | sdpa_packed | sdpa + block-diagonal mask | mask / packed |" in out
    assert [(r["samples"], r["sample_tokens"]) for r in results] == [(1, 512), (8, 64), (64, 8)]


def test_planner_vs_trl_quick(benchmark, capsys, tmp_path, monkeypatch):
    module = benchmark("planner_vs_trl")
    figures = _drawn(module, monkeypatch)
    for name in ("axolotl", "axolotl.utils", "axolotl.utils.samplers", "axolotl.utils.samplers.multipack"):
        monkeypatch.setitem(sys.modules, name, None)  # as where axolotl is not installed (CI): its rows are skipped
    rows = module.main(["--quick", "--repeats", "1", "--chart", str(tmp_path / "planner_vs_trl.png")])
    out = capsys.readouterr().out
    header = "| method | token columns copied | seconds | time / plan_packs bfd | packs | fill |"
    assert header in out
    (skipped,) = [line for line in out.splitlines() if "axolotl" in line]
    assert skipped.startswith("# axolotl rows skipped: cannot import axolotl.utils.samplers.multipack (")
    assert skipped.endswith("; to add them: pip install --no-deps axolotl==0.19.0 numba==0.68.1 llvmlite==0.50.0")
    # The chart: every method of the table, named as there, with its seconds and fill.
    assert_png(tmp_path / "planner_vs_trl.png")
    seconds, fill = figures[0].axes
    table = _table(out, header)
    assert [tick.get_text() for tick in seconds.get_yticklabels()] == [row[0] for row in table]
    assert [f"{value:.3g}" for value in bars(seconds)["seconds"]] == [row[2] for row in table]
    assert bar_labels(seconds)["seconds"] == [f"{row[2]} s ({row[3]})" for row in table]
    assert bar_labels(fill)["fill"] == [row[5] for row in table]
    assert [f"{value:.5f}" for value in bars(fill)["fill"]] == [row[5] for row in table]
    lengths = benchmark("_lengths").long_tailed_lengths(4950, 50, seed=0)  # what --quick packs
    ours, _, _, trl_blocks, trl_whole = rows
    assert ours["method"] == "plan_packs bfd" and trl_blocks["method"].startswith("TRL pack_dataset, as SFTTrainer")
    assert all(row["samples"] == len(lengths) and row["tokens"] == lengths.sum() for row in rows)
    assert ours["fill"] >= trl_blocks["fill"]
    # Checked here too, not only by the script: every sample in exactly one of our packs...
    plan = module.plan_packs(lengths.tolist(), 65536, "bfd")
    assert sorted(i for pack in plan for i in pack) == list(range(len(lengths)))
    assert sum(lengths[pack].sum() for pack in plan) == lengths.sum()
    # ...and in TRL's rows: the tokens, and seq_lengths / position ids that add up to every row.
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    for whole, row in ((False, trl_blocks), (True, trl_whole)):
        packed = module.trl_pack(module.token_dataset(lengths), 65536, whole=whole)
        assert len(packed) == row["packs"]
        row_tokens = [len(ids) for ids in packed["input_ids"]]
        assert sum(row_tokens) == lengths.sum() and max(row_tokens) <= 65536
        assert sorted(n for seq in packed["seq_lengths"] for n in seq) == sorted(lengths.tolist())
        position_ids = DataCollatorForLanguageModeling.get_position_ids_from_packed_seq_lengths(packed["seq_lengths"])
        assert [len(ids) for ids in position_ids] == row_tokens
        assert sum(int((ids == 0).sum()) for ids in position_ids) == len(lengths)  # one restart per sample


def _fit(lengths, order, max_length: int, first_fit: bool, max_samples: int | None) -> list[list[int]]:
    """Packs of `lengths` in `order`, plain Python: each sample into the first pack it fits (first_fit) or the last."""
    packs, tokens = [], []
    for index in order:
        candidates = range(len(packs)) if first_fit else range(max(len(packs) - 1, 0), len(packs))
        fits = [p for p in candidates if tokens[p] + lengths[index] <= max_length
                and (max_samples is None or len(packs[p]) < max_samples)]  # fmt: skip
        if fits:
            packs[fits[0]].append(index)
            tokens[fits[0]] += int(lengths[index])
        else:
            packs.append([index])
            tokens.append(int(lengths[index]))
    return packs


def test_planner_vs_trl_axolotl_rows_pack_as_axolotls_trainer(benchmark):
    packer = benchmark("_axolotl_packer")
    multipack, why = packer.multipack_or_reason()
    if multipack is None:
        pytest.skip(f"axolotl's rows: {why}")
    module = benchmark("planner_vs_trl")
    lengths = benchmark("_lengths").long_tailed_lengths(1980, 20, seed=3, max_length=8192)
    rows = module.run(lengths, max_length=8192, repeats=1, trl_whole=False, axolotl=multipack, seed=5)
    first_fit, next_fit = rows[-2:]
    assert [row["library"] for row in rows[-2:]] == [f"axolotl {metadata.version('axolotl')}"] * 2
    assert first_fit["method"].startswith("axolotl multipack, as its trainer")
    # The order axolotl's trainer packs in: a RandomSampler's, here seeded; then first-fit of at most 200 samples a
    # pack, or next-fit (which has no sample cap), by hand.
    order = torch.randperm(len(lengths), generator=torch.Generator().manual_seed(5)).tolist()
    for row, first, cap in ((first_fit, True, 200), (next_fit, False, None)):
        expected = _fit(lengths, order, 8192, first, cap)
        assert all(lengths[pack].sum() <= 8192 for pack in expected)
        plan = packer.multipack_plan(multipack, lengths, 8192, sequential=not first, seed=5)
        assert sorted(map(sorted, plan)) == sorted(map(sorted, expected))
        assert (row["packs"], row["samples"], row["tokens"], row["dropped"]) == (
            len(expected),
            len(lengths),
            lengths.sum(),
            0,
        )
        assert row["fill"] == pytest.approx(lengths.sum() / (len(expected) * 8192))
    # The trainer's bin_size: 500 samples of 16 tokens fit 8,192 tokens, but not 200 samples.
    assert [len(pack) for pack in packer.multipack_plan(multipack, np.full(500, 16), 8192)] == [200, 200, 100]


def test_planner_vs_trl_counts_what_axolotls_plan_drops(benchmark):
    check = benchmark("_axolotl_packer").check_multipack_plan
    lengths = np.array([5, 3, 4, 2])
    assert check([[0, 1], [3]], lengths, 8) == {"packs": 2, "samples": 3, "tokens": 10, "dropped": 1,
                                                "dropped_tokens": 4}  # fmt: skip
    with pytest.raises(AssertionError, match="twice"):
        check([[0, 1], [1, 2, 3]], lengths, 9)
    with pytest.raises(AssertionError, match="more than 7 tokens"):
        check([[0, 1], [2, 3]], lengths, 7)


@pytest.mark.slow
@pytest.mark.multiprocess
def test_sequence_parallel_benchmark_halves_activations_per_rank(benchmark, capsys, tmp_path, monkeypatch):
    pytest.importorskip("deepspeed")
    module = benchmark("sequence_parallel")
    figures = _drawn(module, monkeypatch)
    module.main(["--quick", "--jobs", "2", "--chart", str(tmp_path / "sp.png")])  # sp_size 1 and 2 at once
    rows = [line.split("|")[1:-1] for line in capsys.readouterr().out.splitlines() if line.startswith("| 2,048")]
    assert [row[1].strip() for row in rows] == ["1", "2"] and rows[1][2].strip() == "1,024"
    # Each rank keeps the activations of its half of the row (plus the weights and the full-row attention exchange).
    assert float(rows[1][4]) < 0.7
    # The chart: the table's two memory columns (MiB) and their ratios to sp_size 1, per sp_size.
    assert_png(tmp_path / "sp.png")
    activations, peak = figures[0].axes
    for axes, column in ((activations, 3), (peak, 5)):
        cells = [row[column].strip() for row in rows]
        assert {name: f"{value:,.0f}" for name, (value,) in bars(axes).items()} == {
            "sp_size 1": cells[0],
            "sp_size 2": cells[1],
        }
        assert bar_labels(axes) == {
            "sp_size 1": [cells[0]],
            "sp_size 2": [f"{cells[1]}\n{rows[1][column + 1].strip()}x"],
        }


def test_engines_expected_model_states_follow_what_each_engine_shards_and_offloads(benchmark):
    engines = benchmark("engines")
    # 1,000 fp32 parameters with AdamW on 2 processes: 4,000 bytes of weights, 4,000 of gradients, 8,000 of moments.
    expected = {name: engines.expected_model_state_bytes(name, 1000) for name in engines.ENGINES}
    assert expected == {
        "DDP": (16000, 0),
        "FSDP2": (8000, 0),
        "FSDP2 + offload": (8000, 8000),
        "ZeRO-2": (4000 + 2000 + 4000, 0),
        "ZeRO-3": (8000, 0),
        "ZeRO-3 + offload": (8000, 8000),
    }


# What `accelerate launch` hands its processes for each engine's config: the variables the trainer's engine is built
# from (the launches themselves, and the words the trainer names each engine with, are tested in tests/training).
LAUNCHER_VARIABLES = {
    "DDP": {"ACCELERATE_MIXED_PRECISION": "no"},
    "FSDP2": {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2", "FSDP_OFFLOAD_PARAMS": "false"},
    "FSDP2 + offload": {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2", "FSDP_OFFLOAD_PARAMS": "true"},
    "ZeRO-2": {"ACCELERATE_DEEPSPEED_ZERO_STAGE": "2", "ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE": "none"},
    "ZeRO-3": {"ACCELERATE_DEEPSPEED_ZERO_STAGE": "3", "ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE": "none"},
    "ZeRO-3 + offload": {
        "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3", "ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE": "cpu",
        "ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE": "cpu",
    },
}  # fmt: skip


@pytest.mark.parametrize("engine", list(LAUNCHER_VARIABLES))
def test_engines_benchmark_configs_launch_the_engine_each_row_names(benchmark, tmp_path, engine):
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    config = benchmark("engines").accelerate_config(engine, tmp_path)
    argv = ["--config_file", str(config), "--num_processes", "2", "--mixed_precision", "no", "worker.py"]
    args, defaults, _ = _validate_launch_command(launch_command_parser().parse_args(argv))
    assert args.num_processes == 2 and args.use_deepspeed == engine.startswith("ZeRO")
    assert args.use_fsdp == engine.startswith("FSDP")
    if args.use_deepspeed:  # as accelerate's `deepspeed_launcher` does before building the environment
        args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)
        environment = prepare_deepspeed_cmd_env(args)[1]
    else:
        environment = prepare_multi_gpu_env(args)
    assert LAUNCHER_VARIABLES[engine].items() <= environment.items()
