"""The final model of a DeepSpeed ZeRO-3 run as one loadable Hugging Face folder, also without
`stage3_gather_16bit_weights_on_model_save` (accelerate's `zero3_save_16bit_model: false`).

With it, transformers' `save_model` gathers the weights in the model's own dtype (bf16 under mixed precision) into
the folder. Without it, transformers writes a DeepSpeed checkpoint there instead, which `from_pretrained` cannot load
(DeepSpeed's `zero_to_fp32.py` converts it offline); here the final model's fp32 master weights are gathered, one
parameter at a time, and saved as a normal folder. Checkpoints taken during training stay DeepSpeed checkpoints, which
is what resuming reads.
"""

from __future__ import annotations

import torch


def gathers_fp32_on_save(engine) -> bool:
    """Whether `save_fp32_model` saves the model of this DeepSpeed engine (None before training or without
    DeepSpeed): ZeRO-3 without 16-bit gathering on save."""
    return (
        engine is not None
        and engine.zero_optimization_stage() == 3
        and not engine.zero_gather_16bit_weights_on_model_save()
    )


def zero3_fp32_state_dict(engine, trainable_only: bool) -> dict[str, torch.Tensor] | None:
    """The full state dict of a ZeRO-3 engine's model with every trained parameter from its fp32 master weights (the
    optimizer's partitions, offloaded or not); frozen parameters (left out when `trainable_only`) and buffers in the
    model's dtype. A collective: every rank calls it; rank 0 gets the dict on the CPU, the others `None`."""
    from deepspeed.utils import safe_get_full_fp32_param

    # The layout (names, shared weights, persistent buffers) as DeepSpeed consolidates it, layer by layer.
    state_dict = engine._zero3_consolidated_16bit_state_dict(exclude_frozen_parameters=trainable_only)
    gathered: dict[int, torch.Tensor | None] = {}
    for name, param in engine.module.named_parameters(remove_duplicate=False):
        if not param.requires_grad:
            continue
        if id(param) not in gathered:
            full = safe_get_full_fp32_param(param)  # all-gathers the fp32 partitions
            gathered[id(param)] = full.detach().cpu() if state_dict is not None else None
        if state_dict is not None:
            state_dict[name] = gathered[id(param)]
    return state_dict


def save_fp32_model(trainer, output_dir: str) -> None:
    """Save `trainer`'s final model from its gathered fp32 weights into `output_dir` (every rank calls it; the
    processes that save write), and push it as `Trainer.save_model` does when `push_to_hub` is set."""
    from peft import PeftModel

    model = trainer.accelerator.unwrap_model(trainer.model)
    state_dict = zero3_fp32_state_dict(trainer.model_wrapped, trainable_only=isinstance(model, PeftModel))
    trainer._save(output_dir, state_dict=state_dict)
    if trainer.args.push_to_hub:
        trainer.push_to_hub(commit_message="Model save", revision=trainer.args.hub_revision)
