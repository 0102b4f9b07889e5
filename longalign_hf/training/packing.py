"""Pack planning over sample lengths (best-fit decreasing, next-fit) and pack statistics.

Everything here works on lengths (token counts) only, so it is plain Python + numpy: no model, no torch.
`plan_packs` decides which samples share a row of at most `max_length` tokens; `schedule.py` then makes the packs
divide over the devices and orders them by compute cost.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Sequence
from numbers import Real
from typing import Any

import numpy as np

PACKING_STRATEGIES = ("bfd", "next_fit")


def _check_positive_int(value: Any, name: str) -> int:
    """`value` as an `int`, or an error that names the argument (bools are not integers here)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be a positive integer, got {value!r} ({type(value).__name__})")
    if value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value}")
    return int(value)


def _as_lengths(lengths: Sequence[int] | np.ndarray, max_length: int) -> np.ndarray:
    """Validate token counts and return them as an int64 array; errors name the first bad index."""
    values = lengths if isinstance(lengths, np.ndarray) else list(lengths)
    if isinstance(values, list):
        bool_types = {bool, np.bool_} & set(map(type, values))
        if bool_types:
            index = next(i for i, value in enumerate(values) if type(value) in bool_types)
            raise TypeError(
                f"lengths[{index}] = {values[index]} is a bool, not a token count; pass integer lengths, e.g. "
                "`len(sample['input_ids'])`"
            )
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"lengths must be a flat sequence of token counts, got an array of shape {array.shape}")
    if array.dtype.kind == "b":
        raise TypeError("lengths are bools, not token counts; pass integer lengths, e.g. `len(sample['input_ids'])`")
    if array.dtype.kind not in "iuf":
        items = values if isinstance(values, list) else values.tolist()
        index = next((i for i, value in enumerate(items) if not isinstance(value, Real)), None)
        if index is not None:
            raise TypeError(
                f"lengths[{index}] = {items[index]!r} is not a number; lengths must be integer token counts, e.g. "
                "`len(sample['input_ids'])`"
            )
        array = np.asarray(items, dtype=np.float64)  # numbers numpy kept as objects, e.g. ints beyond int64
    if array.dtype.kind == "f":
        integral = np.isfinite(array) & (array == np.floor(array))
        if not integral.all():
            index = int(np.argmin(integral))
            raise ValueError(
                f"lengths[{index}] = {array[index]} is not a whole number of tokens; lengths must be integers"
            )
    if array.size and array.min() < 1:
        index = int(np.argmax(array < 1))
        raise ValueError(
            f"lengths[{index}] = {array[index]}: lengths must be positive token counts; drop empty samples before "
            "planning packs"
        )
    if array.size and array.max() > max_length:
        index = int(np.argmax(array > max_length))
        raise ValueError(
            f"lengths[{index}] = {array[index]} exceeds max_length = {max_length}; truncate or drop it first "
            "(see `overflow` policy)"
        )
    return array.astype(np.int64)


def _next_fit(lengths: np.ndarray, max_length: int) -> tuple[np.ndarray, int]:
    """Pack id of every sample under next-fit, and the number of packs."""
    ends = np.concatenate([[0], np.cumsum(lengths)]).tolist()
    sizes = []
    start = 0
    while start < len(lengths):
        # The pack runs up to the last prefix sum that stays within `max_length` of the pack's start.
        stop = bisect.bisect_right(ends, ends[start] + max_length, lo=start + 1) - 1
        sizes.append(stop - start)
        start = stop
    return np.repeat(np.arange(len(sizes)), sizes), len(sizes)


def _add_packs(packs_by_room: list[list[int] | None], has_room: bytearray, room: int, packs: list[int]) -> None:
    """File `packs` (a list the caller hands over) under `room` remaining tokens, after the packs already there."""
    if room == 0 or not packs:
        return
    if packs_by_room[room] is None:
        packs_by_room[room] = packs
        has_room[room] = 1
    else:
        packs_by_room[room] += packs


def _best_fit_decreasing(lengths: np.ndarray, max_length: int) -> tuple[np.ndarray, int]:
    """Pack id of every sample under best-fit decreasing, and the number of packs.

    Samples are placed one by one in decreasing length (ties by index) into the open pack with the least room that
    still fits, among equal rooms the pack that reached that room first; pack ids count up in opening order. Rather
    than one step per sample, it steps over runs of equal length: the best fit for a length-`L` sample is the smallest
    room `r >= L`, and that pack stays the best fit until its room drops below `L`, so it takes `r // L` samples of
    the run at once. Packs are filed by remaining room in arrival order (`packs_by_room[r]`) and `has_room[r]` flags
    non-empty rooms, so the smallest room `>= L` is one `bytearray.find` (a C memchr). Work is the O(n log n) sort
    plus one step per (run, room touched); memory is O(max_length).
    """
    order = np.argsort(-lengths, kind="stable")
    ordered = lengths[order]
    run_starts = np.flatnonzero(np.diff(ordered, prepend=0))
    run_sizes = np.diff(run_starts, append=len(ordered)).tolist()
    packs_by_room: list[list[int] | None] = [None] * (max_length + 1)
    has_room = bytearray(max_length + 1)
    assigned: list[int] = []  # pack ids, one per placement, in `order`
    taken: list[int] = []  # how many consecutive samples of `order` each placement takes
    num_packs = 0
    for length, left in zip(ordered[run_starts].tolist(), run_sizes):
        room = has_room.find(1, length)
        while left and room != -1:
            packs = packs_by_room[room]
            per_pack = room // length
            full = min(len(packs), left // per_pack)
            if full:
                filled = packs[:full]
                del packs[:full]
                assigned += filled
                taken += [per_pack] * full
                left -= full * per_pack
                _add_packs(packs_by_room, has_room, room % length, filled)
            if left and packs:  # the run ends inside this pack: it keeps room >= length
                pack = packs.pop(0)
                assigned.append(pack)
                taken.append(left)
                _add_packs(packs_by_room, has_room, room - left * length, [pack])
                left = 0
            if not packs:
                packs_by_room[room] = None
                has_room[room] = 0
            room = has_room.find(1, room + 1)
        if left:  # nothing open fits: open packs, each takes as many samples of the run as fit
            per_pack = max_length // length
            full, rest = divmod(left, per_pack)
            opened = list(range(num_packs, num_packs + full))
            assigned += opened
            taken += [per_pack] * full
            _add_packs(packs_by_room, has_room, max_length % length, opened)
            num_packs += full
            if rest:
                assigned.append(num_packs)
                taken.append(rest)
                _add_packs(packs_by_room, has_room, max_length - rest * length, [num_packs])
                num_packs += 1
    pack_of = np.empty(len(lengths), dtype=np.int64)
    pack_of[order] = np.repeat(np.asarray(assigned, dtype=np.int64), taken)
    return pack_of, num_packs


def plan_packs(lengths: Sequence[int] | np.ndarray, max_length: int, strategy: str = "bfd") -> list[list[int]]:
    """Group sample indices into packs of at most `max_length` tokens.

    Packing puts several samples in one row (attention kept inside each sample) so no compute goes to padding. The
    plan is deterministic for a given input; every index appears in exactly one pack; indices inside a pack are
    ascending; packs are listed in the order they were opened.

    Args:
        lengths (`Sequence[int]` or `np.ndarray`):
            Token count of every sample: positive integers (integral floats are accepted), each `<= max_length`.
            Apply the truncate/drop `overflow` policy before planning.
        max_length (`int`):
            Most tokens in one pack.
        strategy (`str`, *optional*, defaults to `"bfd"`):
            `"bfd"`: best-fit decreasing. Samples in decreasing length (ties by index) each go to the open pack with
            the least room that still fits them (among equal rooms, the pack that reached that room first), else to a
            new pack. Fewest packs: 1M samples of LongAlign's mix fill 64k packs to 99.998% in about 0.3 s (see
            `benchmark/planner.py`). `"next_fit"`: the reference code's greedy packing: in data order, a new pack
            starts when the next sample does not fit. Unlike the reference code, the last partial pack is kept.

    Returns:
        `list[list[int]]`: the sample indices of each pack.

    Raises:
        TypeError: a length is a bool or not a number, or `max_length` is not an integer.
        ValueError: a length is not a positive whole number or exceeds `max_length` (the message names the index);
            `max_length < 1`; unknown `strategy`.

    Example:
        >>> plan_packs([2, 1, 3], max_length=3)
        [[2], [0, 1]]
        >>> plan_packs([2, 1, 3], max_length=3, strategy="next_fit")
        [[0, 1], [2]]
    """
    if strategy not in PACKING_STRATEGIES:
        raise ValueError(f"strategy must be one of {', '.join(map(repr, PACKING_STRATEGIES))}, got {strategy!r}")
    max_length = _check_positive_int(max_length, "max_length")
    array = _as_lengths(lengths, max_length)
    if not array.size:
        return []
    planner = _best_fit_decreasing if strategy == "bfd" else _next_fit
    pack_of, num_packs = planner(array, max_length)
    by_pack = np.argsort(pack_of, kind="stable").tolist()  # stable: ascending indices inside each pack
    bounds = np.cumsum(np.bincount(pack_of, minlength=num_packs)).tolist()
    return [by_pack[start:stop] for start, stop in zip([0, *bounds[:-1]], bounds)]


def pack_stats(
    plan: Sequence[Sequence[int]], lengths: Sequence[int] | np.ndarray, max_length: int | None = None
) -> dict[str, int | float]:
    """Summarize a pack plan: how many packs, how full, how many samples each.

    Args:
        plan (`Sequence[Sequence[int]]`):
            Sample indices of each pack, e.g. from `plan_packs`.
        lengths (`Sequence[int]` or `np.ndarray`):
            Token count of every sample, indexed like the plan.
        max_length (`int`, *optional*):
            Capacity of a pack for the fill ratio. `None` uses the largest pack's token count (the fill then says how
            even the packs are, not how full against a limit); pass the planning `max_length` when you have it.

    Returns:
        `dict`: `num_packs`, `num_samples`, `tokens` (sum over packed samples), `max_length` (the capacity used),
        `fill` (`tokens / (num_packs * max_length)`, 0.0 for an empty plan), and `samples_per_pack_mean`,
        `samples_per_pack_min`, `samples_per_pack_max` (0 for an empty plan).

    Example:
        >>> pack_stats([[0, 1], [2]], [2, 1, 3], max_length=4)["fill"]
        0.75
    """
    sizes = np.fromiter(map(len, plan), dtype=np.int64, count=len(plan))
    members = np.fromiter(itertools.chain.from_iterable(plan), dtype=np.int64, count=int(sizes.sum()))
    member_lengths = np.asarray(lengths, dtype=np.int64)[members]
    tokens = int(member_lengths.sum())
    if max_length is None:
        pack_tokens = np.bincount(np.repeat(np.arange(len(plan)), sizes), weights=member_lengths)
        max_length = int(pack_tokens.max()) if len(plan) else 0
    return {
        "num_packs": len(plan),
        "num_samples": len(members),
        "tokens": tokens,
        "max_length": max_length,
        "fill": tokens / (len(plan) * max_length) if len(plan) else 0.0,
        "samples_per_pack_mean": float(sizes.mean()) if len(plan) else 0.0,
        "samples_per_pack_min": int(sizes.min()) if len(plan) else 0,
        "samples_per_pack_max": int(sizes.max()) if len(plan) else 0,
    }
