"""Ulysses sequence parallelism: the per-token bookkeeping against the whole-row loss, the refusals, and the real
DeepSpeed engine on 2 and 4 gloo processes against per-sample references (`tests/sp_check.py`)."""

import json
import os
import random

import pytest
import torch
from accelerate.parallelism_config import ParallelismConfig
from accelerate.utils import DeepSpeedSequenceParallelConfig
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
    return LongAlignConfig(
        output_dir=str(tmp_path),
        report_to="none",
        **{"max_length": 256, "per_device_train_batch_size": 1, **overrides},
    )


def _sp_config(data_parallel: int = 1, **handler) -> ParallelismConfig:
    config = ParallelismConfig(
        sp_size=2, sp_backend="deepspeed", sp_handler=DeepSpeedSequenceParallelConfig(**handler) if handler else None
    )
    config.dp_replicate_size, config.dp_shard_size = 1, data_parallel
    return config


_ZERO_1 = {"zero_optimization": {"stage": 1}}


@pytest.mark.parametrize(
    ("overrides", "deepspeed_config", "num_processes", "match"),
    [
        ({}, None, 2, "needs DeepSpeed"),
        ({"batching": "sort"}, _ZERO_1, 2, "packed rows"),
        ({"max_length": 255}, _ZERO_1, 2, "multiple of 2, got 255; e.g. 254"),
        ({"pad_to_multiple_of": 3}, _ZERO_1, 2, "multiple of 6"),
        # The packs of a micro-batch would be joined into one row longer than max_length.
        ({"per_device_train_batch_size": 2}, _ZERO_1, 2, "`per_device_train_batch_size` must be 1, got 2"),
        ({}, _ZERO_1, 4, "need 2 data-parallel replicas.*set `dp_shard_size: 2`"),
        # No data-parallel size makes 3 processes: say which process counts work.
        ({}, _ZERO_1, 3, "Launch 2 processes with `dp_shard_size: 1` or 4 processes with `dp_shard_size: 2`"),
        ({}, _ZERO_1, 1, "Launch 2 processes with `dp_shard_size: 1`, or"),
    ],
)
def test_what_sequence_parallelism_refuses(tmp_path, overrides, deepspeed_config, num_processes, match):
    with pytest.raises(ValueError, match=match):
        check_sequence_parallel(_args(tmp_path, **overrides), _sp_config(), num_processes, deepspeed_config)


def test_evaluation_through_ulysses_is_refused(tmp_path):
    with pytest.raises(ValueError, match="sp_disable_in_eval: false.*Remove it"):
        check_sequence_parallel(_args(tmp_path), _sp_config(sp_disable_in_eval=False), 2, _ZERO_1)


@pytest.mark.parametrize("data_parallel", [1, 2])
def test_data_parallel_times_sp_equal_to_the_processes_is_accepted(tmp_path, data_parallel):
    pytest.importorskip("deepspeed")
    check_sequence_parallel(_args(tmp_path), _sp_config(data_parallel), 2 * data_parallel, _ZERO_1)


@pytest.mark.parametrize(
    "zero",
    [
        # Every path DeepSpeed 0.19.8 takes under them divides by the data-parallel replicas (tests/sp_check.py).
        {"stage": 0},
        {"stage": 1, "reduce_scatter": False, "contiguous_gradients": False, "overlap_comm": True},
        {"stage": 2, "reduce_scatter": False, "reduce_bucket_size": 4096, "round_robin_gradients": True},
        # ZeRO-3's reduce-scatter divides every bucket by every rank, whatever its size or layout.
        {"stage": 3, "contiguous_gradients": False, "reduce_bucket_size": "auto"},
    ],
)
def test_deepspeed_settings_with_one_known_divisor_are_accepted(tmp_path, zero):
    pytest.importorskip("deepspeed")
    check_sequence_parallel(_args(tmp_path), _sp_config(), 2, {"zero_optimization": zero})


@pytest.mark.parametrize(
    ("deepspeed_config", "match"),
    [
        # Measured on main: 0.5x the reference gradient everywhere; with a 4096-element bucket, 0.5x for the
        # embeddings, MLP and LM head and 1.0x for attention and norms.
        ({"zero_optimization": {"stage": 3, "reduce_scatter": False, "contiguous_gradients": False}}, "ZeRO-3 with"),
        ({"zero_optimization": {"stage": 3, "reduce_scatter": False, "reduce_bucket_size": 4096}}, "ZeRO-3 with"),
        ({"zero_optimization": {"stage": 3, "reduce_scatter": "false"}}, "remove `reduce_scatter: false`"),
        ({"zero_optimization": {"stage": 1}, "gradient_predivide_factor": 2.0}, "gradient_predivide_factor"),
        ({"zero_optimization": {"stage": 0}, "prescale_gradients": True}, "prescale_gradients"),
        ({"zero_optimization": {"stage": 2}, "gradient_allreduce_op": "sum"}, "gradient_allreduce_op"),
        ({"zero_optimization": {"stage": 3, "zero_quantized_gradients": True}}, "zero_quantized_gradients"),
        ({"zero_optimization": {"stage": 3, "zero_hpz_partition_size": 2}}, "zero_hpz_partition_size"),
        ({"zero_optimization": {"stage": 2, "zenflow": {"topk_ratio": 0.1}}}, "ZenFlow"),
        ({"zero_optimization": {"stage": 1}, "compile": {"deepcompile": True}}, "DeepCompile"),
    ],
)
def test_deepspeed_settings_whose_divisor_is_not_followed_are_refused(tmp_path, deepspeed_config, match):
    pytest.importorskip("deepspeed")
    with pytest.raises(ValueError, match=f"under sequence parallelism the loss is scaled.*{match}"):
        check_sequence_parallel(_args(tmp_path), _sp_config(), 2, deepspeed_config)


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
        SP_CHECK, [str(cases_path), str(output_path), str(tmp_path / "out")], num_processes,
        timeout=120 + 45 * len(cases),
        env={"DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-4000:]
    return torch.load(output_path)


def _relative_difference(grads: dict, reference: dict) -> float:
    squared = sum(((grads[name] - reference[name]) ** 2).sum() for name in reference)
    return float(squared.sqrt() / sum((g**2).sum() for g in reference.values()).sqrt())


def _check(result: dict, case: dict, num_processes: int) -> list[float]:
    """Every step's gradient and logged loss against the per-sample reference (and, for full cases, evaluation and
    isolation); returns the steps' relative gradient differences."""
    assert result["world_size"] == num_processes
    assert result["core_attention"] == "sdpa_packed"  # what plain `sdpa` becomes under Ulysses with packing
    if not case.get("gradient_only"):
        assert result["isolation"]["isolated"] <= 1e-5
        # The control: the same rows with attention causal over the whole gathered row do mix samples.
        assert result["isolation"]["causal_over_row"] > 1e-2
        loss, reference = result["eval_loss"]
        assert loss == pytest.approx(reference, rel=1e-5)
    steps = result["steps"]
    assert len({step["num_samples"] for step in steps}) > 1, "every step has the same M: cannot tell normalizations"
    differences = [_relative_difference(step["grads"], step["reference_grads"]) for step in steps]
    # `pytest -s` shows what the README quotes.
    figures = f"{case}: gradient vs reference, largest relative difference {max(differences):.1e}"
    if not case.get("gradient_only"):
        isolation = result["isolation"]
        figures += f"; isolated {isolation['isolated']:.1e}, causal over the row {isolation['causal_over_row']:.2f}"
    print(figures)
    for step, difference in zip(steps, differences):
        assert difference <= 1e-5
        assert step["loss"] == pytest.approx(step["reference_loss"], rel=1e-5)
    return differences


def _router_gradient(grads: dict) -> torch.Tensor:
    """The routers' gradient (`mlp.gate.weight`), which only the router loss and the experts' weighting reach."""
    return torch.cat([grad.flatten() for name, grad in sorted(grads.items()) if name.endswith("mlp.gate.weight")])


@pytest.mark.multiprocess
@pytest.mark.slow
def test_two_processes_sp2_exact_and_isolated(tmp_path):
    moe = {"sp_size": 2, "loss_weighting": "sequence", "accumulation": 3, "moe": True, "gradient_only": True}
    cases = [
        {"sp_size": 2, "loss_weighting": "sequence", "accumulation": 1, "zero": {"stage": 1}},
        {"sp_size": 2, "loss_weighting": "token", "accumulation": 3, "zero": {"stage": 2}},
        # ZeRO-3's reduce-scatter divides the gradient by every rank, not by the data-parallel replicas.
        {"sp_size": 2, "loss_weighting": "sequence", "accumulation": 3, "zero": {"stage": 3}},
        # The other reduction paths of DeepSpeed 0.19.8 that the SP glue accepts (the gradient is all they change):
        # the engine's all-reduce (ZeRO 0); ZeRO-1/2's all-reduce of non-contiguous gradients, its all-reduce of a
        # contiguous bucket and of parameters larger than the bucket, its reduce-scatter sent to one rank per
        # partition (no multi-rank all-reduce), with overlapped communication and round-robin partitions; ZeRO-3's
        # reduce-scatter of many small buckets. And the MoE router loss under ZeRO-1 and ZeRO-3.
        {"sp_size": 2, "loss_weighting": "token", "accumulation": 3, "zero": {"stage": 0}, "gradient_only": True},
        {**moe, "zero": {"stage": 1, "reduce_scatter": False, "contiguous_gradients": False, "overlap_comm": True,
                         "round_robin_gradients": True}},
        {"sp_size": 2, "loss_weighting": "token", "accumulation": 2, "gradient_only": True,
         "zero": {"stage": 2, "reduce_scatter": False, "reduce_bucket_size": 4096, "allgather_partitions": False}},
        {"sp_size": 2, "loss_weighting": "sequence", "accumulation": 2, "gradient_only": True,
         "zero": {"stage": 2, "reduce_bucket_size": 4096, "use_multi_rank_bucket_allreduce": False,
                  "overlap_comm": True, "round_robin_gradients": True}},
        {**moe, "zero": {"stage": 3, "contiguous_gradients": False, "reduce_bucket_size": 4096}},
        # Refused when the trainer is built, from the DeepSpeed config it gets (measured before the refusal: 0.5x
        # the reference gradient).
        {"sp_size": 2, "loss_weighting": "sequence", "accumulation": 3, "refused": True,
         "zero": {"stage": 3, "reduce_scatter": False, "contiguous_gradients": False}},
    ]  # fmt: skip
    results = _run_sp_check(tmp_path, cases, 2)
    assert "ZeRO-3 with `reduce_scatter: false`" in (results[-1]["refusal"] or "")
    cases, results = cases[:-1], results[:-1]
    assert [len(result["steps"]) for result in results] == [6, 2, 2, 2, 2, 3, 3, 2]
    for case, result in zip(cases, results):
        _check(result, case, 2)
    # The router loss is weighted alike whatever DeepSpeed divides by: ZeRO-1 and ZeRO-3 apply the same router
    # gradient from the same weights and data (the first step starts from the same weights).
    zero1, zero3 = (_router_gradient(results[index]["steps"][0]["grads"]) for index in (4, 7))
    router_difference = float((zero3 - zero1).norm() / zero1.norm())
    print(f"MoE router gradient, ZeRO-3 vs ZeRO-1 (first step): relative difference {router_difference:.1e}")
    assert router_difference <= 1e-5


@pytest.mark.multiprocess
@pytest.mark.slow
def test_four_processes_dp2_x_sp2_and_sp4_exact_and_isolated(tmp_path):
    cases = [
        {"sp_size": 2, "data_parallel": 2, "loss_weighting": "sequence", "accumulation": 2, "zero": {"stage": 1}},
        {"sp_size": 4, "loss_weighting": "token", "accumulation": 1, "zero": {"stage": 2}},
        # ZeRO-3 divides by all 4 ranks, ZeRO 0-2 by the 2 replicas: the MoE router loss follows either.
        {"sp_size": 2, "data_parallel": 2, "loss_weighting": "token", "accumulation": 2, "zero": {"stage": 3},
         "moe": True, "gradient_only": True},
    ]  # fmt: skip
    results = _run_sp_check(tmp_path, cases, 4)
    # The packs are dealt to the data-parallel replicas, not the processes. dp 2: two rows per micro-step, steps of 2
    # and 1 micro-steps; sp 4 (one replica): one row per step.
    assert [[step["rows"] for step in result["steps"]] for result in results] == [[4, 2], [1] * 6, [4, 2]]
    for case, result in zip(cases, results):
        _check(result, case, 4)
