"""axolotl's sample packer, called as axolotl's trainer calls it, for `benchmark/planner_vs_trl.py`'s axolotl rows.

With `sample_packing: true`, `AxolotlTrainer._create_multipack_sampler` (axolotl/core/trainers/base.py) builds
`MultipackBatchSampler(RandomSampler(dataset), lengths=get_dataset_lengths(dataset), batch_max_len=...,
batch_size=..., group_size=..., bin_size=..., sequential=..., drop_last=True, num_processes=dataset_num_proc,
mp_start_method="fork")`. With an attention that supports packing (flash attention: `multipack_real_batches` is
then False) its `batch_size` is 1 and `batch_max_len` is micro_batch_size x sequence_len: one pack of max_length
tokens per step at micro_batch_size 1, the rows' setting. `group_size` 100,000 and `bin_size` 200 (samples per
pack at most) are the config's defaults, `dataset_num_proc` defaults to axolotl's `get_default_process_count()`
(the CPU count), and `generate_batches` hands `pack_parallel` min(4, that) processes. `generate_batches` then
packs each group of 100,000 samples, in the sampler's random order, first-fit (`pack_group`, a numba function:
each sample goes into the first pack it fits, without sorting), in forked worker processes when there are two or
more; `sample_packing_sequentially: true` packs next-fit in the same order instead (`allocate_sequentially`).
`drop_last=True` drops a last batch of fewer than `batch_size` packs, which a `batch_size` of 1 never has.

This module needs axolotl and numba, which `longalign_hf` does not: `multipack_or_reason` imports axolotl's
sampler module or says why it cannot.
"""

from __future__ import annotations

import itertools
import logging
from importlib import metadata

import numpy as np
import torch
from torch.utils.data import RandomSampler

# Verified with numpy 2.4 and torch 2.13; axolotl's own dependencies are not needed by its sampler module.
INSTALL = "pip install --no-deps axolotl==0.19.0 numba==0.68.1 llvmlite==0.50.0"
# MultipackBatchSampler's arguments in AxolotlTrainer at the config's defaults, micro_batch_size 1.
GROUP_SIZE, BIN_SIZE, BATCH_SIZE = 100_000, 200, 1


def multipack_or_reason():
    """`(axolotl.utils.samplers.multipack, "")`, or `(None, why it cannot be imported and how to install it)`."""
    try:
        from axolotl.utils.samplers import multipack
    except ImportError as error:  # numba's own check of numpy's version is an ImportError too
        return None, f"cannot import axolotl.utils.samplers.multipack ({error}); to add them: {INSTALL}"
    return multipack, ""


def library() -> str:
    """axolotl and its version, as the chart's legend names it."""
    return f"axolotl {metadata.version('axolotl')}"


def describe() -> str:
    """One line for the benchmark's header: versions and the sampler's arguments."""
    from axolotl.utils.datasets import get_default_process_count

    processes = min(4, get_default_process_count())
    return (
        f"# {library()} (numba {metadata.version('numba')}): MultipackBatchSampler as AxolotlTrainer builds it "
        f"(RandomSampler, batch_size {BATCH_SIZE}, group_size {GROUP_SIZE:,}, bin_size {BIN_SIZE}, drop_last; "
        f"{processes} process{'es, forked' if processes > 1 else ''}), "
        "one plan per call; its numba functions are compiled before timing"
    )


def warm_up(multipack) -> None:
    """Compile axolotl's numba packers in this process, so that no timed call (nor a forked worker) compiles them.

    Also quiets the sampler's warning that sequential packing is given a `RandomSampler`: the trainer gives it one
    unless `curriculum_sampling` is set, and the header says so.
    """
    logging.getLogger(multipack.__name__).setLevel(logging.ERROR)
    lengths = np.array([3, 5, 4], dtype=np.int32)
    multipack.pack_group(lengths, 0, 8, len(lengths), BIN_SIZE, True)
    multipack.allocate_sequentially(lengths, 0, 8, 1)


def multipack_plan(multipack, lengths: np.ndarray, max_length: int, sequential: bool = False, seed: int = 0):
    """One plan of `MultipackBatchSampler` built as AxolotlTrainer builds it: the sample indices of every pack.

    The `RandomSampler`'s generator is seeded with `seed`, so every call draws the same order.
    """
    from axolotl.utils.datasets import get_default_process_count

    sampler = multipack.MultipackBatchSampler(
        RandomSampler(range(len(lengths)), generator=torch.Generator().manual_seed(seed)),
        batch_size=BATCH_SIZE,
        batch_max_len=max_length,
        lengths=lengths,
        bin_size=BIN_SIZE,
        packing_efficiency_estimate=1.0,
        drop_last=True,
        sequential=sequential,
        group_size=GROUP_SIZE,
        num_processes=get_default_process_count(),  # dataset_num_proc's default
        mp_start_method="fork",
    )
    return [pack for batch in sampler.generate_batches(set_stats=True) for pack in batch]


def check_multipack_plan(plan, lengths: np.ndarray, max_length: int) -> dict:
    """Packs, samples and tokens of an axolotl plan, and the samples it left out (`dropped`, `dropped_tokens`).

    Raises if a sample is packed twice or a pack holds more than `max_length` tokens or `BIN_SIZE` samples.
    """
    members = np.fromiter(itertools.chain.from_iterable(plan), dtype=np.int64)
    if len(np.unique(members)) != len(members) or members.min(initial=0) < 0 or members.max(initial=0) >= len(lengths):
        raise AssertionError("axolotl's plan holds a sample twice, or an index that is not a sample")
    if (
        max((int(lengths[pack].sum()) for pack in plan), default=0) > max_length
        or max(map(len, plan), default=0) > BIN_SIZE
    ):
        raise AssertionError(f"a pack of axolotl's plan holds more than {max_length} tokens or {BIN_SIZE} samples")
    dropped = np.setdiff1d(np.arange(len(lengths)), members)
    return {
        "packs": len(plan),
        "samples": len(members),
        "tokens": int(lengths[members].sum()),
        "dropped": len(dropped),
        "dropped_tokens": int(lengths[dropped].sum()),
    }
