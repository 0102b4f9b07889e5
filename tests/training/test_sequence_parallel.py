"""Ulysses sequence parallelism: the per-token bookkeeping against the whole-row loss, the refusals, and the real
DeepSpeed engine on 2 and 4 gloo processes against per-sample references (`tests/sp_check.py`)."""

import json
import os
import random

import pytest
import torch
from accelerate.parallelism_config import ParallelismConfig
from launch import torchrun_launch

from longalign_hf import LongAlignConfig
from longalign_hf.training.checks import packing_attention
from longalign_hf.training.collator import LOSS_NUM_TARGETS, LOSS_SAMPLE_IDS, LongAlignDataCollator
from longalign_hf.training.loss import weighted_nll_sum
from longalign_hf.training.sequence_parallel import (
    LOSS_SAMPLE_STARTS,
    LOSS_SHIFT_NUM_TARGETS,
    SequenceParallelCollator,
    check_sequence_parallel,
    isolating_core_attention,
    restore_kv_head_groups,
    weighted_nll_sum_per_token,
)

SP_CHECK = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "sp_check.py")


def _random_samples(rng: random.Random, count: int) -> list[dict]:
    samples = []
    for _ in range(count):
        length = rng.randint(2, 40)
        ids = [rng.randint(3, 99) for _ in range(length)]
        # Targets in one or two runs (two assistant turns), or none at all.
        labels = [-100] * length
        for _ in range(rng.choice([0, 1, 1, 2])):
            start = rng.randint(1, length - 1)
            end = rng.randint(start + 1, length)
            labels[start:end] = ids[start:end]
        samples.append({"input_ids": ids, "labels": labels})
    return samples


def _slice_like_deepspeed(batch: dict, sp_size: int) -> list[dict]:
    """What `UlyssesSPDataLoaderAdapter` hands each rank: labels shifted into `shift_labels`, then every tensor cut into
    `sp_size` equal parts along the sequence."""
    batch = dict(batch)
    labels = batch.pop("labels")
    batch["shift_labels"] = torch.nn.functional.pad(labels, (0, 1), value=-100)[:, 1:]
    chunk = batch["input_ids"].shape[1] // sp_size
    return [
        {k: v[:, chunk * r : chunk * (r + 1)] if torch.is_tensor(v) else v for k, v in batch.items()}
        for r in range(sp_size)
    ]


@pytest.mark.parametrize("sp_size", [2, 3, 4])
@pytest.mark.parametrize("seed", range(5))
def test_slices_count_every_sample_once_and_sum_to_the_whole_row_loss(sp_size, seed):
    rng = random.Random(seed)
    samples = _random_samples(rng, rng.randint(2, 9))
    row_length = sp_size * 120
    whole = LongAlignDataCollator(pad_token_id=0)(samples)
    log_probs = -torch.rand(1, whole["input_ids"].shape[1] - 1, dtype=torch.float64)
    label_mask = whole["labels"][:, 1:] != -100
    num_targets = whole[LOSS_NUM_TARGETS]
    sp_batch = SequenceParallelCollator(LongAlignDataCollator(pad_token_id=0), row_length)(samples)
    assert sp_batch["input_ids"].shape[1] == row_length
    assert all(key not in sp_batch for key in ("cu_seq_lens_q", LOSS_NUM_TARGETS, LOSS_SAMPLE_IDS))
    slices = _slice_like_deepspeed(sp_batch, sp_size)
    # The log-probability of position t's next label, padded with zeros to the row: what each slice's fused head gives.
    padded_log_probs = torch.zeros(1, row_length, dtype=torch.float64)
    padded_log_probs[:, : log_probs.shape[1]] = log_probs
    chunk = row_length // sp_size
    for weighting, denominator in (("sequence", (num_targets > 0).sum()), ("token", num_targets.sum())):
        expected = weighted_nll_sum(log_probs, label_mask, whole[LOSS_SAMPLE_IDS], num_targets, weighting)
        total = sum(
            weighted_nll_sum_per_token(
                padded_log_probs[:, chunk * r : chunk * (r + 1)], part["shift_labels"] != -100,
                part[LOSS_SHIFT_NUM_TARGETS], weighting,
            )
            for r, part in enumerate(slices)
        )  # fmt: skip
        assert torch.allclose(total, expected, rtol=1e-12), weighting
        counted = sum(
            int(part[LOSS_SAMPLE_STARTS].sum() if weighting == "sequence" else (part["shift_labels"] != -100).sum())
            for part in slices
        )
        assert counted == int(denominator)


def test_the_row_padding_is_a_separate_loss_free_sample():
    samples = [{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8, 9], "labels": [8, 9]}]
    batch = SequenceParallelCollator(LongAlignDataCollator(pad_token_id=0), 8)(samples)
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1, 0, 1, 2]]
    assert batch["labels"].tolist() == [[-100, 6, 7, -100, 9, -100, -100, -100]]
    assert batch[LOSS_SHIFT_NUM_TARGETS].tolist() == [[2, 2, 0, 1, 0, 0, 0, 0]]
    assert batch[LOSS_SAMPLE_STARTS].tolist() == [[1, 0, 0, 1, 0, 0, 0, 0]]
    with pytest.raises(ValueError, match="longer than max_length=4"):
        SequenceParallelCollator(LongAlignDataCollator(pad_token_id=0), 4)(samples)


def _args(tmp_path, **overrides):
    return LongAlignConfig(output_dir=str(tmp_path), report_to="none", **{"max_length": 256, **overrides})


@pytest.mark.parametrize(
    ("overrides", "is_deepspeed", "num_processes", "match"),
    [
        ({}, False, 2, "needs DeepSpeed"),
        ({"batching": "sort"}, True, 2, "packed rows"),
        ({"max_length": 255}, True, 2, "multiple of 2, got 255; e.g. 254"),
        ({"pad_to_multiple_of": 3}, True, 2, "multiple of 6"),
        ({}, True, 4, "dp_shard_size: 2"),
    ],
)
def test_what_sequence_parallelism_refuses(tmp_path, overrides, is_deepspeed, num_processes, match):
    config = ParallelismConfig(sp_size=2, sp_backend="deepspeed")
    config.dp_replicate_size = config.dp_shard_size = 1
    with pytest.raises(ValueError, match=match):
        check_sequence_parallel(_args(tmp_path, **overrides), config, num_processes, is_deepspeed)
    config.dp_shard_size = num_processes // 2
    if not overrides and is_deepspeed:
        check_sequence_parallel(_args(tmp_path), config, num_processes, is_deepspeed)  # dp x sp = processes: fine


def test_the_core_attention_under_ulysses_isolates_packed_samples():
    packed = ("sdpa_packed", "varlen_packed")
    assert isolating_core_attention("sdpa", "sdpa", packing_attention) in packed
    assert isolating_core_attention("sdpa", None, packing_attention) in packed
    # The model's FlashAttention wins over accelerate's default `sdpa`; the SP config's choice over the model's default.
    assert isolating_core_attention("flash_attention_2", "sdpa", packing_attention) == "flash_attention_2"
    assert isolating_core_attention("sdpa", "flash_attention_2", packing_attention) == "flash_attention_2"
    assert isolating_core_attention("eager", "sdpa", packing_attention) in packed
    with pytest.raises(ValueError, match="eager"):
        isolating_core_attention("eager", None, packing_attention)
    with pytest.raises(ValueError, match="cannot keep packed samples apart"):
        isolating_core_attention("flex_attention", "sdpa", packing_attention)


def test_key_value_head_groups_are_restored_for_forwards_without_ulysses(tiny_model):
    ids = torch.tensor([[5, 6, 7, 8]])
    expected = tiny_model(input_ids=ids).logits
    for module in tiny_model.modules():
        if hasattr(module, "num_key_value_groups"):
            module.num_key_value_groups = 1  # what DeepSpeed leaves after replicating 2 kv heads over 4 SP ranks
    with pytest.raises(RuntimeError):
        tiny_model(input_ids=ids)
    restore_kv_head_groups(tiny_model)
    assert torch.equal(tiny_model(input_ids=ids).logits, expected)


def _run_sp_check(tmp_path, cases: list[dict], num_processes: int) -> list[dict]:
    pytest.importorskip("deepspeed")
    cases_path, output_path = tmp_path / "cases.json", tmp_path / "out.pt"
    cases_path.write_text(json.dumps(cases))
    completed = torchrun_launch(
        SP_CHECK, [str(cases_path), str(output_path), str(tmp_path / "out")], num_processes, timeout=300,
        env={"DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-4000:]
    return torch.load(output_path)


def _relative_difference(grads: dict, reference: dict) -> float:
    squared = sum(((grads[name] - reference[name]) ** 2).sum() for name in reference)
    return float(squared.sqrt() / sum((g**2).sum() for g in reference.values()).sqrt())


def _check(result: dict, case: dict, num_processes: int) -> None:
    assert result["world_size"] == num_processes
    assert result["core_attention"] == "sdpa_packed"  # what plain `sdpa` becomes under Ulysses with packing
    assert result["isolation"]["isolated"] <= 1e-5
    # The control: the same rows with attention causal over the whole gathered row do mix samples.
    assert result["isolation"]["causal_over_row"] > 1e-2
    loss, reference = result["eval_loss"]
    assert loss == pytest.approx(reference, rel=1e-5)
    steps = result["steps"]
    assert len({step["num_samples"] for step in steps}) > 1, "every step has the same M: cannot tell normalizations"
    differences = [_relative_difference(step["grads"], step["reference_grads"]) for step in steps]
    # `pytest -s` shows what the README quotes.
    print(f"{case}: gradient vs reference, largest relative difference {max(differences):.1e}; isolated "
          f"{result['isolation']['isolated']:.1e}, causal over the row {result['isolation']['causal_over_row']:.2f}")  # fmt: skip
    for step, difference in zip(steps, differences):
        assert difference <= 1e-5
        assert step["loss"] == pytest.approx(step["reference_loss"], rel=1e-5)


@pytest.mark.multiprocess
@pytest.mark.slow
def test_two_processes_sp2_exact_and_isolated(tmp_path):
    cases = [
        {"sp_size": 2, "loss_weighting": "sequence", "accumulation": 1, "zero_stage": 1},
        {"sp_size": 2, "loss_weighting": "token", "accumulation": 3, "zero_stage": 2},
        # ZeRO-3's reduce-scatter divides the gradient by every rank, not by the data-parallel replicas.
        {"sp_size": 2, "loss_weighting": "sequence", "accumulation": 3, "zero_stage": 3},
    ]
    results = _run_sp_check(tmp_path, cases, 2)
    assert [len(result["steps"]) for result in results] == [6, 2, 2]
    for case, result in zip(cases, results):
        _check(result, case, 2)


@pytest.mark.multiprocess
@pytest.mark.slow
def test_four_processes_dp2_x_sp2_and_sp4_exact_and_isolated(tmp_path):
    cases = [
        {"sp_size": 2, "data_parallel": 2, "loss_weighting": "sequence", "accumulation": 2, "zero_stage": 1},
        {"sp_size": 4, "loss_weighting": "token", "accumulation": 1, "zero_stage": 2},
    ]
    results = _run_sp_check(tmp_path, cases, 4)
    # The 6 packs are dealt to the data-parallel replicas, not the processes. dp 2: two rows per micro-step, steps of 2
    # and 1 micro-steps; sp 4 (one replica): one row per step.
    assert [[step["rows"] for step in result["steps"]] for result in results] == [[4, 2], [1] * 6]
    for case, result in zip(cases, results):
        _check(result, case, 4)
