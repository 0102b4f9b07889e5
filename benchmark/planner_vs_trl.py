"""Our pack planner against TRL's `pack_dataset` and axolotl's sample packer on the same lengths: seconds, packs, fill.

Rows, all on one set of lengths (default: 840,000 of the long-tailed mix, `_lengths.long_tailed_lengths`, max length
65,536; or `--lengths FILE`, read by `_lengths.load_lengths`):

- `plan_packs` bfd and next_fit: our planner alone (sample indices per pack), as `benchmark/planner.py` times it.
- our `pack_dataset`: that plan plus the packed Arrow rows, the step that is like-for-like with TRL's.
- TRL `pack_dataset`, as `SFTTrainer` calls it: strategy "bfd", `map_kwargs` `num_proc` (`dataset_num_proc`'s
  default, None) and `desc`, so `Dataset.map` hands `_pack_bfd` blocks of its default 1,000 rows and each block is
  packed on its own.
- TRL BFD over the whole set: the same public call with `batch_size=None`, which `Dataset.map` reads as one batch of
  every row (`--skip-trl-whole` leaves it out).
- axolotl's multipack sampler, when `axolotl.utils.samplers.multipack` imports (otherwise one line says the rows were
  skipped, why, and how to install it): one `MultipackBatchSampler.generate_batches()`, the sampler built as
  `AxolotlTrainer._create_multipack_sampler` builds it for `sample_packing: true` with flash attention and
  micro_batch_size 1 (`_axolotl_packer`'s docstring has every argument): a `RandomSampler`, first-fit in that order
  per group of 100,000 samples, at most 200 samples a pack, in min(4, CPU count) forked processes; and the same
  with `sample_packing_sequentially` (next-fit). It plans from the lengths as a numpy array (the trainer's
  `get_dataset_lengths` is left out, as the `plan_packs` rows get a ready list) and copies no tokens: its collator
  concatenates each pack's samples at every step. The trainer plans more than once: `len(sampler)`, which it calls
  as it builds the sampler, plans once plus 4 times more (`num_count_samples`) to estimate the batch count. numba
  compiles `pack_group` on its first call (about 0.6 s here); the benchmark compiles it in its own process before
  timing, so its forked workers inherit it. In the trainer, whose main process hands every group to forked workers
  when `dataset_num_proc` is 2 or more (its default on a multi-core machine), each worker compiles it again on every
  plan (about 0.4 s a plan here): that cost is left out. Each call also pays `generate_batches`'
  `gc.collect()` of the whole process and the forks: on `--quick`'s 5,000 lengths they, not the packing, are
  most of axolotl's seconds.

The data set holds no real tokens. Its `input_ids` are an Arrow list column whose offsets give each row its length,
over one shared buffer of int32 zeros that numpy gets from calloc, so untouched pages cost no memory. TRL plans from
`pc.list_value_length` of the first column, and only copies token values (filter, `list_slice`, `take`, then
`Dataset.map` writes its output): it never reads a token to decide a pack, so it plans exactly as on real tokens and
pays the same copies. SFTTrainer packs `input_ids` and `labels`; TRL gets `input_ids` alone here, because the
whole-set row keeps about three copies of every packed column alive: with one int32 column of the default's 1.13
billion tokens the run peaks at about 14.3 GiB resident (BENCHMARKS.md §9), and a second column would need about twice that.
`--labels` adds the `labels` column to TRL's input, as SFTTrainer does (with `--skip-trl-whole` or a smaller `--n`
on a 24 GiB machine). Our `pack_dataset` needs `labels` and always copies both columns, so the like-for-like rows
favour TRL by default. The data set lives in memory, so `Dataset.map` writes no cache file and recomputes on every
repeat; SFTTrainer, on a data set loaded from disk, would also write its packed rows to a cache file.
`--no-token-bytes` builds the token columns of Arrow nulls instead (no bytes to copy), which leaves each method's
planning and row bookkeeping: where its time goes when copies are taken out.

Fill is tokens / (packs x max_length). Every row is checked to have packed each sample exactly once: plan indices are
0..n-1 once each; for packed rows, the `seq_lengths` are the input lengths (as a multiset, the tokens being all zero),
each row's `seq_lengths` add up to its token count, and the tokens add up to the input's. axolotl's plans are checked
to hold each sample at most once, and no pack over max_length tokens or 200 samples; the samples they leave out (its
`drop_last` drops a last batch of fewer than `batch_size` packs, which a `batch_size` of 1 never has) are counted,
named on the line under the table and left out of its fill, which counts packed tokens.

axolotl is not a dependency of `longalign_hf`. Its sampler module needs only axolotl itself, numba and llvmlite next
to this project's torch, accelerate and transformers; checked with numpy 2.4 and torch 2.13:

    pip install --no-deps axolotl==0.19.0 numba==0.68.1 llvmlite==0.50.0

Run from the repository root (after `pip install -e .`):

    python benchmark/planner_vs_trl.py                      # 840,000 lengths, best of 3
    python benchmark/planner_vs_trl.py --no-token-bytes     # the same without token copies
    python benchmark/planner_vs_trl.py --lengths lengths.npy
    python benchmark/planner_vs_trl.py --quick              # 5,000 lengths: a smoke test
    python benchmark/planner_vs_trl.py --chart planner_vs_trl.png

`--chart PATH` (default: no chart) writes a PNG of the table: one bar per method (named as in the table) in two
panels, seconds on a log scale (labelled with the seconds and the time / plan_packs bfd) and fill on 0-1 (labelled
with the table's fill, and the samples a method dropped, if any). Each library has its colour and legend entry,
named with its version: ours (longalign_hf) blue, TRL's orange, axolotl's green.
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
import time
from collections.abc import Callable

import _axolotl_packer
import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import trl
from _charts import COLORS, command_line, grouped_bars, legend, machine, new_figure, save
from _lengths import load_lengths, long_tailed_lengths, print_header, print_table
from datasets.fingerprint import Hasher

from longalign_hf import pack_dataset, pack_stats, plan_packs


def token_dataset(lengths: np.ndarray, token_bytes: bool = True) -> datasets.Dataset:
    """A tokenized data set (`input_ids`, `labels`, `length`) whose rows have `lengths` tokens, all zero.

    `input_ids` and `labels` are one list array over one calloc'd zero buffer: building it touches no token memory.
    `token_bytes=False` makes the tokens Arrow nulls, which have no bytes for a filter or take to copy.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    list_type = pa.ListArray if offsets[-1] < 2**31 else pa.LargeListArray  # int32 offsets while they fit
    offsets = offsets.astype(np.int32 if list_type is pa.ListArray else np.int64)
    values = pa.array(np.zeros(int(offsets[-1]), dtype=np.int32)) if token_bytes else pa.nulls(int(offsets[-1]))
    tokens = list_type.from_arrays(offsets, values)
    table = pa.table({"input_ids": tokens, "labels": tokens, "length": pa.array(lengths)})
    # Given, not computed: `datasets` would otherwise hash every token, which takes longer than packing them.
    return datasets.Dataset(table, fingerprint=Hasher.hash(("planner_vs_trl", lengths)))


def trl_pack(
    dataset: datasets.Dataset, max_length: int, whole: bool = False, columns: tuple[str, ...] = ("input_ids",)
) -> datasets.Dataset:
    """TRL's public `pack_dataset` with strategy "bfd", called as `SFTTrainer._prepare_dataset` calls it.

    `whole=True` packs every row in one batch (`batch_size=None`) instead of `Dataset.map`'s blocks of 1,000 rows.
    """
    map_kwargs = {"num_proc": None, "desc": "Packing train dataset"}  # SFTTrainer's, at dataset_num_proc's default
    if whole:
        map_kwargs["batch_size"] = None
    return trl.pack_dataset(dataset.select_columns(list(columns)), max_length, "bfd", map_kwargs)


def check_plan(plan: list[list[int]], lengths: np.ndarray, max_length: int) -> dict:
    """Packs, samples and tokens of a plan, after checking every index is in exactly one pack."""
    members = np.fromiter(itertools.chain.from_iterable(plan), dtype=np.int64)
    if not np.array_equal(np.sort(members), np.arange(len(lengths))):
        raise AssertionError("the plan does not hold every sample exactly once")
    stats = pack_stats(plan, lengths, max_length)
    return {"packs": stats["num_packs"], "samples": stats["num_samples"], "tokens": stats["tokens"]}


def check_packed(packed: datasets.Dataset, lengths: np.ndarray, max_length: int) -> dict:
    """Packs, samples and tokens of packed rows, after checking they hold every sample once and nothing else."""
    table = packed.with_format("arrow")[:]
    row_tokens = pc.list_value_length(table.column("input_ids").combine_chunks()).to_numpy()
    seq_lengths = table.column("seq_lengths").combine_chunks()
    samples = seq_lengths.flatten().to_numpy()
    per_row = np.add.reduceat(samples, seq_lengths.offsets.to_numpy()[:-1]) if len(seq_lengths) else samples
    if not np.array_equal(per_row, row_tokens) or row_tokens.max(initial=0) > max_length:
        raise AssertionError("a packed row's seq_lengths do not add up to its tokens, or it exceeds max_length")
    if not np.array_equal(np.sort(samples), np.sort(lengths)):
        raise AssertionError("the packed rows do not hold every input sample exactly once")
    return {"packs": len(table), "samples": len(samples), "tokens": int(row_tokens.sum())}


def _best_of(repeats: int, pack: Callable[..., object], *args: object) -> tuple[float, object]:
    """Best wall time of `repeats` calls of `pack(*args)`, and the last call's result."""
    seconds, result = math.inf, None
    for _ in range(repeats):
        result = None  # free the previous output before packing again
        start = time.perf_counter()
        result = pack(*args)
        seconds = min(seconds, time.perf_counter() - start)
    return seconds, result


def run(
    lengths: np.ndarray,
    max_length: int = 65536,
    repeats: int = 3,
    trl_whole: bool = True,
    labels: bool = False,
    token_bytes: bool = True,
    axolotl=None,
    seed: int = 0,
) -> list[dict]:
    """Time every method on `lengths`; one dict per method, in table order.

    `axolotl`: axolotl's `multipack` module (`_axolotl_packer.multipack_or_reason`), which adds its rows, its
    `RandomSampler` seeded with `seed`; None leaves them out.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    as_list = lengths.tolist()  # a `datasets` column, as `benchmark/planner.py` passes it
    dataset = token_dataset(lengths, token_bytes)
    trl_columns = ("input_ids", "labels") if labels else ("input_ids",)
    ours, trl_library = "longalign_hf", f"TRL {trl.__version__}"
    # (method, library, token columns copied, pack(dataset, lengths as a list, lengths as an array), check)
    methods = [
        ("plan_packs bfd", ours, "", lambda data, ls, _: plan_packs(ls, max_length, "bfd"), check_plan),
        ("plan_packs next_fit", ours, "", lambda data, ls, _: plan_packs(ls, max_length, "next_fit"), check_plan),
        ("our pack_dataset (bfd plan + rows)", ours, "input_ids, labels",
         lambda data, ls, _: pack_dataset(data, max_length), check_packed),
        ("TRL pack_dataset, as SFTTrainer (bfd per 1,000 rows)", trl_library, ", ".join(trl_columns),
         lambda data, ls, _: trl_pack(data, max_length, columns=trl_columns), check_packed),
    ]  # fmt: skip
    if trl_whole:
        methods.append(
            ("TRL bfd over the whole set", trl_library, ", ".join(trl_columns),
             lambda data, ls, _: trl_pack(data, max_length, whole=True, columns=trl_columns), check_packed)
        )  # fmt: skip
    if axolotl is not None:
        _axolotl_packer.warm_up(axolotl)
        library, plan = _axolotl_packer.library(), _axolotl_packer.multipack_plan
        methods += [
            (f"axolotl multipack, as its trainer (first-fit per {_axolotl_packer.GROUP_SIZE:,} samples)", library, "",
             lambda data, ls, array: plan(axolotl, array, max_length, seed=seed),
             _axolotl_packer.check_multipack_plan),
            ("axolotl multipack, sample_packing_sequentially (next-fit)", library, "",
             lambda data, ls, array: plan(axolotl, array, max_length, sequential=True, seed=seed),
             _axolotl_packer.check_multipack_plan),
        ]  # fmt: skip
    # A first call pays one-off imports and set-up (about 6 s for TRL's first `Dataset.map`): keep it out of the times.
    for _, _, _, pack, _ in methods:
        pack(token_dataset(lengths[:8], token_bytes), as_list[:8], lengths[:8])
    rows = []
    for name, library, columns, pack, check in methods:
        seconds, result = _best_of(repeats, pack, dataset, as_list, lengths)
        counts = check(result, lengths, max_length)
        del result
        rows.append({"method": name, "library": library, "columns": columns, "seconds": seconds, **counts})
        rows[-1]["fill"] = counts["tokens"] / (counts["packs"] * max_length)
    for row in rows:
        row["vs_ours"] = row["seconds"] / rows[0]["seconds"]
    return rows


def _fill_label(row: dict) -> str:
    """The table's fill, and the samples a method left out of its packs, if any."""
    return f"{row['fill']:.5f}" + (f" ({row['dropped']:,} samples dropped)" if row.get("dropped") else "")


def chart(rows: list[dict], path: str, command: str, source: str, max_length: int, repeats: int):
    """Draw the table's rows: seconds (log scale) and fill of every method, as horizontal bars; returns the figure."""
    figure, (time_axes, fill_axes) = new_figure(
        panels=2, width=7.2, height=max(4.2, 0.5 * len(rows) + 2.6), sharey=True
    )
    methods = [row["method"] for row in rows]
    libraries = list(dict.fromkeys(row["library"] for row in rows))  # in the table's order
    # A colour per library, the same in every chart: longalign_hf, TRL, axolotl.
    color_of = {library: COLORS[("longalign_hf", "TRL", "axolotl").index(library.split()[0])] for library in libraries}
    colors = [color_of[row["library"]] for row in rows]
    seconds = [f"{row['seconds']:.3g} s ({row['vs_ours']:.3g}x)" for row in rows]
    for axes, key, labels, log in ((time_axes, "seconds", seconds, True),
                                   (fill_axes, "fill", [_fill_label(row) for row in rows], False)):  # fmt: skip
        (bars,) = grouped_bars(axes, methods, {key: [row[key] for row in rows]}, {key: labels}, log=log,
                               horizontal=True).values()  # fmt: skip
        for bar, color in zip(bars, colors):
            bar.set_color(color)
    time_axes.invert_yaxis()  # the table's order, top to bottom
    time_axes.set_xlabel(f"seconds, best of {repeats} (log scale); (Nx): time / plan_packs bfd")
    fill_axes.set_xlim(0, 1.25)
    fill_axes.set_xticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    fill_axes.set_xlabel("fill: tokens / (packs x max_length), 0-1")
    from matplotlib.patches import Patch

    legend(fill_axes, [Patch(color=color_of[library]) for library in libraries], libraries)
    packers = {"TRL": "TRL's pack_dataset", "axolotl": "axolotl's multipack sampler"}
    theirs = " and ".join(packers[library.split()[0]] for library in libraries if library != "longalign_hf")
    title = (
        f"Packing {source} into rows of {max_length:,} tokens: our planner and pack_dataset vs {theirs}\n"
        f"{machine()}; seconds: best of {repeats}"
    )
    save(figure, path, title, command)
    return figure


def main(argv: list[str] | None = None) -> list[dict]:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5,000 generated lengths (smoke test).")
    parser.add_argument("--n", type=int, help="How many lengths to generate (default 840,000); not with --lengths.")
    parser.add_argument("--lengths", help="Token counts to pack instead: .npy, one per line, or a tokenized data set.")
    parser.add_argument("--max-length", type=int, default=65536, help="Pack capacity in tokens.")
    parser.add_argument("--repeats", type=int, default=3, help="Runs per method; the best is reported.")
    parser.add_argument(
        "--seed", type=int, default=0, help="Seed of the generated length mix and of axolotl's RandomSampler."
    )
    parser.add_argument("--skip-trl-whole", action="store_true", help="Leave out TRL's BFD over the whole set.")
    parser.add_argument(
        "--labels", action="store_true", help="TRL packs a labels column too, as SFTTrainer does (~2x its memory)."
    )
    parser.add_argument(
        "--no-token-bytes", action="store_true", help="Tokens as Arrow nulls: time planning without token copies."
    )
    parser.add_argument("--chart", metavar="PATH", help="Also draw the table as a PNG chart at PATH (default: none).")
    args = parser.parse_args(argv)
    if args.repeats < 1 or (args.n is not None and args.n < 1):
        parser.error("--repeats and --n must be positive")
    if args.lengths is not None and (args.n is not None or args.quick):
        parser.error("--n and --quick size the generated lengths; --lengths packs the file's lengths as they are")
    if args.lengths is not None:
        lengths = load_lengths(args.lengths)
        source = f"{len(lengths):,} lengths from {args.lengths}"
        bad = int(np.count_nonzero((lengths < 1) | (lengths > args.max_length)))
        if bad:
            parser.error(
                f"{bad:,} of the lengths in {args.lengths} are not in 1..{args.max_length}: both planners need "
                "samples that fit (TRL would truncate them); drop or truncate them first, or raise --max-length"
            )
    else:
        n = 5_000 if args.quick else args.n or 840_000
        lengths = long_tailed_lengths(n - n // 100, n // 100, args.seed, args.max_length)
        source = f"{n:,} lengths from long_tailed_lengths({n - n // 100}, {n // 100}, seed={args.seed})"

    print_header("benchmark/planner_vs_trl.py", argv)
    axolotl, skipped = _axolotl_packer.multipack_or_reason()
    print(
        f"# {source}: {int(lengths.sum()):,} tokens, max_length {args.max_length:,}; trl {trl.__version__}, "
        f"datasets {datasets.__version__}, pyarrow {pa.__version__}; "
        f"{'null tokens (no bytes)' if args.no_token_bytes else 'int32 tokens'}; seconds: best of {args.repeats}"
    )
    print(_axolotl_packer.describe() if axolotl else f"# axolotl rows skipped: {skipped}")
    rows = run(
        lengths,
        args.max_length,
        args.repeats,
        trl_whole=not args.skip_trl_whole,
        labels=args.labels,
        token_bytes=not args.no_token_bytes,
        axolotl=axolotl,
        seed=args.seed,
    )
    print_table(
        ["method", "token columns copied", "seconds", "time / plan_packs bfd", "packs", "fill"],
        [
            [
                row["method"],
                row["columns"],
                f"{row['seconds']:.3g}",
                f"{row['vs_ours']:.3g}x",
                f"{row['packs']:,}",
                f"{row['fill']:.5f}",
            ]
            for row in rows
        ],
    )
    dropping = [f"{row['method']} dropped {row['dropped']:,} ({row['dropped_tokens']:,} tokens)"
                for row in rows if row.get("dropped")]  # fmt: skip
    print(
        f"Every method packed each of the {len(lengths):,} samples exactly once ({int(lengths.sum()):,} tokens)"
        + (f", except: {'; '.join(dropping)}; the rest at most once." if dropping else ".")
    )
    if args.chart:
        tokens = "null tokens" if args.no_token_bytes else "int32 tokens"
        chart(rows, args.chart, command_line("planner_vs_trl.py", argv), f"{source} ({tokens})", args.max_length,
              args.repeats)  # fmt: skip
    return rows


if __name__ == "__main__":
    main()
