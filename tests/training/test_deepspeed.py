"""DeepSpeed without sequence parallelism: what is refused before training, without a launch, and the real engine on 2
gloo processes (`tests/ds_check.py`): ZeRO-2, ZeRO-3 and ZeRO-3 with parameter and optimizer offload
(recipes/accelerate/zero3.yaml and zero3_offload.yaml cut to 2 CPU processes) exact at every optimizer step against the
per-sample reference, the offloaded optimizer computing torch's AdamW update, LoRA under ZeRO-3, the saved folder and
its card, and a resume mid-epoch equal to the uninterrupted run."""

import json
import os
from types import SimpleNamespace

import pytest
import torch
from grad_check import MAX_LENGTH
from launch import torchrun_launch

from longalign_hf import LongAlignConfig
from longalign_hf.tiny import build_byte_tokenizer, build_tiny_model
from longalign_hf.training.deepspeed_checks import (
    check_deepspeed,
    check_deepspeed_optimizer,
    check_gradient_reduction,
    gradient_divisor,
)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DS_CHECK = os.path.join(ROOT, "tests", "ds_check.py")
ACCELERATE_CONFIGS = os.path.join(ROOT, "recipes", "accelerate")

_OFFLOAD = {"stage": 3, "offload_optimizer": {"device": "cpu"}, "offload_param": {"device": "cpu"}}


@pytest.mark.parametrize(
    "deepspeed_config",
    [
        # Without SP every path of DeepSpeed 0.19.8 divides the summed gradient by the number of processes, ZeRO-3
        # without its reduce-scatter too (its contiguous all-reduce and its per-parameter path; refused under SP).
        {"zero_optimization": {"stage": 3, "reduce_scatter": False, "reduce_bucket_size": 4096}},
        {"zero_optimization": {"stage": 3, "reduce_scatter": "false", "contiguous_gradients": False}},
        {
            "zero_optimization": {
                "stage": 2,
                "reduce_scatter": False,
                "overlap_comm": True,
                "round_robin_gradients": True,
            }
        },
        {"zero_optimization": {**_OFFLOAD, "offload_optimizer": {"device": "cpu", "ratio": 1.0}}},
        # The precision of the reduction, not its divisor: the user's choice, as bf16 is.
        {"zero_optimization": {"stage": 3}, "communication_data_type": "bf16"},
    ],
)
def test_reduction_settings_with_one_divisor_are_accepted_without_sp(deepspeed_config):
    pytest.importorskip("deepspeed")
    check_gradient_reduction(deepspeed_config)


@pytest.mark.parametrize(
    ("deepspeed_config", "match"),
    [
        ({"zero_optimization": {"stage": 3, "reduce_scatter": False}, "gradient_predivide_factor": 2.0},
         "gradient_predivide_factor"),
        ({"zero_optimization": {"stage": 0}, "prescale_gradients": True}, "prescale_gradients"),
        ({"zero_optimization": {"stage": 2}, "gradient_allreduce_op": "sum"}, "gradient_allreduce_op"),
        ({"zero_optimization": {"stage": 3, "zero_quantized_gradients": True}}, "zero_quantized_gradients"),
        ({"zero_optimization": {"stage": 3, "zero_hpz_partition_size": 2}}, "zero_hpz_partition_size"),
        ({"zero_optimization": {"stage": 2, "zenflow": {"topk_ratio": 0.1}}}, "ZenFlow"),
        ({"zero_optimization": {"stage": 3}, "compile": {"deepcompile": True}}, "DeepCompile"),
        ({"zero_optimization": {"stage": 2}, "tensor_parallel": {"autotp_size": 2}}, "AutoTP"),
        ({"zero_optimization": {**_OFFLOAD, "offload_optimizer": {"device": "cpu", "ratio": 0.5}}}, "ratio"),
        ({"zero_optimization": {**_OFFLOAD, "offload_optimizer": {"device": "cpu", "super_offload": True}}},
         "SuperOffload"),
    ],
)  # fmt: skip
def test_reduction_settings_not_followed_are_refused_without_sp(deepspeed_config, match):
    pytest.importorskip("deepspeed")
    with pytest.raises(ValueError, match=f"^the loss is scaled for what DeepSpeed divides .*{match}"):
        check_gradient_reduction(deepspeed_config)


def _engine(stage: int, reduce_scatter: bool = True):
    return SimpleNamespace(zero_optimization_stage=lambda: stage, zero_reduce_scatter=lambda: reduce_scatter)


def test_the_gradient_divisor_of_each_stage():
    # Without SP: the number of processes on every stage, as DDP; ZeRO-3 without reduce-scatter too.
    assert [gradient_divisor(_engine(stage), 4) for stage in range(4)] == [4, 4, 4, 4]
    assert gradient_divisor(_engine(3, reduce_scatter=False), 4) == 4
    # Under SP: the data-parallel replicas on ZeRO 0-2, every rank on ZeRO-3.
    assert [gradient_divisor(_engine(stage), 4, sp_size=2) for stage in range(4)] == [2, 2, 2, 4]
    with pytest.raises(RuntimeError, match="should have been refused"):
        gradient_divisor(_engine(3, reduce_scatter=False), 4, sp_size=2)


def _args(tmp_path, **overrides):
    return LongAlignConfig(output_dir=str(tmp_path), report_to="none", max_length=256, **overrides)


@pytest.mark.parametrize(
    ("deepspeed_config", "overrides", "given", "cls_and_kwargs", "match"),
    [
        # The run: `--optim sgd` under ZeRO-3 offload trained as Adam.
        ({"zero_optimization": _OFFLOAD}, {"optim": "sgd"}, False, None,
         "optimizer \\(optim=sgd\\) with DeepSpeed's CPU Adam"),
        ({"zero_optimization": {"stage": 2, "offload_optimizer": {"device": "nvme"}}}, {"optim": "adagrad"}, False,
         None, "optim=adagrad"),
        ({"zero_optimization": _OFFLOAD}, {}, False, (torch.optim.SGD, {}), "optimizer \\(SGD\\)"),
        ({"zero_optimization": _OFFLOAD}, {}, False, (torch.optim.AdamW, {"amsgrad": True}), "optimizer \\(AdamW\\)"),
        ({"zero_optimization": {"stage": 2}, "optimizer": {"type": "AdamW", "params": {"lr": "auto"}}}, {}, False,
         None, "`optimizer` \\(AdamW\\) replaces the trainer's `optim=adamw_torch_fused`"),
        ({"zero_optimization": {"stage": 3}, "scheduler": {"type": "WarmupLR"}}, {}, False, None,
         "`scheduler` \\(WarmupLR\\) replaces the trainer's `lr_scheduler_type=linear`"),
        ({"zero_optimization": {"stage": 1}}, {}, True, None, "passed to the trainer \\(`optimizers=`\\)"),
    ],
)  # fmt: skip
def test_optimizers_deepspeed_would_replace_are_refused(tmp_path, deepspeed_config, overrides, given, cls_and_kwargs,
                                                        match):  # fmt: skip
    pytest.importorskip("deepspeed")
    with pytest.raises(
        ValueError, match=f"^DeepSpeed would not train with the optimizer and schedule you chose: .*{match}"
    ):
        check_deepspeed_optimizer(deepspeed_config, _args(tmp_path, **overrides), given, cls_and_kwargs)


@pytest.mark.parametrize(
    ("deepspeed_config", "overrides", "cls_and_kwargs"),
    [
        # torch's AdamW runs as DeepSpeed's CPU Adam in AdamW mode, with its own hyper-parameters (tests/ds_check.py).
        ({"zero_optimization": _OFFLOAD}, {"optim": "adamw_torch"}, None),
        ({"zero_optimization": _OFFLOAD}, {}, None),  # the default, adamw_torch_fused
        ({"zero_optimization": _OFFLOAD}, {"optim": "sgd"}, (torch.optim.AdamW, {"betas": (0.9, 0.95)})),
        # DeepSpeed steps the trainer's own optimizer on the offloaded weights.
        ({"zero_optimization": _OFFLOAD, "zero_force_ds_cpu_optimizer": False}, {"optim": "sgd"}, None),
        ({"zero_optimization": {**_OFFLOAD, "offload_optimizer": {"device": "none"}}}, {"optim": "sgd"}, None),
        ({"zero_optimization": {"stage": 2}}, {"optim": "adagrad"}, None),
    ],
)
def test_optimizers_deepspeed_runs_as_given_are_accepted(tmp_path, deepspeed_config, overrides, cls_and_kwargs):
    pytest.importorskip("deepspeed")
    check_deepspeed_optimizer(deepspeed_config, _args(tmp_path, **overrides), False, cls_and_kwargs)


def test_the_trainer_checks_the_deepspeed_config_it_gets(tmp_path):
    pytest.importorskip("deepspeed")
    args = _args(tmp_path, optim="sgd")
    check_deepspeed(args, (None, None))  # no DeepSpeed: nothing to check
    args.deepspeed_plugin = SimpleNamespace(deepspeed_config={"zero_optimization": _OFFLOAD})
    with pytest.raises(ValueError, match="CPU Adam"):
        check_deepspeed(args, (None, None))
    args.deepspeed_plugin.deepspeed_config = {"zero_optimization": {"stage": 1}, "prescale_gradients": True}
    with pytest.raises(ValueError, match="prescale_gradients"):
        check_deepspeed(args)
    args.deepspeed_plugin.deepspeed_config = {"zero_optimization": {"stage": 1}}
    with pytest.raises(ValueError, match="optimizers="):
        check_deepspeed(args, (None, object()))


# ---- the real engine ------------------------------------------------------------------------------------------------

_ADAM = {"adam_beta1": 0.8, "adam_beta2": 0.9, "adam_epsilon": 1e-3, "weight_decay": 0.5}
CASES = [
    # ZeRO-2: reduce-scatter (the default); all-reduce of small buckets with overlapped, round-robin partitions; the
    # all-reduce of non-contiguous gradients.
    {"zero": {"stage": 2}, "batching": "pack", "loss_weighting": "sequence", "accumulation": 1},
    {"zero": {"stage": 2, "reduce_scatter": False, "reduce_bucket_size": 4096, "overlap_comm": True,
              "round_robin_gradients": True}, "batching": "sort", "loss_weighting": "token", "accumulation": 3},
    {"zero": {"stage": 2, "contiguous_gradients": False}, "batching": "pack", "loss_weighting": "token",
     "accumulation": 1},
    # ZeRO-3 as recipes/accelerate/zero3.yaml sets it (reduce-scatter, model built partitioned, 16-bit save), and
    # without reduce-scatter, its contiguous all-reduce and its per-parameter path (parameters over 4096 elements).
    {"accelerate_config": "zero3.yaml", "batching": "sort", "loss_weighting": "token", "accumulation": 3,
     "save": True},
    {"zero": {"stage": 3, "reduce_scatter": False, "reduce_bucket_size": 4096}, "batching": "pack",
     "loss_weighting": "sequence", "accumulation": 1},
    # recipes/accelerate/zero3_offload.yaml: the default optimizer (torch's fused AdamW) runs as DeepSpeed's CPU Adam,
    # with non-default betas, eps, weight decay and a linear schedule.
    {"accelerate_config": "zero3_offload.yaml", "batching": "pack", "loss_weighting": "sequence", "accumulation": 1,
     "optim": "adamw_torch_fused", "learning_rate": 0.01, "lr_scheduler_type": "linear", "adam": _ADAM,
     "save": True},
    # Offload with the trainer's SGD (zero_force_ds_cpu_optimizer: false) and gradient clipping (the gradient's norm
    # is 2.5-3), saved from the gathered fp32 weights.
    {"zero": {**_OFFLOAD, "stage3_gather_16bit_weights_on_model_save": False},
     "deepspeed": {"zero_force_ds_cpu_optimizer": False}, "batching": "sort", "loss_weighting": "token",
     "accumulation": 3, "max_grad_norm": 0.5, "save": True},
    {"zero": {"stage": 3}, "lora": True, "batching": "pack", "loss_weighting": "token", "accumulation": 1,
     "save": True},
    # A bf16 reduction of fp32 gradients: bf16's rounding (~2e-3), the same divisor (a wrong one would be 0.5 off).
    {"zero": {"stage": 3}, "deepspeed": {"communication_data_type": "bf16"}, "batching": "pack",
     "loss_weighting": "sequence", "accumulation": 1, "tolerance": 1e-2},
    # Stopped after 2 of the 3 steps of the first epoch and resumed, to step 5 of the second (CPU Adam's state).
    {"resume": True, "zero": _OFFLOAD, "accumulation": 1, "loss_weighting": "sequence", "optim": "adamw_torch",
     "max_steps": 5, "save_steps": 2},
    # Refused when the trainer is built, from the config it gets: the issue's `--optim sgd` under zero3_offload.yaml,
    # and an optimizer passed to the trainer.
    {"accelerate_config": "zero3_offload.yaml", "batching": "pack", "loss_weighting": "sequence", "accumulation": 1,
     "refused": True},
    {"zero": {"stage": 2}, "batching": "pack", "loss_weighting": "sequence", "accumulation": 1, "refused": True,
     "pass_optimizer": True},
]  # fmt: skip


def _relative(update: dict, reference: dict) -> float:
    squared = sum(((update[name] - reference[name]) ** 2).sum() for name in reference)
    return float(squared.sqrt() / sum((value**2).sum() for value in reference.values()).sqrt())


def _updates(result: dict) -> list[dict]:
    """What each optimizer step changed in the trained parameters."""
    steps = result["steps"]
    after = [step["weights"] for step in steps[1:]] + [result["final_weights"]]
    return [{name: later[name] - step["weights"][name] for name in step["reference_grads"]}
            for step, later in zip(steps, after)]  # fmt: skip


def _torch_adamw_difference(result: dict, learning_rate: float, betas, eps: float, weight_decay: float,
                            adam_w: bool = True, decay_norms: bool = False) -> float:  # fmt: skip
    """Largest relative difference between each step's update and torch's AdamW (or Adam) from the same weights, the
    reference gradient and the moments of the steps before: weight decay on every matrix, not on norms (as the
    trainer groups them), the linear schedule computed here."""
    steps = result["steps"]
    names = list(steps[0]["reference_grads"])
    params = {name: torch.nn.Parameter(steps[0]["weights"][name].clone()) for name in names}
    decayed = [name for name in names if decay_norms or "norm" not in name]
    groups = [{"params": [params[n] for n in decayed], "weight_decay": weight_decay},
              {"params": [params[n] for n in names if n not in decayed], "weight_decay": 0.0}]  # fmt: skip
    optimizer = (torch.optim.AdamW if adam_w else torch.optim.Adam)(groups, lr=learning_rate, betas=betas, eps=eps)
    worst = 0.0
    for index, (step, update) in enumerate(zip(steps, _updates(result))):
        with torch.no_grad():
            for name in names:
                params[name].copy_(step["weights"][name])
                params[name].grad = step["reference_grads"][name].clone()
        for group in optimizer.param_groups:
            group["lr"] = learning_rate * (len(steps) - index) / len(steps)
        optimizer.step()
        expected = {name: params[name].detach() - step["weights"][name] for name in names}
        worst = max(worst, _relative(update, expected))
    return worst


def _check_steps(case: dict, result: dict) -> list[float]:
    """Every step's gradient and logged loss against the per-sample reference, and, for SGD, the update it applied."""
    steps = result["steps"]
    counts = [step["num_samples" if case["loss_weighting"] == "sequence" else "num_tokens"] for step in steps]
    assert len(set(counts)) > 1, f"every step has the same count {counts}: cannot tell per-step from per-set"
    differences, tolerance = [], case.get("tolerance", 1e-5)
    for step, update in zip(steps, _updates(result)):
        assert set(step["grads"]) == set(step["reference_grads"])
        differences.append(_relative(step["grads"], step["reference_grads"]))
        assert differences[-1] <= tolerance
        assert step["loss"] == pytest.approx(step["reference_loss"], rel=1e-5)
        if case.get("optim", "sgd") == "sgd":
            # Plain SGD at lr 0.1: the update is -0.1 x the objective's gradient, clipped to `max_grad_norm` (whose
            # smaller updates meet the weights' fp32 rounding at ~1e-5).
            reference = step["reference_grads"]
            norm = float(sum((grad**2).sum() for grad in reference.values()).sqrt())
            scale = min(1.0, case["max_grad_norm"] / (norm + 1e-6)) if case.get("max_grad_norm") else 1.0
            assert scale < 1.0 or not case.get("max_grad_norm"), "the gradient is not clipped"
            expected = {name: -0.1 * scale * grad for name, grad in reference.items()}
            assert _relative(update, expected) <= (1e-4 if scale < 1.0 else tolerance)
    return differences


def _check_saved(folder: str, result: dict, lora: bool) -> None:
    """The saved folder loads with `from_pretrained` (the adapter with peft) to the final weights, next to the card."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    assert "tokens trained" in open(os.path.join(folder, "README.md"), encoding="utf-8").read()
    final = result["final_weights"]
    if lora:
        saved = load_file(os.path.join(folder, "adapter_model.safetensors"))
        trained = {name.replace(".default.", "."): weight for name, weight in final.items() if "lora_" in name}
        assert set(saved) == set(trained)
    else:
        model = AutoModelForCausalLM.from_pretrained(folder)
        saved = dict(model.named_parameters())
        trained = final
        assert set(saved) == set(trained)
    assert all(torch.equal(saved[name], trained[name]) for name in trained)


def _check_resume(case: dict, result: dict) -> float:
    full, resumed = result["full"], result["resumed"]
    assert len(full["rows"]) == full["max_steps"] == case["max_steps"] == resumed["max_steps"]
    assert resumed["rows"] == full["rows"][case["save_steps"] :]  # the same rows in the same order
    assert set(resumed["losses"]) == set(full["losses"]) == set(range(1, case["max_steps"] + 1))
    for step, loss in resumed["losses"].items():
        assert loss == pytest.approx(full["losses"][step], rel=1e-5), step
    assert resumed["num_tokens"] == full["num_tokens"]
    initial = dict(
        build_tiny_model(build_byte_tokenizer(), seed=0, max_position_embeddings=MAX_LENGTH).named_parameters()
    )
    moved = max((full["weights"][name] - initial[name]).abs().max().item() for name in initial)
    difference = max((full["weights"][name] - resumed["weights"][name]).abs().max().item() for name in initial)
    # CPU Adam keeps beta^t in float32, multiplied step by step in one run and from `pow` after a resume; its bias
    # correction 1 / (1 - beta2^t) turns that rounding into ~1e-5 of one step's update. Adam moments lost at the resume
    # would move the weights by a whole update (~1e-2 here).
    assert difference <= 1e-4 * moved
    return difference / moved


@pytest.mark.multiprocess
@pytest.mark.slow
def test_zero2_zero3_and_offload_exact_on_two_processes(tmp_path):
    pytest.importorskip("deepspeed")
    cases = [{**case, "accelerate_config": os.path.join(ACCELERATE_CONFIGS, case["accelerate_config"])}
             if "accelerate_config" in case else case for case in CASES]  # fmt: skip
    cases_path, output_path = tmp_path / "cases.json", tmp_path / "out.pt"
    cases_path.write_text(json.dumps(cases))
    completed = torchrun_launch(
        DS_CHECK, [str(cases_path), str(output_path), str(tmp_path / "out")], 2, timeout=360,
        env={"DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-4000:]
    results = torch.load(output_path, weights_only=False)
    assert len(results) == len(CASES)
    expected = [  # ZeRO stage, (optimizer offloaded, parameters offloaded), the optimizer DeepSpeed steps, steps
        (2, [False, False], "SGD", 3), (2, [False, False], "SGD", 2), (2, [False, False], "SGD", 3),
        (3, [False, False], "SGD", 2),
        (3, [False, False], "SGD", 3), (3, [True, True], "DeepSpeedCPUAdam", 3), (3, [True, True], "SGD", 2),
        (3, [False, False], "SGD", 3), (3, [False, False], "SGD", 3),
    ]  # fmt: skip
    for case, result, (stage, offload, optimizer, num_steps) in zip(CASES, results, expected):
        assert result["world_size"] == 2
        assert (result["zero_stage"], result["offload"], result["optimizer"]) == (stage, offload, optimizer)
        # Under ZeRO-3 the model is partitioned as it is built (after the training arguments, as the recipe loads it).
        assert result["built_partitioned"] == (stage == 3)
        assert len(result["steps"]) == num_steps
        differences = _check_steps(case, result)
        figures = f"{case}: gradient vs reference, largest relative difference {max(differences):.1e}"
        if case.get("save"):
            # What `save_model` wrote, and what `push_to_hub` would upload (its save of the output folder).
            _check_saved(result["saved"], result, case.get("lora", False))
            _check_saved(os.path.join(tmp_path, "out", str(CASES.index(case))), result, case.get("lora", False))
        print(f"{figures} ({result['seconds']:.1f} s)")  # `pytest -s` shows the measured figures
    lora = results[7]
    assert lora["steps"][0]["grads"] and all("lora_" in name for name in lora["steps"][0]["grads"])
    # CPU Adam computes torch's AdamW update with the trainer's hyper-parameters and groups; each one dropped or
    # changed (the defaults, no decay, decay on norms too, Adam's L2 instead of AdamW) is seen.
    adamw = (results[5], 0.01, (0.8, 0.9), 1e-3)
    assert _torch_adamw_difference(*adamw, 0.5) <= 1e-5
    controls = [
        _torch_adamw_difference(results[5], 0.01, (0.9, 0.999), 1e-3, 0.5),
        _torch_adamw_difference(results[5], 0.01, (0.8, 0.9), 1e-8, 0.5),
        _torch_adamw_difference(*adamw, 0.0),
        _torch_adamw_difference(*adamw, 0.5, decay_norms=True),
        _torch_adamw_difference(*adamw, 0.5, adam_w=False),
    ]
    assert min(controls) > 1e-3, controls
    print(f"CPU Adam vs torch AdamW: {_torch_adamw_difference(*adamw, 0.5):.1e}; controls {min(controls):.1e} and up")
    print(f"resumed vs uninterrupted weights: {_check_resume(CASES[9], results[9]):.1e} of the distance moved")
    offload_sgd, passed_optimizer = results[10]["refusal"], results[11]["refusal"]
    assert "optimizer (optim=sgd) with DeepSpeed's CPU Adam" in (offload_sgd or "")
    assert "optimizers=" in (passed_optimizer or "")
