"""FSDP2 on 2 CPU processes (gloo): the engine named is the engine that runs, exact per optimizer step against the
per-sample reference (also with LoRA, either activation checkpointing, parameter offload, CPU-RAM-efficient loading
and, within bf16's rounding, mixed precision), and in evaluation; the final save is one loadable folder; a sharded
checkpoint resumes to the uninterrupted run's weights; the launch exits by itself."""

import json
import os

import pytest
import torch
from launch import accelerate_launch

RECIPE = os.path.join(os.path.dirname(__file__), "..", "..", "recipes", "accelerate", "fsdp2.yaml")
SCRIPT = os.path.join(os.path.dirname(os.path.dirname(__file__)), "fsdp_check.py")
TOLERANCE = 1e-5
LEARNING_RATE = 0.5  # fsdp_check's SGD step

PACK = {"batching": "pack"}
# The shipped fsdp2.yaml (full shard, sharded checkpoints, cpu_ram_efficient_loading) cut to 2 CPU processes, and
# what other configs set on top of it (`env`: the launcher's FSDP_* variables; `fsdp_config`: the training arguments).
# Packed cases run 3 steps (GA 1: 2 packs a step) or 2 (GA 2: 4 packs, then 2) with unequal M and N; the GA 3 cases
# run 2 steps of 6 samples (accelerate repeats one sample to even the last batches), whose N differ.
CASES = {
    "recipe": {
        **PACK, "loss_weighting": "sequence", "accumulation": 1, "rank_seeds": True, "save": True, "evaluate": True,
    },
    "no-checkpointing": {
        **PACK, "loss_weighting": "token", "accumulation": 1, "activation_checkpointing": False,
        "env": {"FSDP_CPU_RAM_EFFICIENT_LOADING": "false"},
    },
    "naive-ga3": {"batching": "naive", "loss_weighting": "token", "accumulation": 3},
    "sort-ga3": {"batching": "sort", "loss_weighting": "sequence", "accumulation": 3},
    "lora": {**PACK, "loss_weighting": "sequence", "accumulation": 2, "lora": True, "save": True},
    "fsdp-checkpointing": {
        **PACK, "loss_weighting": "sequence", "accumulation": 1, "env": {"FSDP_ACTIVATION_CHECKPOINTING": "true"}
    },
    "offload": {**PACK, "loss_weighting": "sequence", "accumulation": 2, "env": {"FSDP_OFFLOAD_PARAMS": "true"}},
    "training-arguments": {
        **PACK, "loss_weighting": "token", "accumulation": 1, "activation_checkpointing": True, "save": True,
        "fsdp_config": {"version": 2, "reshard_after_forward": False, "state_dict_type": "FULL_STATE_DICT"},
    },
    "bf16": {**PACK, "loss_weighting": "sequence", "accumulation": 1, "bf16": True},
    "resume": {**PACK, "loss_weighting": "sequence", "accumulation": 1, "resume": True},
}  # fmt: skip
RECIPE_ENGINE = (
    "FSDP2 full shard (reshard after forward on, parameter offload off, checkpoint state dict SHARDED_STATE_DICT, "
    "FSDP activation checkpointing off, cpu_ram_efficient_loading on, mixed precision fp32) over 2 processes (gloo)"
)


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory):
    """Every case in one launch under the shipped recipes/accelerate/fsdp2.yaml (2 processes, fp32 on CPU)."""
    folder = tmp_path_factory.mktemp("fsdp")
    cases_path, output_path = folder / "cases.json", folder / "results.pt"
    cases_path.write_text(json.dumps(list(CASES.values())))
    completed = accelerate_launch(
        SCRIPT, [str(cases_path), str(output_path), str(folder / "out")], config_file=RECIPE, timeout=400,
        env={"OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-4000:]  # trained, saved, and every process exited
    return dict(zip(CASES, torch.load(output_path, weights_only=False))), completed.stderr


def _relative(value: torch.Tensor, expected: torch.Tensor) -> float:
    return ((value - expected).norm() / expected.norm().clamp(min=1e-12)).item()


def _assert_exact(result: dict, tolerance: float = TOLERANCE, loss_tolerance: float = TOLERANCE) -> None:
    """Every step's gradient and loss equal the per-sample reference's, and SGD moved the weights by the reference
    gradient (times the learning rate) from one step to the next and to the end."""
    steps = result["steps"]
    assert len(steps) >= 2 and len({(step["num_samples"], step["num_tokens"]) for step in steps}) > 1
    for index, step in enumerate(steps):
        reference = step["reference_grads"]
        assert set(step["grads"]) == set(reference)
        for name, expected in reference.items():
            assert _relative(step["grads"][name], expected) <= tolerance, (index, name)
        assert step["loss"] == pytest.approx(step["reference_loss"], rel=loss_tolerance)
        after = steps[index + 1]["weights"] if index + 1 < len(steps) else result["final"]
        for name, before in step["weights"].items():
            update = LEARNING_RATE * reference.get(name, torch.zeros_like(before))  # none for LoRA's frozen weights
            # fp32 rounding of the subtraction, and the gradient's own tolerance
            slack = 4 * torch.finfo(torch.float32).eps * before.abs().max() + tolerance * update.abs().max()
            assert (after[name] - (before - update)).abs().max() <= slack, (index, name)


@pytest.mark.multiprocess
@pytest.mark.slow
@pytest.mark.parametrize("name", [name for name in CASES if name not in ("bf16", "resume")])
def test_fsdp2_is_exact_per_step(fsdp_run, name):
    result = fsdp_run[0][name]
    assert result["is_fsdp2"] and result["sharded"]  # DTensor shards, not DDP's replicas
    _assert_exact(result)


@pytest.mark.multiprocess
@pytest.mark.slow
def test_fsdp2_divides_by_the_process_count_in_mixed_precision_too(fsdp_run):
    # bf16 parameters and reduce-scatter: the trainer's loss scale still meets FSDP's divisor (a wrong one would be
    # off by 100% or more); the rest is bf16 rounding.
    result = fsdp_run[0]["bf16"]
    assert "mixed precision param_dtype bfloat16, reduce_dtype bfloat16" in result["engine"]
    _assert_exact(result, tolerance=0.1, loss_tolerance=2e-3)


@pytest.mark.multiprocess
@pytest.mark.slow
def test_the_engine_named_is_the_engine_that_ran(fsdp_run):
    results, log = fsdp_run
    assert results["recipe"]["engine"] == RECIPE_ENGINE
    trainers = sum(2 if case.get("resume") else 1 for case in CASES.values())
    assert log.count("INFO:longalign_hf.training.trainer:Engine: FSDP2 ") == trainers
    assert f"Engine: {RECIPE_ENGINE}" in log and "so they train together (FSDP over gloo)" in log
    assert "parameter offload on (unpinned)" in results["offload"]["engine"]
    assert "cpu_ram_efficient_loading off" in results["no-checkpointing"]["engine"]
    arguments = results["training-arguments"]["engine"]
    assert arguments.startswith("FSDP2 shard grad op (reshard after forward off,") and "FULL_STATE_DICT" in arguments


@pytest.mark.multiprocess
@pytest.mark.slow
def test_one_activation_checkpointing_runs(fsdp_run):
    results = fsdp_run[0]
    # FSDP's own wins over the trainer's default, which is turned off (and said so in the engine and the card).
    assert results["fsdp-checkpointing"]["checkpointing"] == {"fsdp": True, "trainer": False}
    assert not results["fsdp-checkpointing"]["args_activation_checkpointing"]
    assert "FSDP activation checkpointing on" in results["fsdp-checkpointing"]["engine"]
    # The trainer's, by default or asked for, under FSDP that has none of its own.
    for name in ("recipe", "training-arguments"):
        assert results[name]["checkpointing"] == {"fsdp": False, "trainer": True}
    assert results["no-checkpointing"]["checkpointing"] == {"fsdp": False, "trainer": False}


@pytest.mark.multiprocess
@pytest.mark.slow
def test_cpu_ram_efficient_loading_starts_every_rank_from_the_main_process_weights(fsdp_run):
    # Each rank built the model from its own seed; the trained model starts from rank 0's.
    assert fsdp_run[0]["recipe"]["start_is_rank0"]


@pytest.mark.multiprocess
@pytest.mark.slow
@pytest.mark.parametrize("name", ["recipe", "training-arguments", "lora"])
def test_save_model_writes_one_loadable_folder_with_the_card(fsdp_run, name):
    result = fsdp_run[0][name]  # sharded checkpoints (the recipe's, LoRA's) or full ones
    weights = ["adapter_model.safetensors", "adapter_config.json"] if name == "lora" else ["model.safetensors"]
    assert {*weights, "README.md"} <= set(result["saved_files"])
    assert set(result["saved"]) == set(result["final"])
    for parameter, value in result["final"].items():
        assert torch.equal(result["saved"][parameter], value), parameter
    if name == "recipe":
        assert f"| engine | {RECIPE_ENGINE} |" in result["card"]
        assert "| activation checkpointing | on |" in result["card"]
        assert f"{result['parameters']:,} parameters" in result["card"]  # the whole model's, not a shard's


@pytest.mark.multiprocess
@pytest.mark.slow
def test_fsdp2_evaluation_counts_every_sample_once(fsdp_run):
    evaluation = fsdp_run[0]["recipe"]["eval"]
    metrics, reference = evaluation["metrics"], evaluation["reference"]
    assert metrics["eval_loss"] == pytest.approx(reference["loss"], rel=TOLERANCE)
    assert metrics["eval_entropy"] == pytest.approx(reference["entropy"], rel=TOLERANCE)
    assert metrics["eval_mean_token_accuracy"] == pytest.approx(reference["accuracy"], rel=TOLERANCE)


@pytest.mark.multiprocess
@pytest.mark.slow
def test_a_sharded_checkpoint_resumes_mid_epoch_to_the_uninterrupted_run(fsdp_run):
    full, resumed = fsdp_run[0]["resume"]["full"], fsdp_run[0]["resume"]["resumed"]
    # The checkpoint holds FSDP's shards (model and AdamW state), not a gathered model.
    files = full["checkpoint_files"]
    assert "pytorch_model_fsdp_0" in files and "optimizer_0" in files and "model.safetensors" not in files
    assert full["global_step"] == resumed["global_step"] == 3 and len(full["steps"]) == 3
    assert resumed["steps"] == full["steps"][1:]  # the same samples in the same steps
    assert resumed["losses"] == pytest.approx(full["losses"][1:], rel=1e-6)
    for name, value in full["final"].items():
        torch.testing.assert_close(resumed["final"][name], value, rtol=1e-6, atol=1e-7)
        assert torch.equal(full["saved"][name], value), name  # gathered from the sharded run into one folder
    assert "checkpoint state dict SHARDED_STATE_DICT" in full["card"]
