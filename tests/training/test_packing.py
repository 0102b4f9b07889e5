"""plan_packs against slow reference planners, pack_stats on a hand-counted plan, costs and the step schedule."""

import random

import numpy as np
import pytest

from longalign_hf.training.packing import pack_stats, plan_packs
from longalign_hf.training.schedule import balanced_pack_order, pack_cost, sample_cost, split_packs


def reference_next_fit(lengths, max_length):
    packs, total = [], max_length + 1
    for index, length in enumerate(lengths):
        if total + length > max_length:
            packs.append([])
            total = 0
        packs[-1].append(index)
        total += length
    return packs


def reference_bfd(lengths, max_length):
    """One sample at a time, scanning every pack: least room that fits, among equal rooms the one there longest."""
    packs, room, since = [], [], []
    for clock, index in enumerate(sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))):
        fits = [p for p in range(len(packs)) if room[p] >= lengths[index]]
        if fits:
            pack = min(fits, key=lambda p: (room[p], since[p]))
        else:
            pack = len(packs)
            packs.append([])
            room.append(max_length)
            since.append(None)
        packs[pack].append(index)
        room[pack] -= lengths[index]
        since[pack] = clock
    return [sorted(pack) for pack in packs]


def random_case(rng):
    max_length = rng.randint(1, 64)
    # Few distinct lengths give long runs of equal lengths and many rooms tied, the planner's bulk paths.
    top = rng.choice([max_length, max(1, max_length // 3), max(1, max_length // 10)])
    return [rng.randint(1, top) for _ in range(rng.randint(0, 80))], max_length


@pytest.mark.parametrize("seed", range(4))
def test_bfd_matches_reference(seed):
    rng = random.Random(seed)
    for _ in range(300):
        lengths, max_length = random_case(rng)
        assert plan_packs(lengths, max_length) == reference_bfd(lengths, max_length), (lengths, max_length)


def test_bfd_matches_reference_on_long_tailed_mix():
    rng = np.random.default_rng(0)
    lengths = np.concatenate([rng.integers(16, 2000, 1500), rng.integers(8192, 65537, 100)])
    rng.shuffle(lengths)
    lengths = lengths.tolist()
    assert plan_packs(lengths, 65536) == reference_bfd(lengths, 65536)


@pytest.mark.parametrize("seed", range(2))
def test_next_fit_matches_reference(seed):
    rng = random.Random(seed)
    for _ in range(300):
        lengths, max_length = random_case(rng)
        assert plan_packs(lengths, max_length, "next_fit") == reference_next_fit(lengths, max_length)


@pytest.mark.parametrize("strategy", ["bfd", "next_fit"])
def test_plan_is_a_partition_within_max_length(strategy):
    rng = np.random.default_rng(1)
    lengths = rng.integers(1, 4097, 5000)
    plan = plan_packs(lengths, 4096, strategy)
    assert sorted(i for pack in plan for i in pack) == list(range(len(lengths)))
    assert all(pack == sorted(pack) for pack in plan)
    assert max(lengths[pack].sum() for pack in plan) <= 4096
    assert all(isinstance(i, int) for i in plan[0])


@pytest.mark.parametrize("strategy", ["bfd", "next_fit"])
def test_plan_is_deterministic_and_input_type_blind(strategy):
    lengths = np.random.default_rng(2).integers(1, 1000, 3000)
    plan = plan_packs(lengths, 2048, strategy)
    assert plan_packs(lengths, 2048, strategy) == plan
    assert plan_packs(lengths.tolist(), 2048, strategy) == plan
    assert plan_packs(tuple(float(x) for x in lengths), 2048, strategy) == plan


def test_next_fit_keeps_the_last_partial_pack():
    assert plan_packs([4, 4, 1], 4, "next_fit") == [[0], [1], [2]]
    assert plan_packs([3, 2, 2, 1], 4, "next_fit") == [[0], [1, 2], [3]]


def test_bfd_hand_example():
    # Decreasing: 7 opens A (room 3), 5 opens B (room 5), 4 -> B (room 1), 3 -> A (room 0), 2 opens C, 1 -> B.
    assert plan_packs([3, 7, 1, 5, 4, 2], 10) == [[0, 1], [2, 3, 4], [5]]


def test_empty_input():
    assert plan_packs([], 8) == []
    assert plan_packs(np.array([], dtype=np.int64), 8, "next_fit") == []


@pytest.mark.parametrize(
    ("lengths", "error", "message"),
    [
        ([3, 0], ValueError, "lengths[1] = 0: lengths must be positive token counts; drop empty samples"),
        ([-2], ValueError, "lengths[0] = -2: lengths must be positive"),
        ([2, 1.5], ValueError, "lengths[1] = 1.5 is not a whole number of tokens"),
        ([2, float("nan")], ValueError, "lengths[1] = nan is not a whole number"),
        ([2, True], TypeError, "lengths[1] = True is a bool, not a token count"),
        ([2, np.bool_(False)], TypeError, "lengths[1] = False is a bool"),
        (np.array([True, False]), TypeError, "lengths are bools, not token counts"),
        ([2, "3"], TypeError, "lengths[1] = '3' is not a number"),
        ([2, None], TypeError, "lengths[1] = None is not a number"),
        ([[2, 3]], ValueError, "flat sequence of token counts, got an array of shape (1, 2)"),
        (
            [2, 9, 10],
            ValueError,
            "lengths[1] = 9 exceeds max_length = 8; truncate or drop it first (see `overflow` policy)",
        ),
        ([2, 10**30], ValueError, "lengths[1] = 1e+30 exceeds max_length = 8"),
    ],
)
def test_length_validation(lengths, error, message):
    with pytest.raises(error) as info:
        plan_packs(lengths, 8)
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("max_length", "error", "message"),
    [
        (0, ValueError, "max_length must be a positive integer, got 0"),
        (-5, ValueError, "max_length must be a positive integer, got -5"),
        (8.0, TypeError, "max_length must be a positive integer, got 8.0 (float)"),
        (True, TypeError, "max_length must be a positive integer, got True (bool)"),
        ("8", TypeError, "got '8' (str)"),
    ],
)
def test_max_length_validation(max_length, error, message):
    with pytest.raises(error) as info:
        plan_packs([1, 2], max_length)
    assert message in str(info.value)


def test_integral_floats_and_numpy_max_length_are_accepted():
    assert plan_packs([2.0, 3.0], np.int64(5)) == [[0, 1]]


def test_unknown_strategy():
    with pytest.raises(ValueError, match="strategy must be one of 'bfd', 'next_fit', got 'ffd'"):
        plan_packs([1], 8, strategy="ffd")


def test_pack_stats_hand_counted():
    lengths = [5, 3, 2, 7, 1]
    plan = [[3, 4], [0, 1, 2]]  # 8 and 10 tokens
    assert pack_stats(plan, lengths, 12) == {
        "num_packs": 2,
        "num_samples": 5,
        "tokens": 18,
        "max_length": 12,
        "fill": 18 / 24,
        "samples_per_pack_mean": 2.5,
        "samples_per_pack_min": 2,
        "samples_per_pack_max": 3,
    }
    default = pack_stats(plan, np.array(lengths))  # capacity: the largest pack, 10 tokens
    assert default["max_length"] == 10
    assert default["fill"] == 18 / 20


def test_pack_stats_empty_plan():
    assert pack_stats([], [], 8) == {
        "num_packs": 0,
        "num_samples": 0,
        "tokens": 0,
        "max_length": 8,
        "fill": 0.0,
        "samples_per_pack_mean": 0.0,
        "samples_per_pack_min": 0,
        "samples_per_pack_max": 0,
    }


def test_costs():
    assert sample_cost(100, attention_constant=50) == 100 + 200
    np.testing.assert_allclose(sample_cost(np.array([1.0, 24576.0])), [1 + 1 / 24576, 2 * 24576])
    assert pack_cost([0, 2], [100, 7, 10], attention_constant=50) == 300 + 12


def test_balanced_order_groups_neighbouring_costs():
    rng = np.random.default_rng(3)
    costs = rng.random(103)
    order = balanced_pack_order(costs, packs_per_step=8, seed=5)
    assert sorted(order) == list(range(103))
    sorted_packs = np.argsort(costs, kind="stable")
    groups = [order[i : i + 8] for i in range(0, 103, 8)]
    expected_groups = {tuple(sorted_packs[i : i + 8]) for i in range(0, 96, 8)}
    assert {tuple(group) for group in groups[:-1]} == expected_groups  # full groups, ascending inside
    assert groups[-1] == sorted_packs[96:].tolist()  # the partial group of the costliest packs, kept and last
    assert [tuple(group) for group in groups[:-1]] != sorted(expected_groups, key=lambda g: costs[g[0]])  # shuffled


def test_balanced_order_is_seeded():
    costs = np.random.default_rng(4).random(64)
    assert balanced_pack_order(costs, 4, seed=1) == balanced_pack_order(costs.tolist(), 4, seed=1)
    assert balanced_pack_order(costs, 4, seed=1) != balanced_pack_order(costs, 4, seed=2)


def test_unbalanced_order_is_a_seeded_permutation():
    costs = np.arange(50.0)
    order = balanced_pack_order(costs, 4, seed=7, balance=False)
    assert order == np.random.default_rng(7).permutation(50).tolist()


def test_balanced_order_validation():
    with pytest.raises(ValueError, match=r"costs\[1\] = nan cannot be sorted"):
        balanced_pack_order([1.0, float("nan")], 2)
    with pytest.raises(ValueError, match="packs_per_step must be a positive integer, got 0"):
        balanced_pack_order([1.0], 0)
    assert balanced_pack_order([], 2) == []


def test_split_packs_hand_example():
    lengths = [10, 20, 30, 40, 50, 60, 70]
    plan = [[0, 1], [2, 6], [3, 4, 5]]  # token costs (C large): 30, 100, 150
    # 3 packs -> 4 slots: the costliest pack [3, 4, 5] splits into [5] (60) and [3, 4] (90).
    assert split_packs(plan, lengths, 4, attention_constant=1e12) == [[0, 1], [2, 6], [5], [3, 4]]
    # 3 packs -> 5 slots: then [2, 6] (100, now the costliest splittable one) splits into [6] and [2].
    assert split_packs(plan, lengths, 5, attention_constant=1e12) == [[0, 1], [6], [2], [5], [3, 4]]
    # Already a multiple: unchanged.
    assert split_packs(plan, lengths, 3) == plan


def test_split_packs_ranks_by_attention_cost():
    # Pack 0 has fewer tokens (2,000 vs 3,000) but costs more once attention counts (C = 100).
    lengths = [1000, 1000] + [100] * 30
    plan = [[0, 1], list(range(2, 32))]
    by_tokens = split_packs(plan, lengths, 3, attention_constant=1e12)
    assert by_tokens[0] == [0, 1] and len(by_tokens) == 3
    assert split_packs(plan, lengths, 3, attention_constant=100.0) == [[0], [1], list(range(2, 32))]


@pytest.mark.parametrize("seed", range(20))
def test_split_packs_keeps_a_partition_and_reaches_the_multiple(seed):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 500, rng.integers(1, 200)).tolist()
    plan = plan_packs(lengths, 1000)
    multiple = int(rng.integers(1, 9))
    split = split_packs(plan, lengths, multiple)
    assert sorted(i for pack in split for i in pack) == list(range(len(lengths)))
    assert all(pack == sorted(pack) and sum(lengths[i] for i in pack) <= 1000 for pack in split)
    splittable = sum(len(pack) - 1 for pack in plan)
    assert len(split) == len(plan) + min(-len(plan) % multiple, splittable)
    # Untouched packs keep their order; a pack split once has halves within one sample's cost of each other.
    assert [p for p in split if p in plan] == [p for p in plan if p in split]
    for pack in (p for p in plan if p not in split):
        pieces = [p for p in split if set(p) <= set(pack)]
        assert len(pieces) >= 2 and sorted(i for piece in pieces for i in piece) == pack
        if len(pieces) == 2:
            costs = [pack_cost(piece, lengths) for piece in pieces]
            assert abs(costs[0] - costs[1]) <= max(sample_cost(np.asarray(lengths)[pack]))


def test_split_packs_stops_when_nothing_can_be_split():
    assert split_packs([[0], [1], [2]], [5, 5, 5], 4) == [[0], [1], [2]]
    with pytest.raises(ValueError, match="multiple_of"):
        split_packs([[0]], [5], 0)


def test_planner_benchmark_quick(benchmark, capsys):
    planner = benchmark("planner")
    rows = planner.main(["--quick", "--repeats", "1"])
    out = capsys.readouterr().out
    assert "$ python benchmark/planner.py --quick --repeats 1" in out
    assert "| strategy | n | seconds | fill | packs | t / t(n/10) | n log n ratio |" in out
    assert [(row["strategy"], row["n"]) for row in rows] == [
        ("bfd", 1000),
        ("bfd", 10000),
        ("next_fit", 1000),
        ("next_fit", 10000),
    ]
    assert rows[1]["fill"] > rows[3]["fill"]
