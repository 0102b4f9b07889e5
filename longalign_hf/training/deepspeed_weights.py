"""The final model of a DeepSpeed ZeRO-3 run as one loadable Hugging Face folder, also without
`stage3_gather_16bit_weights_on_model_save` (accelerate's `zero3_save_16bit_model: false`).

With it, transformers' `save_model` gathers the weights in the model's own dtype (bf16 under mixed precision) into
the folder. Without it, transformers writes a DeepSpeed checkpoint there instead, which `from_pretrained` cannot load
(DeepSpeed's `zero_to_fp32.py` converts it offline); here the model's fp32 master weights are gathered, one parameter
at a time, and saved as a normal folder, by `save_model` and by `push_to_hub`. Checkpoints taken during training stay
DeepSpeed checkpoints, which is what resuming reads.
"""

from __future__ import annotations

import torch


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


def save_fp32_model(trainer, output_dir: str | None, internal_call: bool) -> bool:
    """`Trainer.save_model(output_dir, internal_call)` under ZeRO-3 without 16-bit gathering: save `trainer`'s model
    from its gathered fp32 weights (every rank calls it; the processes that save write) and push it as `save_model`
    does, then return True. Otherwise, and for a checkpoint (which Trainer saves with `_internal_call` into its folder,
    and resuming reads as DeepSpeed's own), do nothing and return False. `push_to_hub` saves the output folder with
    `_internal_call` and no `output_dir`: saved here, not pushed again."""
    from peft import PeftModel

    engine = trainer.deepspeed  # None before training or without DeepSpeed
    if engine is None or engine.zero_optimization_stage() != 3 or engine.zero_gather_16bit_weights_on_model_save():
        return False
    if engine.optimizer is None or (internal_call and output_dir is not None):
        return False  # no fp32 weights (ZeRO-3 inference, for evaluation only), or a checkpoint
    model = trainer.accelerator.unwrap_model(trainer.model)
    state_dict = zero3_fp32_state_dict(engine, trainable_only=isinstance(model, PeftModel))
    trainer._save(output_dir or trainer.args.output_dir, state_dict=state_dict)
    if not internal_call and trainer.args.push_to_hub:
        trainer.push_to_hub(commit_message="Model save", revision=trainer.args.hub_revision)
    return True
