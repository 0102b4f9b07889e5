"""Measured training throughput of naive batching, sorted batching and packing, side by side in one run.

Every mode trains the embedded default (`recipes/sft.py` with no model: the tiny Llama on the generated long-tailed
chat mix, max length 4096) for one epoch, on 1 process and on 2 processes (gloo, one CPU thread each, so the idle time
of unbalanced batches is real). Naive and sorted batching give each device one sample per step (the paper's setup);
packing gives each device one pack. Throughput counts real tokens (no padding) and samples per second of training
(`train_runtime`); the ratio is each mode's samples/s over naive batching's on the same number of processes.
The machine is noisy, so every mode runs `--repeats` times, interleaved (repeat 1 of every mode, then repeat 2, ...),
and the table reports the median time with the spread.

    python benchmark/throughput.py            # the full embedded default data (280 samples), 3 repeats
    python benchmark/throughput.py --quick    # a smoke test (small data, 1 repeat)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile

import numpy as np
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


def _worker(out_path: str, recipe_args: list[str]):
    import torch

    torch.set_num_threads(1)
    spec = importlib.util.spec_from_file_location("sft_recipe", os.path.join(ROOT, "recipes", "sft.py"))
    recipe = importlib.util.module_from_spec(spec)
    sys.modules["sft_recipe"] = recipe
    spec.loader.exec_module(recipe)
    trainer = recipe.main(*recipe.parse_args(recipe_args))
    dataset = trainer.train_dataset
    samples = sum(dataset["num_samples"]) if "num_samples" in dataset.column_names else len(dataset)
    runtime = next(entry["train_runtime"] for entry in trainer.state.log_history if "train_runtime" in entry)
    if trainer.accelerator.is_main_process:
        with open(out_path, "w") as handle:
            json.dump({"samples": samples, "tokens": int(sum(dataset["length"])), "runtime": runtime}, handle)
    return trainer


def _train_once(mode: str, num_processes: int, data_args: list[str], env: dict[str, str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out_path = os.path.join(tmp, "result.json")
        recipe_args = [*MODES[mode], *data_args, "--output_dir", os.path.join(tmp, "model")]
        launcher = [sys.executable]
        if num_processes > 1:
            launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
                        str(num_processes), "--mixed_precision", "no", "--dynamo_backend", "no",
                        "--main_process_port", str(free_port())]  # fmt: skip
        command = [*launcher, __file__, "--worker", out_path, "--", *recipe_args]
        completed = run_with_deadline(command, timeout=3600, env=env)
        if completed.returncode != 0:
            raise RuntimeError(f"{mode} on {num_processes} process(es) failed:\n{completed.stderr[-3000:]}")
        with open(out_path) as handle:
            return json.load(handle)


def run(processes: list[int], data_args: list[str], repeats: int = 1) -> list[dict]:
    """Train every mode on every process count `repeats` times, interleaved; one result per (mode, processes)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    runs: dict[tuple[str, int], list[dict]] = {}
    for _ in range(repeats):
        for num_processes in processes:
            for mode in MODES:
                runs.setdefault((mode, num_processes), []).append(_train_once(mode, num_processes, data_args, env))
    results = []
    for (mode, num_processes), trials in runs.items():
        runtimes = sorted(trial["runtime"] for trial in trials)
        results.append({
            "mode": mode, "processes": num_processes, "samples": trials[0]["samples"], "tokens": trials[0]["tokens"],
            "runtime": float(np.median(runtimes)), "runtimes": runtimes,
        })  # fmt: skip
    return results


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", default="1,2", help="comma-separated process counts")
    parser.add_argument("--repeats", type=int, default=3, help="runs of every mode; the median is reported")
    parser.add_argument("--quick", action="store_true", help="small data and one repeat, for a smoke test")
    parser.add_argument("--worker", nargs=1, metavar="OUT", help=argparse.SUPPRESS)
    args, recipe_args = parser.parse_known_args(argv)
    if args.worker:
        run_then_exit(_worker, args.worker[0], [a for a in recipe_args if a != "--"])
        return []
    print_header("benchmark/throughput.py", sys.argv[1:] if argv is None else argv)
    data_args = ["--save_strategy", "no", "--logging_steps", "100000", "--num_train_epochs", "1",
                 "--gradient_accumulation_steps", "1", "--per_device_train_batch_size", "1"]  # fmt: skip
    if args.quick:
        data_args += ["--default_num_short", "16", "--default_num_long", "4", "--max_length", "1024"]
    repeats = 1 if args.quick else args.repeats
    results = run([int(n) for n in args.processes.split(",")], data_args, repeats)
    rows = []
    for result in results:
        naive = next(r for r in results if r["mode"] == "naive" and r["processes"] == result["processes"])
        ratio = (result["samples"] / result["runtime"]) / (naive["samples"] / naive["runtime"])
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
    return results


if __name__ == "__main__":
    main()
