"""Measured training throughput of naive batching, sorted batching and packing, side by side in one run.

Every mode trains the embedded default (`recipes/sft.py` with no model: the tiny Llama on the generated long-tailed
chat mix, max length 4096) for one epoch, on 1 process and on 2 processes (gloo, one CPU thread each, so the idle time
of unbalanced batches is real). Naive and sorted batching give each device one sample per step (the paper's setup);
packing gives each device one pack. Throughput counts real tokens (no padding) and samples per second of training
(`train_runtime`); the ratio is each mode's samples/s over naive batching's on the same number of processes.
The machine is noisy, so every mode runs `--repeats` times, interleaved (repeat 1 of every mode, then repeat 2, ...),
and the table reports the median time with the spread. Every run of a mode has processes of its own; `--quick` (a
smoke test, whose seconds mean nothing) trains the modes one after another in the same processes, one launch per
process count, as process start-up is most of its time.

    python benchmark/throughput.py            # the full embedded default data (280 samples), 3 repeats
    python benchmark/throughput.py --quick    # a smoke test (small data, 1 repeat)
    python benchmark/throughput.py --chart throughput.png   # also draws the table: tokens/s per mode and processes

`--chart PATH` (default: no chart) writes a PNG of the table: tokens/s of every mode, grouped by process count, with
the min-max of the runs as whiskers, each bar labelled with its tokens/s and its ratio to naive batching, and the 2x
target drawn over the packing bars of 2+ processes.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile

import numpy as np
from _charts import command_line, grouped_bars, legend, machine, new_figure, save
from _lengths import free_port, print_header, print_table

from longalign_hf.training.distributed import run_then_exit, run_with_deadline

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODES = {
    "naive": ["--batching", "naive", "--loss_weighting", "sequence"],
    "sort": ["--batching", "sort", "--loss_weighting", "sequence"],
    "pack (token)": ["--batching", "pack", "--loss_weighting", "token"],
    "pack (sequence)": ["--batching", "pack", "--loss_weighting", "sequence"],
}
TARGET_PACK_OVER_NAIVE = 2.0


def _worker(out_path: str, modes: list[str], data_args: list[str]) -> list:
    """Train `modes` in turn in this process (one rank of a launch); the main process writes their figures."""
    import torch

    torch.set_num_threads(1)
    spec = importlib.util.spec_from_file_location("sft_recipe", os.path.join(ROOT, "recipes", "sft.py"))
    recipe = importlib.util.module_from_spec(spec)
    sys.modules["sft_recipe"] = recipe
    spec.loader.exec_module(recipe)
    trainers, results = [], {}
    for index, mode in enumerate(modes):
        output_dir = os.path.join(os.path.dirname(out_path), f"model-{index}")
        trainer = recipe.main(*recipe.parse_args([*MODES[mode], *data_args, "--output_dir", output_dir]))
        trainers.append(trainer)  # each one lives until the process ends (see `run_then_exit`)
        dataset = trainer.train_dataset
        samples = sum(dataset["num_samples"]) if "num_samples" in dataset.column_names else len(dataset)
        runtime = next(entry["train_runtime"] for entry in trainer.state.log_history if "train_runtime" in entry)
        results[mode] = {"samples": samples, "tokens": int(sum(dataset["length"])), "runtime": runtime}
    if trainers[-1].accelerator.is_main_process:
        with open(out_path, "w") as handle:
            json.dump(results, handle)
    return trainers


def _train(modes: list[str], num_processes: int, data_args: list[str], env: dict[str, str]) -> dict[str, dict]:
    """One launch on `num_processes` processes that trains `modes` in turn: each mode's samples, tokens and runtime."""
    with tempfile.TemporaryDirectory() as tmp:
        out_path = os.path.join(tmp, "result.json")
        launcher = [sys.executable]
        if num_processes > 1:
            launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
                        str(num_processes), "--mixed_precision", "no", "--dynamo_backend", "no",
                        "--main_process_port", str(free_port())]  # fmt: skip
        command = [*launcher, __file__, "--worker", out_path, ",".join(modes), "--", *data_args]
        completed = run_with_deadline(command, timeout=3600, env=env)
        if completed.returncode != 0:
            raise RuntimeError(
                f"{', '.join(modes)} on {num_processes} process(es) failed:\n{completed.stderr[-3000:]}"
            )
        with open(out_path) as handle:
            return json.load(handle)


def run(processes: list[int], data_args: list[str], repeats: int = 1, one_launch: bool = False) -> list[dict]:
    """Train every mode on every process count `repeats` times, interleaved; one result per (mode, processes).

    Each run of a mode gets a launch of its own, unless `one_launch` (a smoke test): then one launch per process count
    trains every mode in turn.
    """
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    groups = [list(MODES)] if one_launch else [[mode] for mode in MODES]
    runs: dict[tuple[str, int], list[dict]] = {}
    for _ in range(repeats):
        for num_processes in processes:
            for modes in groups:
                for mode, trial in _train(modes, num_processes, data_args, env).items():
                    runs.setdefault((mode, num_processes), []).append(trial)
    results = []
    for (mode, num_processes), trials in runs.items():
        runtimes = sorted(trial["runtime"] for trial in trials)
        results.append({
            "mode": mode, "processes": num_processes, "samples": trials[0]["samples"], "tokens": trials[0]["tokens"],
            "runtime": float(np.median(runtimes)), "runtimes": runtimes,
        })  # fmt: skip
    return results


def vs_naive(result: dict, results: list[dict]) -> float:
    """`result`'s samples/s over naive batching's on the same number of processes."""
    naive = next(r for r in results if r["mode"] == "naive" and r["processes"] == result["processes"])
    return (result["samples"] / result["runtime"]) / (naive["samples"] / naive["runtime"])


def chart(results: list[dict], path: str, command: str, repeats: int):
    """Draw `results` as the table shows them: tokens/s per mode (bars) and process count (groups); returns the figure.

    Each bar is the median run's tokens/s, its whisker (from 2 runs on) the slowest and fastest run's, its label (inside
    the bar) the table's tokens/s and "vs naive" cells. Over the packing bars of 2+ processes a dashed line marks the
    target (2x naive's tokens/s).
    """
    processes = list(dict.fromkeys(r["processes"] for r in results))
    cell = {(r["mode"], r["processes"]): r for r in results}
    modes = [mode for mode in MODES if any(r["mode"] == mode for r in results)]
    series, spread, labels = {}, {}, {}
    for mode in modes:
        rows = [cell.get((mode, n)) for n in processes]
        series[mode] = [r and r["tokens"] / r["runtime"] for r in rows]
        spread[mode] = [r and (r["tokens"] / r["runtimes"][-1], r["tokens"] / r["runtimes"][0]) for r in rows]
        labels[mode] = [
            f"{r['tokens'] / r['runtime']:,.0f}\n{vs_naive(r, results):.2f}x naive" if r else "" for r in rows
        ]
    figure, (axes,) = new_figure(width=11.0, height=5.4)
    groups = [f"{n} process{'es' if n > 1 else ''}" for n in processes]
    # Labels inside the bars: the target line just above the packing bars stays in sight.
    containers = grouped_bars(axes, groups, series, labels, spread if repeats > 1 else None, labels_inside=True)
    target_label = f"target: pack >= {TARGET_PACK_OVER_NAIVE:g}x naive (2+ processes)"
    for group, n in enumerate(processes):
        naive, packs = cell.get(("naive", n)), [containers[mode][group] for mode in modes if mode.startswith("pack")]
        if n > 1 and naive and packs:
            left, right = min(b.get_x() for b in packs), max(b.get_x() + b.get_width() for b in packs)
            target = TARGET_PACK_OVER_NAIVE * naive["tokens"] / naive["runtime"]
            axes.hlines(target, left, right, colors="0.2", linestyles="--", linewidth=1.5, label=target_label)
            target_label = None  # one legend entry
            axes.set_ylim(top=max(axes.get_ylim()[1], 1.15 * target))
    axes.set_ylabel("training throughput (tokens/s, real tokens, no padding)")
    axes.set_xlabel(
        "processes (gloo, 1 CPU thread each)" + ("; whiskers: slowest to fastest run" if repeats > 1 else "")
    )
    legend(axes, title="mode")
    first = results[0]
    title = (
        "Training throughput by batching mode: tiny Llama, one epoch of the embedded default\n"
        f"{first['samples']} samples, {first['tokens']:,} tokens; {machine()}; median of {repeats} run(s)"
    )
    save(figure, path, title, command)
    return figure


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", default="1,2", help="comma-separated process counts")
    parser.add_argument("--repeats", type=int, default=3, help="runs of every mode; the median is reported")
    parser.add_argument(
        "--quick", action="store_true", help="small data, one repeat, every mode in one launch: a smoke test"
    )
    parser.add_argument("--chart", metavar="PATH", help="also draw the table as a PNG chart at PATH (default: none)")
    parser.add_argument("--worker", nargs=2, metavar=("OUT", "MODES"), help=argparse.SUPPRESS)
    args, data_args = parser.parse_known_args(argv)
    if args.worker:
        out_path, modes = args.worker
        run_then_exit(_worker, out_path, modes.split(","), [a for a in data_args if a != "--"])
        return []
    argv = sys.argv[1:] if argv is None else argv
    print_header("benchmark/throughput.py", argv)
    data_args = ["--save_strategy", "no", "--logging_steps", "100000", "--num_train_epochs", "1",
                 "--gradient_accumulation_steps", "1", "--per_device_train_batch_size", "1"]  # fmt: skip
    if args.quick:
        data_args += ["--default_num_short", "16", "--default_num_long", "4", "--max_length", "1024"]
    repeats = 1 if args.quick else args.repeats
    results = run([int(n) for n in args.processes.split(",")], data_args, repeats, one_launch=args.quick)
    rows = []
    for result in results:
        ratio = vs_naive(result, results)
        target = status = ""
        if result["mode"].startswith("pack") and result["processes"] > 1:
            target, status = f">= {TARGET_PACK_OVER_NAIVE}x", "PASS" if ratio >= TARGET_PACK_OVER_NAIVE else "FAIL"
        rows.append([
            result["mode"], str(result["processes"]), f"{result['samples']}",
            f"{result['runtime']:.1f} ({result['runtimes'][0]:.1f}-{result['runtimes'][-1]:.1f})",
            f"{result['samples'] / result['runtime']:.2f}", f"{result['tokens'] / result['runtime']:,.0f}",
            f"{ratio:.2f}x", target, status,
        ])  # fmt: skip
    print(
        f"\nOne epoch of the embedded default (tiny Llama, 1 CPU thread per process); seconds: median (min-max) "
        f"of {repeats} run(s)\n"
    )
    print_table(
        ["mode", "processes", "samples", "seconds", "samples/s", "tokens/s", "vs naive", "target", "status"], rows
    )
    if args.chart:
        chart(results, args.chart, command_line("throughput.py", argv), repeats)
    return results


if __name__ == "__main__":
    main()
