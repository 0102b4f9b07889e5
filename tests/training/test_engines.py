"""What the engine set-up refuses before training, how FSDP's and the trainer's activation checkpointing are settled,
and how the log and the card name each engine: without launching (tests/training/test_fsdp.py runs FSDP2)."""

import os
from types import SimpleNamespace

import pytest
from accelerate.utils import DeepSpeedPlugin, DistributedType, FullyShardedDataParallelPlugin

from longalign_hf import LongAlignConfig
from longalign_hf.training.engines import check_fsdp, describe_engine, full_model_on_save

FSDP_ENV = ("ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED", "FSDP_VERSION", "FSDP_ACTIVATION_CHECKPOINTING")


@pytest.fixture
def launcher_env(monkeypatch):
    """The environment `accelerate launch` gives a worker under an FSDP config: set what a test needs."""
    for name in FSDP_ENV:
        monkeypatch.delenv(name, raising=False)

    def set_env(**variables):
        for name, value in variables.items():
            monkeypatch.setenv(name, str(value))

    return set_env


def _config(tmp_path, **options):
    return LongAlignConfig(output_dir=str(tmp_path), max_length=64, report_to="none", **options)


@pytest.mark.parametrize(
    ("env", "options", "match"),
    [
        # accelerate's default when an FSDP config has no `fsdp_version` is FSDP1.
        ({"ACCELERATE_USE_FSDP": "true"}, {}, "FSDP version 1 is not supported.*`fsdp_version: 2`"),
        ({}, {"fsdp": True, "fsdp_config": {"version": 1}}, "FSDP version 1 is not supported"),
        ({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2"}, {}, "this is a single process"),
        ({}, {"fsdp": True}, "this is a single process.*--num_processes N"),
        ({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2"}, {"deepspeed": {"zero_optimization": {"stage": 3}}},
         "both DeepSpeed .* and FSDP .* are asked for"),
    ],
)  # fmt: skip
def test_fsdp_settings_that_would_not_run_as_named_are_refused_before_training(
    tmp_path, launcher_env, env, options, match
):
    launcher_env(**env)
    with pytest.raises(ValueError, match=match):
        _config(tmp_path, **options)


def _args(**options):
    """What `check_fsdp` reads of the training arguments, as `TrainingArguments.__post_init__` leaves it."""
    values = {"fsdp": False, "fsdp_plugin_args": None, "deepspeed": None, "activation_checkpointing": True}
    values.update(options)
    return SimpleNamespace(**values, gradient_checkpointing=values["activation_checkpointing"])


@pytest.mark.parametrize("route", ["launcher", "training arguments"])
def test_fsdp_activation_checkpointing_wins_over_the_trainer_default_or_the_contradiction_is_refused(
    launcher_env, monkeypatch, route
):
    monkeypatch.setenv("WORLD_SIZE", "2")
    if route == "launcher":
        launcher_env(ACCELERATE_USE_FSDP="true", FSDP_VERSION="2", FSDP_ACTIVATION_CHECKPOINTING="true")
        options = {}
    else:
        options = {"fsdp": True, "fsdp_plugin_args": {"fsdp_version": 2, "activation_checkpointing": True}}
    defaulted = _args(**options)
    check_fsdp(defaulted, checkpointing_given=False)
    assert defaulted.activation_checkpointing is False and defaulted.gradient_checkpointing is False
    with pytest.raises(ValueError, match="cannot both run: keep one.*`activation_checkpointing: false`"):
        check_fsdp(_args(**options), checkpointing_given=True)
    # Only one asked for: nothing to settle.
    for asked in (_args(**options, activation_checkpointing=False), _args(fsdp=True, fsdp_plugin_args={})):
        before = asked.activation_checkpointing
        check_fsdp(asked, checkpointing_given=True)
        assert asked.activation_checkpointing is before


def _accelerator(kind, processes=2, backend="gloo", **state):
    return SimpleNamespace(
        state=SimpleNamespace(distributed_type=kind, backend=backend, **state), num_processes=processes
    )


def _fsdp_plugin(**options):
    environment = dict(os.environ)
    try:
        return FullyShardedDataParallelPlugin(fsdp_version=2, **options)
    finally:  # the plugin exports some of its settings for transformers
        os.environ.clear()
        os.environ.update(environment)


def test_each_engine_is_named_with_its_sharding_offload_and_process_count():
    assert describe_engine(_accelerator(DistributedType.NO, processes=1, backend=None)) == "single process"
    assert describe_engine(_accelerator(DistributedType.MULTI_CPU)) == "DDP over 2 processes (gloo)"
    assert describe_engine(_accelerator(DistributedType.MULTI_GPU, 8, "nccl")) == "DDP over 8 processes (nccl)"
    shipped = _fsdp_plugin(
        reshard_after_forward=True, state_dict_type="SHARDED_STATE_DICT", cpu_ram_efficient_loading=True
    )
    assert describe_engine(_accelerator(DistributedType.FSDP, 8, "nccl", fsdp_plugin=shipped)) == (
        "FSDP2 full shard (reshard after forward on, parameter offload off, checkpoint state dict SHARDED_STATE_DICT, "
        "FSDP activation checkpointing off, cpu_ram_efficient_loading on, mixed precision fp32) over 8 processes "
        "(nccl)"
    )
    offloaded = _fsdp_plugin(
        reshard_after_forward=False, cpu_offload=True, state_dict_type="FULL_STATE_DICT", activation_checkpointing=True
    )
    offloaded.set_mixed_precision("bf16")
    assert describe_engine(_accelerator(DistributedType.FSDP, fsdp_plugin=offloaded)) == (
        "FSDP2 shard grad op (reshard after forward off, parameter offload on, checkpoint state dict FULL_STATE_DICT, "
        "FSDP activation checkpointing on, cpu_ram_efficient_loading off, mixed precision param_dtype bfloat16, "
        "reduce_dtype bfloat16) over 2 processes (gloo)"
    )


@pytest.mark.parametrize(
    ("settings", "sp_size", "name"),
    [
        # recipes/accelerate/zero3_offload.yaml, the paper's setup
        ({"zero_stage": 3, "offload_param_device": "cpu", "offload_optimizer_device": "cpu"}, 1,
         "DeepSpeed ZeRO-3 + parameter offload to cpu, optimizer offload to cpu over 8 processes (nccl)"),
        ({"zero_stage": 3}, 1, "DeepSpeed ZeRO-3 over 8 processes (nccl)"),
        ({"zero_stage": 2, "offload_optimizer_device": "cpu"}, 1,
         "DeepSpeed ZeRO-2 + optimizer offload to cpu over 8 processes (nccl)"),
        ({"zero_stage": 3}, 4,
         "DeepSpeed ZeRO-3 with Ulysses sequence parallelism (sp_size 4, 2 data-parallel replica(s)) over 8 processes "
         "(nccl)"),
    ],
)  # fmt: skip
def test_deepspeed_is_named_with_its_stage_and_offloads(settings, sp_size, name):
    plugin = DeepSpeedPlugin(**settings)  # accelerate's config from an accelerate YAML's `deepspeed_config`
    accelerator = _accelerator(DistributedType.DEEPSPEED, 8, "nccl", deepspeed_plugin=plugin)
    assert describe_engine(accelerator, sp_size) == name


@pytest.mark.parametrize(
    ("output_dir", "internal_call", "gathered"),
    [
        (None, False, True),  # the final save_model
        (None, True, True),  # push_to_hub
        ("elsewhere", False, True),  # save_model(folder)
        ("out/checkpoint-2", True, False),  # a checkpoint: FSDP's shards, which resume from
    ],
)
def test_saves_other_than_checkpoints_gather_the_full_model_under_sharded_fsdp(output_dir, internal_call, gathered):
    from torch.distributed.fsdp import StateDictType

    plugin = _fsdp_plugin(state_dict_type="SHARDED_STATE_DICT")
    trainer = SimpleNamespace(
        is_fsdp_enabled=True,
        args=SimpleNamespace(output_dir="out"),
        accelerator=_accelerator(None, fsdp_plugin=plugin),
    )
    with full_model_on_save(trainer, output_dir, internal_call):
        during = plugin.state_dict_type
    assert during == (StateDictType.FULL_STATE_DICT if gathered else StateDictType.SHARDED_STATE_DICT)
    assert plugin.state_dict_type == StateDictType.SHARDED_STATE_DICT  # checkpoints stay sharded afterwards
