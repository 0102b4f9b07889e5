"""FSDP2 (torch's `fully_shard` over gloo on CPU processes) vs. per-sample references, for the FSDP tests.

Launched as `accelerate launch --config_file recipes/accelerate/fsdp2.yaml --num_processes 2 --mixed_precision no
tests/fsdp_check.py CASES.json OUT.pt OUTPUT_DIR` (the shipped config cut to 2 CPU processes, by
`tests/training/test_fsdp.py`). Several cases run in one launch (process start-up dominates); a case's `env` overrides
the launcher's `FSDP_*` variables (what another accelerate config would set), its `fsdp_config` takes the training
arguments' route instead (`fsdp=True`), and the environment is put back after each case.

A training case trains `LongAlignSFTTrainer` for one epoch on the 11 samples of `grad_check` with plain SGD at a constant
learning rate and records, for every optimizer step, the full weights it starts from, the full gradient FSDP applies
(gathered from the shards when the optimizer step starts) and the samples every rank trains on. Rank 0 then runs the
step's samples, each alone, unpacked, through an unsharded copy of the model (full logits) at those weights and builds
`(1/M) sum_i L_i / N_i` or `sum_i L_i / sum_i N_i` by hand: its gradient and value are the reference. It also writes the
final weights, the engine the trainer named, which activation checkpointing ran, with `save` the folder `save_model`
wrote, loaded back, and with `evaluate` the trainer's evaluation next to the reference's. `rank_seeds` builds each
rank's model from another seed (only loading the main process's weights makes them one model).

A `resume` case trains with AdamW and a linear schedule, saving (sharded) checkpoints every step, then a new trainer
resumes from the first one, mid-epoch: both runs' steps and final weights are written.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from grad_check import (
    MAX_LENGTH,
    _all_ranks,
    _LossCapture,
    _samples_of,
    build_dataset,
    reference_eval,
    reference_loss,
)
from torch.distributed.tensor import DTensor
from transformers import AutoModelForCausalLM, TrainerCallback

from longalign_hf import LongAlignConfig, LongAlignSFTTrainer
from longalign_hf.tiny import build_byte_tokenizer, build_tiny_model
from longalign_hf.training.distributed import run_then_exit
from longalign_hf.training.engines import describe_engine

LEARNING_RATE = 0.5


def _full(tensor: torch.Tensor) -> torch.Tensor:
    """A parameter or gradient whole: FSDP2 keeps a shard per rank (a collective: every rank calls it)."""
    return (tensor.full_tensor() if isinstance(tensor, DTensor) else tensor).detach().clone()


def _name(name: str) -> str:
    # FSDP's activation checkpointing wraps each layer: the parameter names of the model without it.
    return name.replace("_checkpoint_wrapped_module.", "")


def _full_weights(model) -> dict[str, torch.Tensor]:
    return {_name(name): _full(parameter) for name, parameter in model.named_parameters()}


class _GradCapture(TrainerCallback):
    """The gradient each optimizer step applies, gathered from FSDP's shards."""

    def __init__(self):
        self.grads: list[dict[str, torch.Tensor]] = []

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.grads.append({_name(name): _full(p.grad) for name, p in model.named_parameters() if p.grad is not None})


class _FsdpRecorder(LongAlignSFTTrainer):
    """Records, at the start of every optimizer step, the full weights it starts from and the samples it trains on."""

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        batches, num_items = super().get_batch_samples(epoch_iterator, num_batches, device)
        if batches:
            self.step_weights.append(_full_weights(self.model))
            self.step_samples.append([sample for batch in batches for sample in _samples_of(batch)])
        return batches, num_items


def _config(case: dict, output_dir: str, world: int, **overrides) -> LongAlignConfig:
    options = dict(
        output_dir=output_dir, batching=case["batching"], loss_weighting=case["loss_weighting"],
        max_length=MAX_LENGTH, per_device_train_batch_size=case.get("micro_rows", 2) // world,
        gradient_accumulation_steps=case["accumulation"], num_train_epochs=1, max_grad_norm=0.0, optim="sgd",
        learning_rate=LEARNING_RATE, lr_scheduler_type="constant", bf16=case.get("bf16", False), report_to="none",
        save_strategy="no", logging_steps=1, seed=0,
    )  # fmt: skip
    if "activation_checkpointing" in case:  # else the trainer's default (on) meets FSDP's setting
        options["activation_checkpointing"] = case["activation_checkpointing"]
    if "fsdp_config" in case:
        options.update(fsdp=True, fsdp_config=case["fsdp_config"])
    return LongAlignConfig(**{**options, **overrides})


def _model(case: dict, tokenizer, rank: int):
    # `rank_seeds`: every rank starts from other weights, so only loading rank 0's (cpu_ram_efficient_loading)
    # gives one model.
    return build_tiny_model(tokenizer, seed=rank if case.get("rank_seeds") else 0, max_position_embeddings=MAX_LENGTH)


def _peft_config(case: dict):
    if not case.get("lora"):
        return None
    from peft import LoraConfig

    return LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)


def _reference_model(case: dict):
    """The model outside the trainer (whose forward TRL patches and FSDP shards), with LoRA's layers where the case has
    them: the step weights are loaded into it."""
    model = _model(case, build_byte_tokenizer(), 0)
    if case.get("lora"):
        from peft import get_peft_model

        model = get_peft_model(model, _peft_config(case))
    return model


def _build(case: dict, output_dir: str, trainer_class=_FsdpRecorder, **overrides):
    tokenizer = build_byte_tokenizer()
    args = _config(case, output_dir, int(os.environ["WORLD_SIZE"]), **overrides)  # the process group starts here
    model = _model(case, tokenizer, dist.get_rank())
    model.config._attn_implementation = "sdpa"
    grads, losses = _GradCapture(), _LossCapture()
    dataset = build_dataset(tokenizer)
    trainer = trainer_class(
        model=model, args=args, train_dataset=dataset, eval_dataset=dataset if case.get("evaluate") else None,
        processing_class=tokenizer,
        peft_config=_peft_config(case), callbacks=[grads, losses],
    )  # fmt: skip
    trainer.step_weights, trainer.step_samples = [], []
    return trainer, grads, losses


def _checkpointing(trainer) -> dict[str, bool]:
    """Which activation checkpointing the trained model runs: FSDP's (checkpoint wrappers around its layers) and the
    trainer's (transformers' gradient checkpointing)."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper

    model = trainer.accelerator.unwrap_model(trainer.model)
    return {
        "fsdp": any(isinstance(module, CheckpointWrapper) for module in model.modules()),
        "trainer": any(getattr(module, "gradient_checkpointing", False) for module in model.modules()),
    }


def run_case(case: dict, output_dir: str) -> dict:
    trainer, grads, losses = _build(case, output_dir)
    trainer.train()
    final = _full_weights(trainer.model)
    steps = _all_ranks(trainer.step_samples)
    step_samples = [[sample for rank in steps for sample in rank[step]] for step in range(len(trainer.step_samples))]
    result = {
        "engine": describe_engine(trainer.accelerator),
        "is_fsdp2": trainer.accelerator.is_fsdp2,
        "sharded": isinstance(next(trainer.model.parameters()), DTensor),
        "checkpointing": _checkpointing(trainer),
        "args_activation_checkpointing": trainer.args.activation_checkpointing,
    }
    if case.get("save"):
        trainer.save_model(os.path.join(output_dir, "model"))
    metrics = trainer.evaluate() if case.get("evaluate") else None
    if dist.get_rank() != 0:
        return result
    if case.get("rank_seeds"):
        rank0_start = _full_weights(_model(case, build_byte_tokenizer(), 0))
        result["start_is_rank0"] = all(
            torch.equal(trainer.step_weights[0][name], value) for name, value in rank0_start.items()
        )
    dataset = build_dataset(build_byte_tokenizer())
    reference_model = _reference_model(case)
    rows = {tuple(ids): index for index, ids in enumerate(dataset["input_ids"])}
    result["steps"] = []
    for step, samples in enumerate(step_samples):
        trained = dataset.select([rows[sample] for sample in samples])
        missing, unexpected = reference_model.load_state_dict(trainer.step_weights[step], strict=False)
        parameters = {name for name, _ in reference_model.named_parameters()}
        assert not unexpected and not parameters & set(missing), (missing, unexpected)
        reference_model.zero_grad(set_to_none=True)
        reference = reference_loss(reference_model, trained, case["loss_weighting"])
        reference.backward()
        result["steps"].append({
            "weights": trainer.step_weights[step],
            "grads": grads.grads[step],
            "loss": losses.losses[step],
            "reference_grads": {
                name: p.grad.detach().clone() for name, p in reference_model.named_parameters() if p.grad is not None
            },
            "reference_loss": reference.item(),
            "num_samples": sum(n > 0 for n in trained["num_target_tokens"]),
            "num_tokens": sum(trained["num_target_tokens"]),
        })  # fmt: skip
    result["final"] = final
    if metrics is not None:  # the whole set once, at the final weights
        reference_model.load_state_dict(final, strict=False)
        result["eval"] = {
            "metrics": metrics,
            "reference": reference_eval(reference_model, dataset, case["loss_weighting"]),
        }
    result["parameters"] = sum(p.numel() for p in reference_model.parameters())
    if case.get("save"):
        folder = Path(output_dir, "model")
        if case.get("lora"):  # an adapter folder, on the base model the run started from
            from peft import PeftModel

            loaded = PeftModel.from_pretrained(_model(case, build_byte_tokenizer(), 0), folder)
        else:
            loaded = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        result["saved"] = {name: p.detach().clone() for name, p in loaded.named_parameters()}
        result["saved_files"] = sorted(path.name for path in folder.iterdir())
        result["card"] = (folder / "README.md").read_text(encoding="utf-8")
    return result


def _resume_run(case: dict, output_dir: str, resume_from: str | None) -> dict:
    overrides = dict(
        optim="adamw_torch", learning_rate=1e-2, lr_scheduler_type="linear", save_strategy="steps", save_steps=1
    )
    trainer, _, losses = _build(case, output_dir, **overrides)
    trainer.train(resume_from_checkpoint=resume_from)
    final = _full_weights(trainer.model)
    steps = _all_ranks(trainer.step_samples)
    run = {"steps": [[s for rank in steps for s in rank[i]] for i in range(len(trainer.step_samples))]}
    run.update(final=final, losses=losses.losses, global_step=trainer.state.global_step)
    if resume_from is None:
        trainer.save_model(os.path.join(output_dir, "model"))
        if dist.get_rank() == 0:
            loaded = AutoModelForCausalLM.from_pretrained(Path(output_dir, "model"), dtype=torch.float32)
            run["saved"] = {name: p.detach().clone() for name, p in loaded.named_parameters()}
            run["card"] = Path(output_dir, "model", "README.md").read_text(encoding="utf-8")
            run["checkpoint_files"] = sorted(path.name for path in Path(output_dir, "checkpoint-1").iterdir())
    return run


def run_resume_case(case: dict, output_dir: str) -> dict:
    """The uninterrupted run (checkpoints every step), then a run resumed from its first checkpoint."""
    full = _resume_run(case, os.path.join(output_dir, "full"), None)
    resumed = _resume_run(case, os.path.join(output_dir, "resumed"), os.path.join(output_dir, "full", "checkpoint-1"))
    return {"full": full, "resumed": resumed}


def _run(case: dict, output_dir: str) -> dict:
    environment = dict(os.environ)
    os.environ.update(case.get("env", {}))
    try:
        return (run_resume_case if case.get("resume") else run_case)(case, output_dir)
    finally:
        os.environ.clear()
        os.environ.update(environment)


if __name__ == "__main__":
    cases_path, output_path, output_dir = sys.argv[1:4]
    with open(cases_path) as handle:
        cases = json.load(handle)
    # The main process logs the library's INFO lines (the engine it trains with), as the recipe does.
    logging.basicConfig(level=logging.WARNING)
    if os.environ.get("RANK", "0") == "0":
        logging.getLogger("longalign_hf").setLevel(logging.INFO)

    def main():
        results = [_run(case, os.path.join(output_dir, str(index))) for index, case in enumerate(cases)]
        if dist.get_rank() == 0:
            torch.save(results, output_path)

    run_then_exit(main)
