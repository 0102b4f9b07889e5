"""Which distributed engine trains, and saying so: FSDP on CPU processes, the FSDP settings refused or resolved before
training, and the engine's name for the log and the model card.

accelerate 1.16 turns FSDP on only for process groups on accelerators (`MULTI_GPU`, `MULTI_XPU`, ...): on a machine
without a GPU, where several processes train over gloo (`MULTI_CPU`), it drops the FSDP plugin and trains with DDP,
without a word. `requested_engine` lets accelerate's own FSDP set-up run there too (torch's `fully_shard` works
over gloo), so the engine a user names is the engine that runs.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

logger = logging.getLogger(__name__)


def _env_flag(name: str, default: str = "false") -> bool:
    return os.environ.get(name, default).strip().lower() in ("1", "true", "yes")


def fsdp_requested(args) -> bool:
    """Whether the run asks for FSDP: `fsdp` in the training arguments, or an accelerate config with
    `distributed_type: FSDP` (the launcher's `ACCELERATE_USE_FSDP`)."""
    return bool(args.fsdp) or _env_flag("ACCELERATE_USE_FSDP")


def _fsdp_settings(args) -> tuple[int, bool]:
    """The FSDP version and whether FSDP's own activation checkpointing is on, as the trainer's plugin will be built:
    from the training arguments' `fsdp_config` (as transformers reads it, `fsdp_plugin_args`) when `fsdp` is given,
    else from the launcher's `FSDP_*` environment, with accelerate's defaults."""
    plugin_args = getattr(args, "fsdp_plugin_args", None)
    if plugin_args is not None:
        return int(plugin_args.get("fsdp_version", 2)), bool(plugin_args.get("activation_checkpointing", False))
    return int(os.environ.get("FSDP_VERSION", "1")), _env_flag("FSDP_ACTIVATION_CHECKPOINTING")


def check_fsdp(args, checkpointing_given: bool) -> None:
    """Refuse, before any data work, the FSDP settings LongAlign does not run, and settle which activation
    checkpointing applies when FSDP's own is on.

    `checkpointing_given`: whether the user set `activation_checkpointing` (or its alias) rather than taking its
    default. FSDP's `activation_checkpointing` and the trainer's cannot both run (transformers refuses it): when the
    trainer's was only defaulted on, FSDP's wins and the trainer's is turned off, which the log says; when both were
    asked for, the contradiction is refused.
    """
    if not fsdp_requested(args):
        return
    if _deepspeed_requested(args):
        raise ValueError(
            "both DeepSpeed (`deepspeed` or `distributed_type: DEEPSPEED`) and FSDP (`fsdp` or `distributed_type: "
            "FSDP`) are asked for; accelerate would run DeepSpeed alone. Keep one of them."
        )
    version, fsdp_checkpointing = _fsdp_settings(args)
    if version != 2:
        raise ValueError(
            f"FSDP version {version} is not supported: LongAlign's loss weighting is proven exact under "
            "FSDP2 (`fully_shard`) only. FSDP1 cannot be checked on CPU processes (accelerate refuses its "
            "`sync_module_states` there, and its wrapper rejects the CPU device without it), and transformers "
            "deprecates it for removal. Set `fsdp_version: 2` in the accelerate config (accelerate defaults to 1 when "
            "it is missing) or `fsdp_config={'version': 2}`."
        )
    if int(os.environ.get("WORLD_SIZE", "1")) < 2:
        raise ValueError(
            "FSDP is asked for (`fsdp` or an accelerate config with `distributed_type: FSDP`), but this is a single "
            "process: FSDP shards over several, and accelerate would train without it. Launch several processes "
            "(`accelerate launch --config_file recipes/accelerate/fsdp2.yaml --num_processes N ...`, N > 1), or drop the "
            "FSDP settings to train in one process."
        )
    if fsdp_checkpointing and args.activation_checkpointing:
        if checkpointing_given:
            raise ValueError(
                "FSDP's activation checkpointing (`fsdp_activation_checkpointing: true`) and the trainer's "
                "(`activation_checkpointing: true`) cannot both run: keep one. FSDP's is the cheaper under FSDP (the "
                "trainer's gathers each layer's parameters once more in the backward pass); set "
                "`activation_checkpointing: false` to use it."
            )
        logger.info(
            "Activation checkpointing: FSDP's (`fsdp_activation_checkpointing`); the trainer's, on by default, is off"
        )
        args.activation_checkpointing = args.gradient_checkpointing = False


def _deepspeed_requested(args) -> bool:
    return bool(args.deepspeed) or _env_flag("ACCELERATE_USE_DEEPSPEED")


@contextmanager
def requested_engine(args) -> Iterator[None]:
    """Around the trainer's `Accelerator` construction: the engine the run asks for is the one accelerate sets up, or
    the run stops.

    accelerate's `AcceleratorState` enables FSDP only when the process group it finds is on an accelerator; on gloo
    CPU processes (`MULTI_CPU`) it would keep DDP. For the time the state is built, such a group is presented as a
    device group, so that accelerate's own FSDP branch runs (the plugin, its mixed precision); the state then records
    FSDP over the same gloo group and the CPU device. Afterwards, FSDP or DeepSpeed asked for but not set up is
    refused with the engine accelerate chose instead.
    """
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType

    shared = PartialState._shared_state
    wanted = DistributedType.DEEPSPEED if _deepspeed_requested(args) else None
    if wanted is None and fsdp_requested(args):
        wanted = DistributedType.FSDP
    on_cpu = wanted == DistributedType.FSDP and shared.get("distributed_type") == DistributedType.MULTI_CPU
    if on_cpu:
        shared["distributed_type"] = DistributedType.MULTI_GPU
    try:
        yield
    finally:
        if on_cpu and shared.get("distributed_type") == DistributedType.MULTI_GPU:  # no state was built
            shared["distributed_type"] = DistributedType.MULTI_CPU
    state = AcceleratorState()
    if wanted is not None and state.distributed_type != wanted:
        raise ValueError(
            f"the run asks for {wanted.value} (the accelerate config or the training arguments), but accelerate set up "
            f"{state.distributed_type.value} over {state.num_processes} process(es), which would train without it. "
            "Launch it with `accelerate launch --config_file ...` on several processes, or drop the engine's settings."
        )
    if on_cpu:
        _unpin_offload(state.fsdp_plugin)


def _unpin_offload(plugin) -> None:
    """Parameter offload without pinned memory: pinning needs a GPU (torch raises without one), and on CPU processes
    the offloaded shards never travel to a device anyway."""
    from torch.distributed.fsdp import CPUOffloadPolicy

    if isinstance(plugin.cpu_offload, CPUOffloadPolicy) and plugin.cpu_offload.pin_memory:
        plugin.cpu_offload = CPUOffloadPolicy(pin_memory=False)


def _on_off(value: bool) -> str:
    return "on" if value else "off"


def _fsdp_description(plugin) -> str:
    from torch.distributed.fsdp import CPUOffloadPolicy

    shape = "full shard" if plugin.reshard_after_forward else "shard grad op"
    policy = plugin.mixed_precision_policy
    precision = "fp32"
    if policy is not None:
        dtypes = {name: getattr(policy, name) for name in ("param_dtype", "reduce_dtype")}
        precision = ", ".join(f"{name} {str(dtype).removeprefix('torch.')}" for name, dtype in dtypes.items() if dtype)
    offload = _on_off(isinstance(plugin.cpu_offload, CPUOffloadPolicy))
    if offload == "on" and not plugin.cpu_offload.pin_memory:
        offload += " (unpinned)"
    settings = [
        f"reshard after forward {_on_off(plugin.reshard_after_forward)}",
        f"parameter offload {offload}",
        f"checkpoint state dict {str(plugin.state_dict_type).rsplit('.', 1)[-1]}",
        f"FSDP activation checkpointing {_on_off(plugin.activation_checkpointing)}",
        f"cpu_ram_efficient_loading {_on_off(plugin.cpu_ram_efficient_loading)}",
        f"mixed precision {precision or 'fp32'}",
    ]
    return f"FSDP2 {shape} ({', '.join(settings)})"


def _deepspeed_description(config: dict) -> str:
    zero = config.get("zero_optimization", {}) or {}
    text = f"DeepSpeed ZeRO-{int(zero.get('stage', 0))}"
    offloads = [
        f"{what} offload to {device}"
        for what, key in (("parameter", "offload_param"), ("optimizer", "offload_optimizer"))
        if (device := str((zero.get(key) or {}).get("device", "none")).lower()) not in ("none", "")
    ]
    return text + (f" + {', '.join(offloads)}" if offloads else "")


def describe_engine(accelerator, sp_size: int = 1) -> str:
    """The engine that trains, in words, read from the accelerator's state: DDP, FSDP2 with its sharding, offload,
    checkpoint and precision settings, DeepSpeed ZeRO-N with its offloads, Ulysses sequence parallelism, or a single
    process; with the process count and the communication backend."""
    from accelerate.utils import DistributedType

    state = accelerator.state
    processes = accelerator.num_processes
    kind = state.distributed_type
    if kind == DistributedType.FSDP:
        engine = _fsdp_description(state.fsdp_plugin)
    elif kind == DistributedType.DEEPSPEED:
        engine = _deepspeed_description(state.deepspeed_plugin.deepspeed_config)
    elif processes > 1:
        engine = "DDP"
    else:
        return "single process"
    if sp_size > 1:
        engine += (
            f" with Ulysses sequence parallelism (sp_size {sp_size}, {processes // sp_size} data-parallel replica(s))"
        )
    return f"{engine} over {processes} processes ({state.backend})"


@contextmanager
def full_model_on_save(trainer, output_dir: str | None, internal_call: bool) -> Iterator[None]:
    """Around `Trainer.save_model`: under FSDP with sharded checkpoints, have it gather the full state dict on the main
    process and write one loadable Hugging Face folder.

    transformers writes no weights at all from `save_model` under `SHARDED_STATE_DICT` (its checkpoints hold FSDP's
    sharded files instead). For the final `save_model` and `push_to_hub` the plugin says `FULL_STATE_DICT` while it
    saves; checkpoints (`checkpoint-N`, saved with `internal_call`) keep the sharded files they resume from.
    """
    from torch.distributed.fsdp import StateDictType

    plugin = trainer.accelerator.state.fsdp_plugin if getattr(trainer, "is_fsdp_enabled", False) else None
    checkpoint = internal_call and output_dir not in (None, trainer.args.output_dir)
    if plugin is None or plugin.state_dict_type == StateDictType.FULL_STATE_DICT or checkpoint:
        yield
        return
    sharded, plugin.state_dict_type = plugin.state_dict_type, StateDictType.FULL_STATE_DICT
    try:
        yield
    finally:
        plugin.state_dict_type = sharded
