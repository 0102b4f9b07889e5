"""The compute cost of samples and packs, and the schedule built on it: split the costliest packs so the pack count
divides over the devices (`split_packs`), order packs so the devices of one step get packs of similar cost
(`balanced_pack_order`), and measure how well a schedule keeps the devices busy (`step_efficiency`).

`sample_cost` / `pack_cost` model the compute of a sample or pack (linear layers grow with `L`, attention with `L**2`).
`SortedBatchSampler` (sampler.py) uses the same grouping to serve the balanced order, and sorted batching, to a
`Trainer`. Plain Python + numpy: no model, no torch.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence

import numpy as np

from longalign_hf.training.packing import _check_positive_int

# C for a dense model with hidden size 4096 (6 * h); see `sample_cost`.
DEFAULT_ATTENTION_CONSTANT = 24576.0


def sample_cost(
    length: float | np.ndarray, attention_constant: float = DEFAULT_ATTENTION_CONSTANT
) -> float | np.ndarray:
    """Compute cost of one sample of `length` tokens, in token-equivalents: `L + L**2 / C`.

    Linear layers cost the same per token, attention costs per pair of tokens, so long samples cost more than their
    length says. Per layer and token, the forward pass of a dense transformer with hidden size `h` spends about
    `24 h^2` FLOPs in its matrices (`8 h^2` for the QKV and output projections, `16 h^2` for a `4h` MLP; a SwiGLU MLP
    of width `8h/3` is the same) and `4 h` FLOPs per (query, key) pair in attention (`2 h` for `QK^T`, `2 h` for
    the weighted sum of `V`). Over `L^2` pairs that is `24 h^2 L + 4 h L^2 = 24 h^2 (L + L^2 / (6 h))`, the
    Megatron-LM model-FLOPs formula (Narayanan et al., 2021), so `C = 6 h`; the backward pass scales both terms
    alike. The default `C = 24576` is `h = 4096` (Llama-2-7B, ChatGLM3-6B). A causal kernel that skips masked blocks
    (FlashAttention-2) does about `L^2 / 2` pairs, i.e. `C = 12 h` in FLOPs, but runs attention at lower throughput
    than matrix multiplies, so the effective `C` sits between the two; only the ranking of costs matters to
    `balanced_pack_order`, and it changes little across that range.

    Args:
        length (`float` or `np.ndarray`):
            Token count; an array gives an array of costs.
        attention_constant (`float`, *optional*, defaults to `24576.0`):
            `C`: per-token linear FLOPs over per-token-pair attention FLOPs, `6 * hidden_size` for a dense model.

    Example:
        >>> sample_cost(4096, attention_constant=4096)
        8192.0
    """
    return length + length * length / attention_constant


def pack_cost(
    pack: Sequence[int], lengths: Sequence[int] | np.ndarray, attention_constant: float = DEFAULT_ATTENTION_CONSTANT
) -> float:
    """Compute cost of a pack: the sum of its samples' `sample_cost` (attention stays inside each sample).

    Example:
        >>> pack_cost([0, 1], [4096, 4096, 8192], attention_constant=4096)
        16384.0
    """
    pack_lengths = np.asarray(lengths, dtype=np.float64)[np.asarray(pack, dtype=np.int64)]
    return float(sample_cost(pack_lengths, attention_constant).sum())


def _halve(pack: list[int], costs: np.ndarray) -> tuple[list[int], list[int]]:
    """Two non-empty packs of about equal cost: costliest sample first, each into the cheaper half so far."""
    halves: tuple[list[int], list[int]] = ([], [])
    totals = [0.0, 0.0]
    for index in sorted(pack, key=lambda i: (-costs[i], i)):
        side = 0 if totals[0] <= totals[1] else 1
        halves[side].append(index)
        totals[side] += costs[index]
    return sorted(halves[0]), sorted(halves[1])


def split_packs(
    plan: Sequence[Sequence[int]],
    lengths: Sequence[int] | np.ndarray,
    multiple_of: int,
    attention_constant: float = DEFAULT_ATTENTION_CONSTANT,
) -> list[list[int]]:
    """Split the costliest packs in two until the number of packs is a multiple of `multiple_of`.

    Data-parallel training needs the same number of micro-batches on every device. When the packs do not divide
    evenly, `accelerate` completes the last round by repeating packs from the start of the epoch, so their samples
    are trained twice and weigh double, and the devices that got the last packs wait for the others. Splitting the
    costliest multi-sample packs instead (each into two halves of about equal `sample_cost`) trains every sample
    exactly once and lowers the cost of the slowest packs. At most `multiple_of - 1` splits are made; when no pack
    with two or more samples is left, the plan is returned short of the multiple.

    Args:
        plan (`Sequence[Sequence[int]]`):
            Sample indices of each pack, e.g. from `plan_packs`.
        lengths (`Sequence[int]` or `np.ndarray`):
            Token count of every sample, indexed like the plan.
        multiple_of (`int`):
            Packs per round over all devices: `num_devices * per_device_train_batch_size`.
        attention_constant (`float`, *optional*, defaults to `24576.0`):
            `C` of `sample_cost`, to rank packs and balance the halves.

    Returns:
        `list[list[int]]`: the plan with each split pack replaced in place by its two halves (indices ascending).

    Example:
        >>> split_packs([[0, 1, 2], [3]], [1, 2, 3, 6], multiple_of=3)  # sample 2 alone, then samples 0 and 1
        [[2], [0, 1], [3]]
    """
    multiple_of = _check_positive_int(multiple_of, "multiple_of")
    costs = sample_cost(np.asarray(lengths, dtype=np.float64), attention_constant)
    pieces = [list(pack) for pack in plan]
    # Max-heap of splittable pieces by cost; ties go to the earliest piece.
    heap = [(-float(costs[pack].sum()), i) for i, pack in enumerate(pieces) if len(pack) > 1]
    heapq.heapify(heap)
    halves_of: dict[int, tuple[int, int]] = {}
    for _ in range(-len(pieces) % multiple_of):
        if not heap:
            break
        _, costliest = heapq.heappop(heap)
        halves_of[costliest] = (len(pieces), len(pieces) + 1)
        for half in _halve(pieces[costliest], costs):
            if len(half) > 1:
                heapq.heappush(heap, (-float(costs[half].sum()), len(pieces)))
            pieces.append(half)
    packs = []
    for first in range(len(plan)):
        stack = [first]
        while stack:  # a split piece is replaced, in place, by its halves (depth first, first half first)
            piece = stack.pop()
            if piece in halves_of:
                stack.extend(reversed(halves_of[piece]))
            else:
                packs.append(pieces[piece])
    return packs


def _as_sort_keys(keys: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    """`keys` as a 1-D numeric array that sorts well (no NaN or infinity); errors name the argument and index."""
    array = np.asarray(keys)
    if array.ndim != 1 or array.dtype.kind not in "iuf":
        raise TypeError(f"{name} must be a flat sequence of numbers, got {array.dtype} values of shape {array.shape}")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        index = int(np.argmin(np.isfinite(array)))
        raise ValueError(f"{name}[{index}] = {array[index]} cannot be sorted; every value must be finite")
    return array


def _length_grouped_order(keys: np.ndarray, group_size: int, seed: int | None) -> np.ndarray:
    """Indices sorted by `keys` (stable), cut into consecutive groups of `group_size`, the full groups shuffled.

    `seed=None` keeps the sorted order. The last partial group (the largest keys) always comes last, so every full
    group stays aligned with a step boundary. Shared by `balanced_pack_order` and `SortedBatchSampler`.
    """
    order = np.argsort(keys, kind="stable")
    num_full = len(order) // group_size * group_size
    groups = order[:num_full].reshape(-1, group_size)
    if seed is not None:
        groups = groups[np.random.default_rng(seed).permutation(len(groups))]
    return np.concatenate([groups.ravel(), order[num_full:]])


def balanced_pack_order(
    costs: Sequence[float] | np.ndarray, packs_per_step: int, seed: int = 0, balance: bool = True
) -> list[int]:
    """Order packs so that every step's packs have similar compute cost.

    All devices of a step wait for the slowest one, and a pack holding one 64k-token sample costs several times a
    pack of short samples (see `sample_cost`). Packs are sorted by cost, cut into consecutive groups of
    `packs_per_step`, and the groups are shuffled with `seed`; the last partial group (the costliest packs) is kept
    and comes last. Inside a group costs ascend, so each micro-step (`num_devices` consecutive packs) is balanced too.

    Args:
        costs (`Sequence[float]` or `np.ndarray`):
            Cost of every pack, e.g. `pack_cost(pack, lengths)` over the plan.
        packs_per_step (`int`):
            Packs in one optimizer step: `num_devices * packs per device * gradient_accumulation_steps`.
        seed (`int`, *optional*, defaults to `0`):
            Seed of the group shuffle (a numpy `default_rng`).
        balance (`bool`, *optional*, defaults to `True`):
            `False` returns a seeded random permutation instead (the paper's random pack order), for comparison.

    Returns:
        `list[int]`: every pack index once; consecutive runs of `packs_per_step` form the steps.

    Example:
        >>> balanced_pack_order([5.0, 1.0, 4.0, 2.0], packs_per_step=2, seed=0)  # steps: costs (1, 2), (4, 5)
        [1, 3, 2, 0]
    """
    packs_per_step = _check_positive_int(packs_per_step, "packs_per_step")
    keys = _as_sort_keys(costs, "costs")
    if not balance:
        return np.random.default_rng(seed).permutation(len(keys)).tolist()
    return _length_grouped_order(keys, packs_per_step, seed).tolist()


def step_efficiency(
    costs: Sequence[float] | np.ndarray, order: Sequence[int], devices: int, per_device: int = 1
) -> float:
    """Useful compute over the compute the devices are held for, for packs dealt in `order`.

    Every `devices * per_device` consecutive packs of `order` form one step (device `d` gets the `d`-th run of
    `per_device` packs), a step lasts as long as its costliest device, and the result is
    `sum(costs) / (devices * sum over steps of the costliest device)`: 1.0 when no device ever waits.

    Example:
        >>> step_efficiency([1.0, 3.0, 1.0, 3.0], order=[0, 1, 2, 3], devices=2)  # each step waits for a 3
        0.6666666666666666
        >>> step_efficiency([1.0, 3.0, 1.0, 3.0], order=[0, 2, 1, 3], devices=2)
        1.0
    """
    devices = _check_positive_int(devices, "devices")
    per_device = _check_positive_int(per_device, "per_device")
    ordered = np.asarray(costs, dtype=np.float64)[np.asarray(order, dtype=np.int64)]
    ordered = np.concatenate([ordered, np.zeros(-len(ordered) % (devices * per_device))])
    device_costs = ordered.reshape(-1, devices, per_device).sum(-1)
    busy = devices * device_costs.max(-1).sum()
    return float(ordered.sum() / busy) if busy else 1.0
