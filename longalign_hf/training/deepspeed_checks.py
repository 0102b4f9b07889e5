"""What a DeepSpeed config does to the gradient and to the optimizer that LongAlign's exact loss and the user's options
depend on, checked before training, with or without Ulysses sequence parallelism (read in DeepSpeed 0.19.8's
`stage_1_and_2.py`, `stage3.py` and `engine.py`, and accelerate 1.16's `Accelerator._prepare_deepspeed`).

- The gradient: DeepSpeed sums each gradient over the ranks and divides the sum by a number that depends on the ZeRO
  stage and on sequence parallelism (`gradient_divisor`); each rank's loss is scaled by that number so that the applied
  gradient is the objective's. `check_gradient_reduction` refuses the settings under which that number is not what
  DeepSpeed divides every gradient by, or is not followed here.
- The optimizer: under ZeRO optimizer offload accelerate replaces the trainer's optimizer with DeepSpeed's CPU Adam
  (`map_pytorch_optim_to_deepspeed`), whatever `optim` says, unless the config sets `zero_force_ds_cpu_optimizer:
  false`; an `optimizer` or `scheduler` in the DeepSpeed config replaces the trainer's `optim` or `lr_scheduler_type`;
  an optimizer passed to the trainer is dropped by transformers' DeepSpeed set-up. `check_deepspeed_optimizer` accepts
  what computes the update the user asked for and refuses the rest.
"""

from __future__ import annotations

# The trainer's optimizers that are `torch.optim.AdamW`: under optimizer offload accelerate hands their parameter
# groups (learning rate, betas, eps, weight decay, the groups without decay) to DeepSpeed's CPU Adam in AdamW mode,
# which computes the same update (tests/training/test_deepspeed.py checks it against torch's AdamW step by step).
ADAMW_OPTIMIZERS = ("adamw_torch", "adamw_torch_fused")


def _zero_config(deepspeed_config: dict):
    """DeepSpeed's own parsing of the `zero_optimization` keys read here (it reads "false" as False); "auto" is
    transformers' to fill, and none of them is."""
    from deepspeed.runtime.zero.config import DeepSpeedZeroConfig

    given = deepspeed_config.get("zero_optimization") or {}
    keys = ("stage", "reduce_scatter", "zero_quantized_gradients", "zero_hpz_partition_size", "offload_optimizer")
    return DeepSpeedZeroConfig(**{key: given[key] for key in keys if key in given and given[key] != "auto"})


def check_gradient_reduction(deepspeed_config: dict, sp_size: int = 1) -> None:
    """Refuse the DeepSpeed settings under which `gradient_divisor` is not what DeepSpeed divides every gradient by.

    DeepSpeed 0.19.8 sums each gradient over all ranks (under Ulysses SP the SP ranks hold different tokens of the same
    rows) and divides the sum by (tests/ds_check.py and tests/sp_check.py check each path against a per-sample
    reference):
    - ZeRO 0 (the engine's all-reduce), ZeRO-1 and ZeRO-2 (reduce-scatter or all-reduce, contiguous gradients or not,
      any `reduce_bucket_size`, `overlap_comm`, `round_robin_gradients`, optimizer offload): the data-parallel
      replicas, world / sp_size;
    - ZeRO-3 with its reduce-scatter (the default): every rank (`reduce_scatter_coalesced`);
    - ZeRO-3 with `reduce_scatter: false`: world / sp_size for a bucket that goes through the contiguous all-reduce,
      but world for the others (`contiguous_gradients: false`, or one parameter larger than `reduce_bucket_size`).
      Without SP both are every rank; under SP parameters get different divisors and no loss scale is exact: refused
      there, as is every setting below, with or without SP, whose path is not followed here.
    `communication_data_type` sets the precision of the reduction (the user's choice, like bf16; a bf16 reduction of
    fp32 gradients is within bf16's rounding of the reference), not its divisor.
    """
    zero = _zero_config(deepspeed_config)
    given = deepspeed_config.get("zero_optimization") or {}
    refused = []
    if sp_size > 1 and zero.stage == 3 and not zero.reduce_scatter:
        refused.append(
            "ZeRO-3 with `reduce_scatter: false` divides a gradient by the data-parallel size when its bucket goes "
            "through the contiguous all-reduce, and by the number of processes otherwise (`contiguous_gradients: "
            "false`, or a parameter larger than `reduce_bucket_size`, as an 8B model's embeddings and MLP matrices "
            "are under transformers' 'auto' of hidden_size^2), so no one loss scale is exact: remove "
            "`reduce_scatter: false` (the default reduce-scatter divides every gradient by the number of processes)"
        )
    if float(deepspeed_config.get("gradient_predivide_factor", 1.0)) != 1.0:
        refused.append(
            "`gradient_predivide_factor` changes the divisor on some reduction paths and not others (set to the "
            "number of processes, ZeRO-3's all-reduce divides by its square, and under SP ZeRO-1/2's all-reduce "
            "divides by it instead of the data-parallel size): set it to 1.0"
        )
    if deepspeed_config.get("prescale_gradients", False):
        refused.append(
            "`prescale_gradients: true` (DeepSpeed refuses it with ZeRO-1/2/3's reduce-scatter; its other paths are "
            "not checked here): remove it"
        )
    if deepspeed_config.get("gradient_allreduce_op", "mean") != "mean":
        refused.append("`gradient_allreduce_op` other than 'mean' (the loss is scaled for a mean): remove it")
    if zero.zero_quantized_gradients:
        refused.append("`zero_quantized_gradients` (quantized, so not exact): remove it")
    if zero.zero_hpz_partition_size > 1:
        refused.append("`zero_hpz_partition_size` above 1 (hpZ's reduction is not followed here): set it to 1")
    if given.get("zenflow"):
        refused.append("ZenFlow (`zenflow`), which reduces gradients on its own path: remove it")
    if (deepspeed_config.get("compile") or {}).get("deepcompile"):
        refused.append("DeepCompile, which reduces gradients inside its compiled graph: remove `compile.deepcompile`")
    if int((deepspeed_config.get("tensor_parallel") or {}).get("autotp_size", 1)) > 1:
        refused.append(
            "DeepSpeed AutoTP (`tensor_parallel.autotp_size` above 1), which divides by the data-parallel size, "
            "processes / autotp_size, and whose tensor parallelism is not proven exact here (as `tp_size` is "
            "refused): remove it"
        )
    offload = zero.offload_optimizer
    if offload is not None and offload.device != "none" and (offload.ratio < 1.0 or offload.super_offload):
        refused.append(
            "partial optimizer offload (`offload_optimizer.ratio` below 1) or SuperOffload (`super_offload`), whose "
            "gradient and optimizer paths are not followed here: remove it"
        )
    if refused:
        under = "under sequence parallelism " if sp_size > 1 else ""
        raise ValueError(
            f"{under}the loss is scaled for what DeepSpeed divides the summed gradient by, which these DeepSpeed "
            "settings make wrong: " + "; ".join(refused) + "."
        )


def gradient_divisor(engine, num_processes: int, sp_size: int = 1) -> int:
    """What DeepSpeed divides the gradient summed over all ranks by, for the settings `check_gradient_reduction`
    accepts: every rank under ZeRO-3 (its reduce-scatter; without SP, also its all-reduce), the data-parallel replicas
    (world / sp_size) under ZeRO 0-2. Each rank's loss is scaled by it so that the applied gradient is the objective's.
    Without SP both are the number of processes, as for DDP and FSDP.
    """
    if engine.zero_optimization_stage() == 3:
        if sp_size > 1 and not engine.zero_reduce_scatter():
            raise RuntimeError("ZeRO-3 without reduce-scatter under SP should have been refused before training")
        return num_processes
    return num_processes // sp_size


def _offloads_optimizer(deepspeed_config: dict) -> bool:
    offload = _zero_config(deepspeed_config).offload_optimizer
    return offload is not None and offload.device != "none"


def check_deepspeed_optimizer(
    deepspeed_config: dict, args, optimizer_given: bool = False, optimizer_cls_and_kwargs=None
) -> None:
    """Refuse, before training, a DeepSpeed run whose optimizer or learning-rate schedule would not be the one the
    trainer's options name.

    `optimizer_given`: an optimizer or scheduler was passed to the trainer (`optimizers=`), which transformers'
    DeepSpeed set-up replaces by new ones built from the options. Under ZeRO optimizer offload (and
    `zero_force_ds_cpu_optimizer` left on) accelerate swaps the trainer's optimizer for DeepSpeed's CPU Adam: honoured
    for torch's AdamW (`optim` adamw_torch / adamw_torch_fused, or `optimizer_cls_and_kwargs` naming
    `torch.optim.AdamW` without amsgrad), whose update CPU Adam computes with the same hyper-parameters and parameter
    groups; any other optimizer would silently train as Adam, so it is refused.
    """
    import torch

    # `OptimizerNames` / `SchedulerType` members, or their strings
    optim = getattr(args.optim, "value", args.optim)
    schedule = getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type)
    refused = []
    if "optimizer" in deepspeed_config:
        refused.append(
            f"the DeepSpeed config's `optimizer` ({(deepspeed_config['optimizer'] or {}).get('type')}) replaces the "
            f"trainer's `optim={optim}` and applies its weight decay to every parameter (the trainer's leaves "
            "biases and norms out): remove `optimizer` from the DeepSpeed config and choose with `--optim`, "
            "`--adam_beta1`, `--adam_beta2`, `--adam_epsilon`, `--weight_decay`"
        )
    if "scheduler" in deepspeed_config:
        refused.append(
            f"the DeepSpeed config's `scheduler` ({(deepspeed_config['scheduler'] or {}).get('type')}) replaces the "
            f"trainer's `lr_scheduler_type={schedule}`: remove `scheduler` from the DeepSpeed config "
            "and choose with `--lr_scheduler_type` and `--warmup_steps`"
        )
    if optimizer_given:
        refused.append(
            "an optimizer or scheduler passed to the trainer (`optimizers=`) is replaced under DeepSpeed by ones "
            "built from the options: pass `optimizer_cls_and_kwargs`, or choose with `--optim` and "
            "`--lr_scheduler_type`"
        )
    if _offloads_optimizer(deepspeed_config) and deepspeed_config.get("zero_force_ds_cpu_optimizer", True):
        if optimizer_cls_and_kwargs is not None:
            cls, kwargs = optimizer_cls_and_kwargs
            adamw = cls is torch.optim.AdamW and not (kwargs or {}).get("amsgrad", False)
            name = getattr(cls, "__name__", str(cls))
        else:
            adamw, name = optim in ADAMW_OPTIMIZERS, f"optim={optim}"
        if not adamw:
            refused.append(
                f"under ZeRO optimizer offload accelerate replaces the optimizer ({name}) with DeepSpeed's CPU Adam, "
                "which computes another update: use `--optim adamw_torch` (run as CPU Adam in AdamW mode, with the "
                "same hyper-parameters), or keep the optimizer and set `zero_force_ds_cpu_optimizer: false` in the "
                "DeepSpeed config (it then steps the offloaded fp32 weights on the CPU itself, slower), or turn "
                "optimizer offload off"
            )
    if refused:
        raise ValueError(
            "DeepSpeed would not train with the optimizer and schedule you chose: " + "; ".join(refused) + "."
        )


def check_deepspeed(args, optimizers=(None, None), optimizer_cls_and_kwargs=None) -> None:
    """Before any data work: the gradient reduction (as without sequence parallelism; SP adds its own refusals once
    the parallelism is known) and the optimizer of a run under DeepSpeed (`args.deepspeed_plugin`, from `deepspeed=`
    or the accelerate launcher); nothing without DeepSpeed. `optimizers` and `optimizer_cls_and_kwargs` are the
    trainer's arguments of those names."""
    plugin = getattr(args, "deepspeed_plugin", None)
    if plugin is None:
        return
    check_gradient_reduction(plugin.deepspeed_config)
    given = any(item is not None for item in (optimizers or ()))
    check_deepspeed_optimizer(plugin.deepspeed_config, args, given, optimizer_cls_and_kwargs)
