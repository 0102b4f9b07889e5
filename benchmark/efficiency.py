"""Data-side training efficiency of naive batching, sorted batching and packing (LongAlign section 3.3), simulated.

No model runs: every sample costs `L + L**2 / C` token-equivalents (`sample_cost`), a step lasts as long as its
slowest device, and

    step efficiency = useful compute / (devices * sum over steps of the slowest device's compute)

with useful compute the sum of `sample_cost` over all samples. Naive batching: random batches of `--batch-size`
samples per device, padded to the longest sample of the device batch (`b * cost(L_max)`). Sorted batching:
`SortedBatchSampler`'s order, padded the same way. Packing: one pack per device per step, no padding (attention
stays inside each sample), in random order or in `balanced_pack_order`; bfd packs are first split to a multiple of
the devices (`split_packs`), as the trainer does. A step is one micro-step: with ZeRO-3 (the paper's setup) every
micro-step synchronizes the devices. The speed-up is naive batching's time over each method's. The model counts
compute only: short samples underuse a GPU and steps carry fixed costs, so measured speed-ups are smaller (the paper
reports 2.2x-2.9x from naive batching to packing or sorted batching on 8xA800).

Run from the repository root (after `pip install -e .`):

    python benchmark/efficiency.py                      # 100k chat-like + 10k long samples, 8 devices
    python benchmark/efficiency.py --lengths lens.txt   # your own token counts (one per line, or .npy)
    python benchmark/efficiency.py --lengths data/sft   # a tokenized data set (`length` or `input_ids` column)
    python benchmark/efficiency.py --quick              # a smoke test
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
from _lengths import load_lengths, long_tailed_lengths, print_header, print_table

from longalign_hf.training.packing import pack_stats, plan_packs
from longalign_hf.training.sampler import SortedBatchSampler
from longalign_hf.training.schedule import (
    DEFAULT_ATTENTION_CONSTANT,
    balanced_pack_order,
    sample_cost,
    split_packs,
    step_efficiency,
)

FILL_TARGET = 0.995
BALANCED_EFFICIENCY_TARGET = 0.97


def _padded_batches_time(
    order: np.ndarray, lengths: np.ndarray, devices: int, batch_size: int, attention_constant: float
) -> float:
    """Sum over steps of the slowest device, a device batch of `b` samples costing `b * cost(longest)`."""
    padded = np.concatenate([lengths[order], np.zeros(-len(order) % (devices * batch_size))])
    batches = padded.reshape(-1, devices, batch_size)
    device_cost = (batches > 0).sum(-1) * sample_cost(batches.max(-1), attention_constant)
    return float(device_cost.max(-1).sum())


def _packs_time(order: list[int], pack_costs: np.ndarray, devices: int) -> float:
    """Sum over steps of the costliest of the `devices` packs of the step."""
    return float(pack_costs.sum() / (devices * step_efficiency(pack_costs, order, devices)))


def simulate(
    lengths: np.ndarray,
    max_length: int = 65536,
    devices: int = 8,
    batch_size: int = 1,
    attention_constant: float = DEFAULT_ATTENTION_CONSTANT,
    seed: int = 0,
) -> dict:
    """Pack statistics per planner and step efficiency per batching method for `lengths` (all `<= max_length`).

    Returns:
        `dict` with `packing` (strategy -> `pack_stats`) and `methods` (a list of `{"method", "efficiency",
        "speedup"}`, naive batching first).
    """
    per_sample = sample_cost(lengths.astype(np.float64), attention_constant)
    useful = float(per_sample.sum())
    plans = {strategy: plan_packs(lengths, max_length, strategy=strategy) for strategy in ("bfd", "next_fit")}

    def pack_costs(plan: list[list[int]]) -> np.ndarray:
        return np.array([per_sample[pack].sum() for pack in plan])

    next_fit_costs = pack_costs(plans["next_fit"])
    # What the trainer trains: packs split to a multiple of the devices, so none repeats in the last step.
    bfd_costs = pack_costs(split_packs(plans["bfd"], lengths, devices, attention_constant))
    sorted_order = np.fromiter(
        SortedBatchSampler(lengths, batch_size, num_replicas=devices, seed=seed), dtype=np.int64
    )
    times = {
        f"naive batching ({batch_size}/device, padded)": _padded_batches_time(
            np.random.default_rng(seed).permutation(len(lengths)), lengths, devices, batch_size, attention_constant
        ),
        f"sorted batching ({batch_size}/device, padded)": _padded_batches_time(
            sorted_order, lengths, devices, batch_size, attention_constant
        ),
        "packing next_fit, random order (reference code)": _packs_time(
            balanced_pack_order(next_fit_costs, devices, seed, balance=False), next_fit_costs, devices
        ),
        "packing bfd, random order": _packs_time(
            balanced_pack_order(bfd_costs, devices, seed, balance=False), bfd_costs, devices
        ),
        "packing bfd, balanced schedule": _packs_time(
            balanced_pack_order(bfd_costs, devices, seed), bfd_costs, devices
        ),
    }
    naive_time = next(iter(times.values()))
    return {
        "packing": {strategy: pack_stats(plan, lengths, max_length) for strategy, plan in plans.items()},
        "methods": [
            {"method": method, "efficiency": useful / (devices * time), "speedup": naive_time / time}
            for method, time in times.items()
        ],
    }


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20k chat-like + 2k long samples (smoke test).")
    parser.add_argument(
        "--lengths",
        help="Token counts to use instead of the synthetic mix: a .npy, a text file with one per line, or a tokenized "
        "data set (.parquet/.jsonl/.json, a folder or a Hub id with a `length` or `input_ids` column).",
    )
    parser.add_argument("--split", default="train", help="Split of the --lengths data set.")
    parser.add_argument("--n-short", type=int, default=100_000, help="Chat-like samples in the synthetic mix.")
    parser.add_argument("--n-long", type=int, default=10_000, help="Long samples (8k to max length) in the mix.")
    parser.add_argument("--max-length", type=int, default=65536, help="Pack capacity; longer samples are truncated.")
    parser.add_argument("--devices", type=int, default=8, help="Data-parallel devices.")
    parser.add_argument("--batch-size", type=int, default=1, help="Samples per device per step (naive, sorted).")
    parser.add_argument(
        "--attention-constant", type=float, default=DEFAULT_ATTENTION_CONSTANT, help="C in the cost L + L^2/C."
    )
    parser.add_argument("--seed", type=int, default=0, help="Seed of the mix, the shuffles and the schedules.")
    args = parser.parse_args(argv)

    print_header("benchmark/efficiency.py", argv)
    if args.lengths:
        lengths = load_lengths(args.lengths, args.split)
        source = args.lengths
    else:
        n_short, n_long = (20_000, 2_000) if args.quick else (args.n_short, args.n_long)
        lengths = long_tailed_lengths(n_short, n_long, args.seed, args.max_length)
        source = f"long_tailed_lengths({n_short}, {n_long}, seed={args.seed})"
    empty, too_long = int((lengths < 1).sum()), int((lengths > args.max_length).sum())
    lengths = np.minimum(lengths[lengths > 0], args.max_length)
    print(
        f"# {len(lengths):,} samples from {source} ({empty} empty dropped, {too_long} truncated to "
        f"{args.max_length}); mean {lengths.mean():.0f} tokens, {(lengths >= 8192).mean():.1%} >= 8k; "
        f"{args.devices} devices, C = {args.attention_constant:g}"
    )
    result = simulate(lengths, args.max_length, args.devices, args.batch_size, args.attention_constant, args.seed)

    print("\nPacking")
    print_table(
        ["planner", "packs", "fill", "samples/pack (mean, min, max)", "target", "status"],
        [
            [
                strategy,
                str(stats["num_packs"]),
                f"{stats['fill']:.5f}",
                f"{stats['samples_per_pack_mean']:.1f}, {stats['samples_per_pack_min']}, "
                f"{stats['samples_per_pack_max']}",
                f">= {FILL_TARGET}" if strategy == "bfd" else "",
                ("PASS" if stats["fill"] >= FILL_TARGET else "FAIL") if strategy == "bfd" else "",
            ]
            for strategy, stats in result["packing"].items()
        ],
    )
    print("\nStep efficiency")
    balanced = result["methods"][-1]
    print_table(
        ["method", "step efficiency", "speed-up vs naive", "target", "status"],
        [
            [
                row["method"],
                f"{row['efficiency']:.4f}",
                f"{row['speedup']:.2f}x",
                f">= {BALANCED_EFFICIENCY_TARGET}" if row is balanced else "",
                ("PASS" if row["efficiency"] >= BALANCED_EFFICIENCY_TARGET else "FAIL") if row is balanced else "",
            ]
            for row in result["methods"]
        ],
    )
    return result


if __name__ == "__main__":
    main()
