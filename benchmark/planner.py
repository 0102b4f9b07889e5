"""Speed and fill of `plan_packs` on 1e4, 1e5 and 1e6 lengths of the long-tailed mix, bfd and next_fit.

Each size is 99% chat-like samples and 1% long documents (`long_tailed_lengths`), passed as a Python list like a
`datasets` column, with max_length 65536. The time is the best of `--repeats` runs; `t / t(n/10)` next to the
`n log n` ratio shows how the planner grows.

Run from the repository root (after `pip install -e .`):

    python benchmark/planner.py            # 1e4, 1e5, 1e6
    python benchmark/planner.py --quick    # 1e3, 1e4: a smoke test
"""

from __future__ import annotations

import argparse
import math
import sys
import time

from _lengths import long_tailed_lengths, print_header, print_table

from longalign_hf.training.packing import PACKING_STRATEGIES, pack_stats, plan_packs


def run(sizes: list[int], max_length: int = 65536, repeats: int = 3, seed: int = 0) -> list[dict]:
    """Time `plan_packs` for every strategy and size; one dict per (strategy, size)."""
    rows = []
    for strategy in PACKING_STRATEGIES:
        previous = None
        for n in sizes:
            lengths = long_tailed_lengths(n - n // 100, n // 100, seed, max_length).tolist()
            seconds = math.inf
            for _ in range(repeats):
                start = time.perf_counter()
                plan = plan_packs(lengths, max_length, strategy=strategy)
                seconds = min(seconds, time.perf_counter() - start)
            stats = pack_stats(plan, lengths, max_length)
            rows.append(
                {
                    "strategy": strategy,
                    "n": n,
                    "seconds": seconds,
                    "fill": stats["fill"],
                    "packs": stats["num_packs"],
                    "growth": seconds / previous[1] if previous else None,
                    "n_log_n_growth": n * math.log(n) / (previous[0] * math.log(previous[0])) if previous else None,
                }
            )
            previous = (n, seconds)
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1e3 and 1e4 lengths only (smoke test).")
    parser.add_argument("--max-length", type=int, default=65536, help="Pack capacity in tokens.")
    parser.add_argument("--repeats", type=int, default=3, help="Runs per measurement; the best is reported.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the length mix.")
    args = parser.parse_args(argv)

    print_header("benchmark/planner.py", argv)
    sizes = [1_000, 10_000] if args.quick else [10_000, 100_000, 1_000_000]
    rows = run(sizes, args.max_length, args.repeats, args.seed)
    print_table(
        ["strategy", "n", "seconds", "fill", "packs", "t / t(n/10)", "n log n ratio"],
        [
            [
                row["strategy"],
                f"{row['n']:,}",
                f"{row['seconds']:.3g}",
                f"{row['fill']:.5f}",
                str(row["packs"]),
                "" if row["growth"] is None else f"{row['growth']:.1f}",
                "" if row["n_log_n_growth"] is None else f"{row['n_log_n_growth']:.1f}",
            ]
            for row in rows
        ],
    )
    return rows


if __name__ == "__main__":
    main()
