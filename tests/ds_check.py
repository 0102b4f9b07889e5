"""DeepSpeed ZeRO without sequence parallelism (DeepSpeed's engine, gloo on CPU) vs. per-sample references, for
`tests/training/test_deepspeed.py`.

Launched as `DS_ACCELERATOR=cpu torchrun --nproc_per_node 2 tests/ds_check.py CASES.json OUT.pt OUTPUT_DIR`: trains
`LongAlignSFTTrainer` for one epoch on the samples of `grad_check` that have targets (6 packs, or 11 samples sorted)
under DeepSpeed ZeRO. The DeepSpeed config is a case's `zero` (its `zero_optimization`) and `deepspeed` (other
top-level keys), given as `deepspeed=`; or, with `accelerate_config` (a recipe's accelerate YAML), the environment
`accelerate launch` gives its processes for that file, cut to this machine (2 CPU processes, no mixed precision). The
model is built after the training arguments, as the recipe loads it (under ZeRO-3, partitioned as it is built). Rank 0
writes, for every optimizer step, the weights it started from, the gradient DeepSpeed applied (`sp_check`'s recorder)
and the loss the Trainer logged, next to the gradient and value of the LongAlign objective over the step's samples,
each sample alone, unpacked, through the plain model with full logits; the final weights, and the seconds each case
took.

A case gives `batching`, `loss_weighting`, `accumulation`, and optionally `optim` (default sgd), `learning_rate`,
`lr_scheduler_type`, `max_grad_norm` (default 0, no clipping), `adam` (`adam_beta1`, `adam_beta2`, `adam_epsilon`,
`weight_decay`), `lora`, `save` (`save_model` into `OUTPUT_DIR/<case>/saved`, and into the output folder as
`push_to_hub` saves it, which the test loads), `refused` (only build the trainer, which must refuse: the result is its
message; `pass_optimizer` passes it an optimizer) or `resume` (`sp_resume_check`'s uninterrupted and resumed runs).
Several cases run in one launch (process start-up dominates); between them accelerate's state, transformers' DeepSpeed
config and the environment a case set are put back, as a fresh process would have them.
"""

from __future__ import annotations

import json
import os
import sys
import time

import sp_resume_check
import torch
import torch.distributed as dist
import yaml
from grad_check import MAX_LENGTH, _all_ranks, _LossCapture, _samples_of, build_dataset, reference_loss
from sp_check import _full_state_dict, _load, _SPRecorder

from longalign_hf import LongAlignConfig
from longalign_hf.tiny import build_byte_tokenizer, build_tiny_model
from longalign_hf.training.distributed import run_then_exit

# What `accelerate launch` sets for an accelerate config's `deepspeed_config` (accelerate 1.16,
# `utils/launch.py:prepare_deepspeed_cmd_env`); the processes' `DeepSpeedPlugin` reads it back.
_LAUNCHER_VARIABLES = {
    "zero_stage": "ACCELERATE_DEEPSPEED_ZERO_STAGE",
    "offload_optimizer_device": "ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE",
    "offload_param_device": "ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE",
    "zero3_init_flag": "ACCELERATE_DEEPSPEED_ZERO3_INIT",
    "zero3_save_16bit_model": "ACCELERATE_DEEPSPEED_ZERO3_SAVE_16BIT_MODEL",
}


def launcher_environment(path: str) -> dict[str, str]:
    """The DeepSpeed variables `accelerate launch --config_file path` gives its processes, with mixed precision off
    (bf16 does not train on this CPU)."""
    with open(path) as handle:
        config = yaml.safe_load(handle)
    assert config["distributed_type"] == "DEEPSPEED", path
    environment = {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_MIXED_PRECISION": "no"}
    for key, value in config["deepspeed_config"].items():
        if key == "deepspeed_multinode_launcher":
            continue  # how several machines are started
        assert key in _LAUNCHER_VARIABLES, f"{path}: map `{key}` to what accelerate sets for it"
        environment[_LAUNCHER_VARIABLES[key]] = str(value).lower()
    return environment


class _DSRecorder(_SPRecorder):
    """`sp_check`'s recorder, keeping every step's samples (each rank trains whole rows)."""

    def record_step(self, batches: list[dict]) -> None:
        self.step_samples.append([sample for batch in batches for sample in _samples_of(batch)])


def _lora_config():
    from peft import LoraConfig

    return LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)


def _plain_model(tokenizer, case: dict):
    model = build_tiny_model(tokenizer, seed=0, max_position_embeddings=MAX_LENGTH)
    model.config._attn_implementation = "sdpa"
    if case.get("lora"):
        from peft import get_peft_model

        model = get_peft_model(model, _lora_config())
    return model


def _args(case: dict, output_dir: str) -> LongAlignConfig:
    deepspeed = None
    if "zero" in case:
        deepspeed = {
            "zero_optimization": case["zero"], "train_micro_batch_size_per_gpu": "auto",
            "gradient_accumulation_steps": "auto", "train_batch_size": "auto", "gradient_clipping": "auto",
            **case.get("deepspeed", {}),
        }  # fmt: skip
    return LongAlignConfig(
        output_dir=output_dir, batching=case["batching"], loss_weighting=case["loss_weighting"], max_length=MAX_LENGTH,
        per_device_train_batch_size=1, gradient_accumulation_steps=case["accumulation"], num_train_epochs=1,
        optim=case.get("optim", "sgd"), learning_rate=case.get("learning_rate", 0.1),
        lr_scheduler_type=case.get("lr_scheduler_type", "constant"), max_grad_norm=case.get("max_grad_norm", 0.0),
        bf16=False, report_to="none",
        save_strategy="no", logging_steps=1, seed=0, deepspeed=deepspeed, **case.get("adam", {}),
    )  # fmt: skip


def _build(case: dict, output_dir: str):
    tokenizer = build_byte_tokenizer()
    # The reference runs outside DeepSpeed, built before any DeepSpeed config exists (ZeRO-3 would partition it).
    reference_model = _plain_model(tokenizer, case)
    args = _args(case, output_dir)
    model = build_tiny_model(tokenizer, seed=0, max_position_embeddings=MAX_LENGTH)
    model.config._attn_implementation = "sdpa"
    built_partitioned = all(hasattr(param, "ds_id") for param in model.parameters())  # under DeepSpeed's zero.Init
    extra = {"peft_config": _lora_config()} if case.get("lora") else {}
    if case.get("pass_optimizer"):
        extra["optimizers"] = (torch.optim.SGD(model.parameters(), lr=0.1), None)
    losses = _LossCapture()
    trainer = _DSRecorder(
        model=model, args=args, train_dataset=build_dataset(tokenizer), processing_class=tokenizer,
        callbacks=[losses], **extra,
    )  # fmt: skip
    trainer.built_partitioned = built_partitioned
    return tokenizer, trainer, losses, reference_model


def _train_and_compare(case: dict, output_dir: str) -> dict:
    if case.get("refused"):
        # Settings the trainer must refuse when it is built (before any training), from the config it really gets.
        try:
            _build(case, output_dir)
        except ValueError as error:
            return {"refusal": str(error)}
        return {"refusal": None}
    tokenizer, trainer, losses, model = _build(case, output_dir)
    trainer.step_weights, trainer.step_samples, trainer.step_grads = [], [], []
    trainer.step_grads_captured = False
    trainer.train()
    engine = trainer.model_wrapped
    zero = engine._config.zero_config
    result = {
        "world_size": dist.get_world_size(),
        "zero_stage": engine.zero_optimization_stage(),
        "offload": [
            getattr(offload, "device", "none") != "none" for offload in (zero.offload_optimizer, zero.offload_param)
        ],
        "optimizer": type(engine.basic_optimizer).__name__,
        "built_partitioned": trainer.built_partitioned,
        "final_weights": _full_state_dict(trainer.accelerator.unwrap_model(trainer.model)),
        "steps": [],
    }
    if case.get("save"):
        result["saved"] = os.path.join(output_dir, "saved")
        trainer.save_model(result["saved"])
        trainer.save_model(_internal_call=True)  # as `push_to_hub` saves `output_dir` before it uploads
    by_rank = _all_ranks(trainer.step_samples)
    if dist.get_rank() != 0:
        return result
    dataset = build_dataset(tokenizer)
    rows = {tuple(ids): index for index, ids in enumerate(dataset["input_ids"])}
    model.eval()
    for step in range(len(trainer.step_samples)):
        trained = dataset.select([rows[sample] for rank in by_rank for sample in rank[step]])
        _load(model, trainer.step_weights[step])
        model.zero_grad(set_to_none=True)
        reference = reference_loss(model, trained, case["loss_weighting"])
        reference.backward()
        result["steps"].append({
            "weights": trainer.step_weights[step],
            "grads": trainer.step_grads[step],
            "reference_grads": {name: p.grad.detach().clone() for name, p in model.named_parameters()
                                if p.grad is not None},
            "loss": losses.losses[step],
            "reference_loss": reference.item(),
            "num_samples": sum(n > 0 for n in trained["num_target_tokens"]),
            "num_tokens": sum(trained["num_target_tokens"]),
        })  # fmt: skip
    return result


def _reset() -> None:
    """What a case left in this process: accelerate's state (the DeepSpeed plugin it was built with) and the DeepSpeed
    config transformers keeps (after ZeRO-3, the next case's models would be built partitioned)."""
    from accelerate.state import AcceleratorState
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    AcceleratorState._reset_state()
    unset_hf_deepspeed_config()


def run_case(case: dict, output_dir: str) -> dict:
    if case.get("resume"):
        return sp_resume_check.run_case({**case, "sp_size": 1}, output_dir)  # it puts the state back itself
    environment = launcher_environment(case["accelerate_config"]) if "accelerate_config" in case else {}
    os.environ.update(environment)
    try:
        return _train_and_compare(case, output_dir)
    finally:
        for key in environment:
            del os.environ[key]
        _reset()


if __name__ == "__main__":
    cases_path, output_path, output_dir = sys.argv[1:4]
    with open(cases_path) as handle:
        cases = json.load(handle)

    def main():
        results = []
        for index, case in enumerate(cases):
            start = time.perf_counter()
            result = run_case(case, os.path.join(output_dir, str(index)))
            results.append({**result, "seconds": time.perf_counter() - start})
        if dist.get_rank() == 0:
            torch.save(results, output_path)

    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    run_then_exit(main)
