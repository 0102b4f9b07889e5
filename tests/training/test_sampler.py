"""SortedBatchSampler: sorted groups, seeded order, accelerate's dealing across ranks, resume, and pack schedules."""

import itertools

import datasets
import numpy as np
import pytest
from accelerate.data_loader import BatchSamplerShard, SkipBatchSampler
from torch.utils.data import BatchSampler

from longalign_hf.training.sampler import SortedBatchSampler
from longalign_hf.training.schedule import balanced_pack_order


def lengths_of(n, seed=0):
    return np.random.default_rng(seed).integers(1, 50, n)  # many ties: the order must still be deterministic


def accelerate_share(global_stream, batch_size, num_processes, process_index):
    """What accelerate's dataloader hands one process (split_batches=False, even_batches=True, as in Trainer)."""
    shard = BatchSamplerShard(BatchSampler(global_stream, batch_size, drop_last=False), num_processes, process_index)
    return [index for batch in shard for index in batch]


@pytest.mark.parametrize("n", [0, 1, 23, 48, 50])
def test_global_stream_is_a_permutation(n):
    sampler = SortedBatchSampler(lengths_of(n), batch_size=2, num_replicas=3, gradient_accumulation_steps=2)
    stream = list(sampler)
    assert sorted(stream) == list(range(n))
    assert len(sampler) == n


def test_groups_are_consecutive_in_sorted_order():
    lengths = lengths_of(100)
    sampler = SortedBatchSampler(lengths, batch_size=2, num_replicas=2, gradient_accumulation_steps=3, seed=3)
    stream = list(sampler)
    by_length = np.argsort(lengths, kind="stable").tolist()
    sorted_groups = [by_length[i : i + 12] for i in range(0, 96, 12)]
    stream_groups = [stream[i : i + 12] for i in range(0, 96, 12)]
    assert sorted(stream_groups) == sorted(sorted_groups)  # each group is a sorted slice, kept in sorted order
    assert stream_groups != sorted_groups  # the group order is shuffled
    assert stream[96:] == by_length[96:]  # the partial group of the longest samples comes last


def test_devices_of_a_micro_step_get_neighbouring_lengths():
    lengths = lengths_of(64, seed=1)
    batch_size, replicas = 2, 4
    stream = list(SortedBatchSampler(lengths, batch_size, num_replicas=replicas, gradient_accumulation_steps=2))
    by_length = np.argsort(lengths, kind="stable").tolist()
    micro_steps = [stream[i : i + batch_size * replicas] for i in range(0, 64, batch_size * replicas)]
    slices = [by_length[i : i + batch_size * replicas] for i in range(0, 64, batch_size * replicas)]
    assert sorted(micro_steps) == sorted(slices)


def test_no_shuffle_keeps_sorted_order():
    lengths = lengths_of(30)
    stream = list(SortedBatchSampler(lengths, batch_size=4, shuffle=False))
    assert stream == np.argsort(lengths, kind="stable").tolist()


def test_order_is_seeded_and_changes_with_epoch():
    lengths = lengths_of(200)
    first = SortedBatchSampler(lengths, batch_size=4, num_replicas=2, seed=11)
    second = SortedBatchSampler(lengths.tolist(), batch_size=4, num_replicas=2, seed=11)
    assert list(first) == list(second)
    epoch_zero = list(first)
    first.set_epoch(1)
    assert list(first) != epoch_zero
    assert sorted(first) == sorted(epoch_zero)
    assert list(SortedBatchSampler(lengths, batch_size=4, num_replicas=2, seed=12)) != epoch_zero


def test_drop_last_drops_only_the_partial_global_batch():
    lengths = lengths_of(50)
    sampler = SortedBatchSampler(lengths, batch_size=2, num_replicas=2, gradient_accumulation_steps=3, drop_last=True)
    stream = list(sampler)
    assert len(stream) == len(sampler) == 48
    assert len(set(stream)) == 48
    assert set(range(50)) - set(stream) == set(np.argsort(lengths, kind="stable")[48:].tolist())
    assert list(SortedBatchSampler(lengths[:10], batch_size=4, num_replicas=4, drop_last=True)) == []


@pytest.mark.parametrize(
    ("n", "batch_size", "replicas", "accumulation", "drop_last"),
    [(48, 2, 3, 2, False), (50, 2, 3, 2, False), (50, 2, 3, 2, True), (7, 3, 4, 1, False), (0, 1, 2, 1, False)],
)
def test_rank_shares_match_accelerate_dealing(n, batch_size, replicas, accumulation, drop_last):
    lengths = lengths_of(n, seed=2)
    kwargs = dict(
        batch_size=batch_size,
        num_replicas=replicas,
        gradient_accumulation_steps=accumulation,
        seed=5,
        drop_last=drop_last,
    )
    global_sampler = SortedBatchSampler(lengths, **kwargs)
    global_sampler.set_epoch(2)
    stream = list(global_sampler)
    shares = []
    for rank in range(replicas):
        sampler = SortedBatchSampler(lengths, rank=rank, **kwargs)
        sampler.set_epoch(2)
        share = list(sampler)
        assert share == accelerate_share(stream, batch_size, replicas, rank)
        assert len(sampler) == len(share)
        shares.append(share)
    assert len({len(share) for share in shares}) == 1  # every rank runs the same number of steps
    dealt = [i for share in shares for i in share]
    assert set(dealt) == set(stream)
    if len(stream) % (batch_size * replicas) == 0:
        assert sorted(dealt) == sorted(stream)  # an exact partition: nothing repeated


def test_resume_continues_the_interrupted_order():
    """Trainer's resume: a new sampler, same seed and epoch, the first k batches skipped (accelerate's way)."""
    lengths = lengths_of(90, seed=4)
    kwargs = dict(batch_size=3, num_replicas=2, gradient_accumulation_steps=2, seed=9)
    original = SortedBatchSampler(lengths, **kwargs)
    original.set_epoch(1)
    batches = list(BatchSampler(original, 3, drop_last=False))
    resumed = SortedBatchSampler(lengths, **kwargs)
    resumed.set_epoch(1)
    for skipped in (0, 7, len(batches)):
        continuation = list(SkipBatchSampler(BatchSampler(resumed, 3, drop_last=False), skip_batches=skipped))
        assert continuation == batches[skipped:]


def test_pack_costs_give_the_balanced_schedule():
    costs = np.random.default_rng(6).random(77) * 1e5
    for replicas, accumulation, seed in [(8, 1, 0), (4, 2, 3)]:
        sampler = SortedBatchSampler(
            costs, batch_size=1, num_replicas=replicas, gradient_accumulation_steps=accumulation, seed=seed
        )
        assert list(sampler) == balanced_pack_order(costs, packs_per_step=replicas * accumulation, seed=seed)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (dict(batch_size=0), ValueError, "batch_size must be a positive integer, got 0"),
        (dict(batch_size=2, num_replicas=2.0), TypeError, "num_replicas must be a positive integer, got 2.0"),
        (dict(batch_size=2, gradient_accumulation_steps=0), ValueError, "gradient_accumulation_steps must be"),
        (dict(batch_size=2, num_replicas=2, rank=2), ValueError, "rank must be in [0, num_replicas=2) or None, got 2"),
        (dict(batch_size=2, lengths=[1.0, float("inf")]), ValueError, "lengths[1] = inf cannot be sorted"),
        (dict(batch_size=2, lengths=["a", "b"]), TypeError, "lengths must be a flat sequence of numbers"),
    ],
)
def test_validation(kwargs, error, message):
    kwargs = {"lengths": [1, 2, 3], **kwargs}
    with pytest.raises(error) as info:
        SortedBatchSampler(**kwargs)
    assert message in str(info.value)


def test_efficiency_benchmark_quick(benchmark, capsys):
    efficiency = benchmark("efficiency")
    result = efficiency.main(["--quick", "--devices", "4"])
    out = capsys.readouterr().out
    assert "$ python benchmark/efficiency.py --quick --devices 4" in out
    assert "| method | step efficiency | speed-up vs naive | target | status |" in out
    assert set(result["packing"]) == {"bfd", "next_fit"}
    efficiencies = {row["method"]: row["efficiency"] for row in result["methods"]}
    assert all(0 < value <= 1 for value in efficiencies.values())
    assert efficiencies["packing bfd, balanced schedule"] > efficiencies["packing bfd, random order"]


def test_efficiency_benchmark_reads_a_lengths_file(benchmark, capsys, tmp_path):
    efficiency = benchmark("efficiency")
    path = tmp_path / "lengths.txt"
    path.write_text("\n".join(map(str, itertools.islice(itertools.cycle([100, 70000, 3000, 0, 20000]), 400))))
    result = efficiency.main(["--lengths", str(path), "--devices", "2"])
    out = capsys.readouterr().out
    assert "(80 empty dropped, 80 truncated to 65536)" in out
    assert result["packing"]["bfd"]["num_samples"] == 320


def test_efficiency_benchmark_reads_a_tokenized_data_set(benchmark, capsys, tmp_path):
    efficiency = benchmark("efficiency")
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 9000, 300)
    rows = {"input_ids": [[7] * int(n) for n in lengths], "labels": [[-100] * int(n) for n in lengths]}
    datasets.Dataset.from_dict(rows).save_to_disk(str(tmp_path / "saved"))
    datasets.Dataset.from_dict({"length": lengths[:50].tolist()}).to_parquet(str(tmp_path / "counted.parquet"))
    datasets.Dataset.from_dict({"messages": [[{"role": "user", "content": "hi"}]]}).to_json(str(tmp_path / "c.jsonl"))

    assert np.array_equal(efficiency.load_lengths(tmp_path / "saved"), lengths)
    assert np.array_equal(efficiency.load_lengths(tmp_path / "counted.parquet"), lengths[:50])
    result = efficiency.main(["--lengths", str(tmp_path / "saved"), "--devices", "2"])
    assert result["packing"]["bfd"]["tokens"] == lengths.sum()
    assert "300 samples from" in capsys.readouterr().out
    with pytest.raises(ValueError, match=r"c\.jsonl has no `length` or `input_ids` column \(it has messages\)"):
        efficiency.load_lengths(tmp_path / "c.jsonl")
