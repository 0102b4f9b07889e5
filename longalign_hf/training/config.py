"""`LongAlignConfig`: TRL's `SFTConfig` plus the LongAlign batching and loss-weighting switches."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import torch
from trl import SFTConfig

from longalign_hf.data.chat import BAD_ROW_POLICIES, OVERFLOW_POLICIES
from longalign_hf.training.distributed import start_deepspeed_on_cpu
from longalign_hf.training.engines import check_fsdp, fsdp_requested
from longalign_hf.training.packing import PACKING_STRATEGIES

logger = logging.getLogger(__name__)

BATCHING_MODES = ("naive", "sort", "pack")
LOSS_WEIGHTINGS = ("sequence", "token")
PACK_SCHEDULES = ("balanced", "random")


def _with_configured_state(accelerator_config):
    """`accelerator_config` (None, a dict, a JSON path or an `AcceleratorConfig`) told to reuse the started state."""
    if accelerator_config is None:
        return {"use_configured_state": True}
    if isinstance(accelerator_config, dict):
        return {**accelerator_config, "use_configured_state": True}
    if isinstance(accelerator_config, str):
        from transformers.trainer_pt_utils import AcceleratorConfig

        accelerator_config = AcceleratorConfig.from_json_file(accelerator_config)
    accelerator_config.use_configured_state = True
    return accelerator_config


@dataclass
class LongAlignConfig(SFTConfig):
    r"""
    Configuration class for [`LongAlignSFTTrainer`]: every [`trl.SFTConfig`] option plus the LongAlign ones below.

    TRL's own `packing` and `padding_free` must stay off: `batching="pack"` replaces them with LongAlign packing, whose
    collator keeps the per-sample bookkeeping that exact loss weighting needs.

    Inherited options are honoured or refused, never ignored. Honoured as in TRL: `chat_template_path`, `eos_token`
    and `pad_token` (applied before tokenizing), `eval_packing` (default: pack evaluation when `batching="pack"`),
    `router_aux_loss_coef` (the MoE load-balancing loss is added as TRL weighs it), `dataset_num_proc`,
    `activation_offloading`, `max_length`. Refused with the reason: `loss_type` other than `"nll"`,
    `label_smoothing_factor`, `average_tokens_across_devices=False`, `truncation_mode="keep_end"`, a
    `packing_strategy` (use `pack_planner`), `completion_only_loss=False`, `dataset_kwargs` other than
    `skip_prepare_dataset`, and a `train_sampling_strategy` other than `"random"` with sorted or packed batching.
    `messages` data always trains on the assistant tokens only (whatever `assistant_only_loss` says); to choose other
    targets pass tokenized `input_ids` with `labels`. `shuffle_dataset` has no effect (batches are drawn in random
    order anyway), which a warning says.

    Defaults that differ from `SFTConfig`: checkpointing is set through `activation_checkpointing` (on, as in TRL);
    on a machine without a GPU `bf16` defaults to off (TRL turns it on, which transformers refuses on a CPU) and
    `dataloader_pin_memory` to off; several processes without a GPU set `use_cpu=True`, without which transformers
    starts no process group and every process would train alone on all the data (an FSDP config then trains with FSDP
    over that gloo group, not with DDP: `longalign_hf.training.engines`).

    FSDP is FSDP2 only, on several processes, without DeepSpeed; anything else is refused here, before any data work.
    FSDP's own activation checkpointing (`fsdp_activation_checkpointing`) turns the trainer's default off; asked for
    together with `activation_checkpointing=True`, it is refused.

    Parameters:
        batching (`str`, *optional*, defaults to `"pack"`):
            How samples become batches. `"naive"`: random batches of `per_device_train_batch_size` samples, padded.
            `"sort"`: sorted batching (LongAlign 3.3): samples sorted by length, cut into groups of one global batch,
            group order shuffled; every device in a step gets samples of similar length. `"pack"`: samples packed
            into rows of at most `max_length` tokens with attention kept inside each sample;
            `per_device_train_batch_size` then counts packs. The paper's recipe packs; it recommends sorting for
            Llama-2.
        loss_weighting (`str`, *optional*, defaults to `"sequence"`):
            `"sequence"`: every sample counts equally in the global batch, the LongAlign loss weighting
            (`(1/M) * sum_i L_i / N_i` over the M samples of every device and accumulation step). `"token"`: every
            target token counts equally (`sum_i L_i / sum_i N_i`, TRL's default).
        pack_planner (`str`, *optional*, defaults to `"bfd"`):
            How samples are grouped into packs: `"bfd"` (best-fit decreasing, fewest packs) or `"next_fit"` (the
            reference code: in data order, a new pack when the next sample does not fit).
        pack_schedule (`str`, *optional*, defaults to `"balanced"`):
            Order of the packs. `"balanced"`: packs of similar compute cost share a step (so no device waits for one
            holding a long sample), steps shuffled. `"random"`: packs in random order.
        attention_cost_constant (`float`, *optional*):
            The constant C of the per-sample cost `L + L**2 / C` that the balanced schedule uses. `None` derives it
            from the model: `6 * hidden_size`, the ratio of a layer's matrix FLOPs per token (`24 h^2`) to its
            attention FLOPs per token pair (`4 h`); see [`longalign_hf.training.schedule.sample_cost`].
        overflow (`str`, *optional*, defaults to `"truncate"`):
            Samples longer than `max_length`: `"truncate"` cuts them from the right (the paper), `"drop"` drops them.
            Either way they are counted in the log.
        bad_rows (`str`, *optional*, defaults to `"error"`):
            Rows without a usable conversation: `"error"` stops with the row and the reason, `"skip"` drops and counts
            them.
    """

    # TRL turns checkpointing on through the deprecated `gradient_checkpointing` name; use the current one.
    gradient_checkpointing: bool | None = field(
        default=None, metadata={"help": "Deprecated alias of `activation_checkpointing`."}
    )
    activation_checkpointing: bool | None = field(
        default=None,
        metadata={
            "help": "Recompute activations in the backward pass to save memory. Unset: on (as in TRL), or the value "
            "of the deprecated `gradient_checkpointing` when that is given; off when FSDP's own "
            "(`fsdp_activation_checkpointing`) is on."
        },
    )
    batching: str = field(
        default="pack",
        metadata={
            "help": "How samples become batches: naive, sort or pack (LongAlign's default).",
            "choices": BATCHING_MODES,
        },
    )
    loss_weighting: str = field(
        default="sequence",
        metadata={
            "help": "sequence: every sample counts equally in the global batch (LongAlign); token: every target token "
            "counts equally (TRL's default).",
            "choices": LOSS_WEIGHTINGS,
        },
    )
    pack_planner: str = field(
        default="bfd",
        metadata={
            "help": "bfd (best-fit decreasing) or next_fit (the reference code's greedy packing).",
            "choices": PACKING_STRATEGIES,
        },
    )
    pack_schedule: str = field(
        default="balanced",
        metadata={
            "help": "balanced: packs of similar compute cost share a step; random: shuffled.",
            "choices": PACK_SCHEDULES,
        },
    )
    attention_cost_constant: float | None = field(
        default=None,
        metadata={"help": "C in the per-sample cost L + L^2/C of the balanced schedule; None: 6 * hidden_size."},
    )
    overflow: str = field(
        default="truncate",
        metadata={
            "help": "Samples over max_length: truncate (from the right, as the paper) or drop.",
            "choices": OVERFLOW_POLICIES,
        },
    )
    bad_rows: str = field(
        default="error",
        metadata={
            "help": "Rows without a usable conversation: error (stop) or skip (drop and count).",
            "choices": BAD_ROW_POLICIES,
        },
    )

    def __post_init__(self):
        checkpointing_given = self.activation_checkpointing is not None or self.gradient_checkpointing is not None
        if self.activation_checkpointing is None:
            self.activation_checkpointing = (
                True if self.gradient_checkpointing is None else self.gradient_checkpointing
            )
        elif self.gradient_checkpointing is not None and self.gradient_checkpointing != self.activation_checkpointing:
            raise ValueError(
                f"`gradient_checkpointing={self.gradient_checkpointing}` contradicts `activation_checkpointing="
                f"{self.activation_checkpointing}`; set only `activation_checkpointing` (the other is its deprecated "
                "alias)."
            )
        # DeepSpeed starts its own process group (gloo under `DS_ACCELERATOR=cpu`); `use_cpu` would bypass its engine.
        uses_deepspeed = bool(self.deepspeed) or os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
        several_processes = int(os.environ.get("WORLD_SIZE", "1")) > 1
        if several_processes and not torch.cuda.is_available() and uses_deepspeed:
            start_deepspeed_on_cpu()
            self.accelerator_config = _with_configured_state(self.accelerator_config)
        if not self.use_cpu and several_processes and not torch.cuda.is_available() and not uses_deepspeed:
            # Without it, transformers starts no process group on a CPU-only machine: every process would train
            # alone on all the data. FSDP then runs over the same gloo group (`engines.requested_engine`).
            engine = "FSDP" if fsdp_requested(self) else "DDP"
            logger.warning(
                "Several processes and no GPU: setting use_cpu=True so they train together (%s over gloo)", engine
            )
            self.use_cpu = True
        if self.bf16 is None and not self.fp16 and (self.use_cpu or not torch.cuda.is_available()):
            # TRL turns bf16 on by default, which transformers refuses on a CPU; the user can still ask for it.
            self.bf16 = False
        if self.use_cpu or not torch.cuda.is_available():
            self.dataloader_pin_memory = False  # nothing to pin memory for
        super().__post_init__()
        checks = {
            "batching": BATCHING_MODES,
            "loss_weighting": LOSS_WEIGHTINGS,
            "pack_planner": PACKING_STRATEGIES,
            "pack_schedule": PACK_SCHEDULES,
            "overflow": OVERFLOW_POLICIES,
            "bad_rows": BAD_ROW_POLICIES,
        }
        for name, allowed in checks.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"`{name}` must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if self.packing or self.padding_free:
            raise ValueError(
                "TRL's `packing` / `padding_free` cannot be combined with LongAlign's collator: set `batching='pack'` "
                "instead and leave `packing` and `padding_free` off."
            )
        if self.batching == "pack" and self.max_length is None:
            raise ValueError(
                "`batching='pack'` needs `max_length` (the size of a pack); set it, e.g. `max_length=65536`."
            )
        if self.attention_cost_constant is not None and self.attention_cost_constant <= 0:
            raise ValueError(f"`attention_cost_constant` must be positive, got {self.attention_cost_constant}")
        self._refuse_ignored_options()
        check_fsdp(self, checkpointing_given)

    def _refuse_ignored_options(self) -> None:
        """Inherited options that LongAlign's data path or loss would otherwise ignore: each is refused with the why."""
        weighted = "LongAlign's loss is the per-sample weighted NLL (`loss_weighting`)"
        refusals = {
            "loss_type": (self.loss_type != "nll", f"{weighted}; `loss_type={self.loss_type!r}` is not supported"),
            "label_smoothing_factor": (
                self.label_smoothing_factor > 0,
                f"{weighted}; label smoothing needs the full logits, which the fused LM head never builds",
            ),
            "average_tokens_across_devices": (
                not self.average_tokens_across_devices,
                "the LongAlign loss always counts samples and tokens over every device (that is what makes it exact); "
                "a per-device mean is not offered",
            ),
            "truncation_mode": (
                self.truncation_mode != "keep_start",
                "long samples are cut from the right as the paper does (`overflow='truncate'`) or dropped "
                "(`overflow='drop'`); `truncation_mode='keep_end'` is not supported",
            ),
            "packing_strategy": (
                self.packing_strategy != "bfd",
                "TRL's packing is replaced by `batching='pack'`; choose the planner with `pack_planner` (bfd, next_fit)",
            ),
            "completion_only_loss": (
                self.completion_only_loss is False,
                "`messages` data always trains on the assistant tokens only; to choose other targets, pass tokenized "
                "`input_ids` with `labels` (-100 where no loss)",
            ),
            "dataset_kwargs": (
                bool(set(self.dataset_kwargs or {}) - {"skip_prepare_dataset"}),
                "TRL's data preparation is replaced by LongAlign's (chat template, `overflow`, `bad_rows`), so "
                f"{sorted(set(self.dataset_kwargs or {}) - {'skip_prepare_dataset'})} would have no effect",
            ),
            "train_sampling_strategy": (
                self.train_sampling_strategy != "random" and self.batching != "naive",
                f"`batching={self.batching!r}` orders the samples itself; other sampling strategies apply to "
                "`batching='naive'` only",
            ),
        }
        for name, (refused, why) in refusals.items():
            if refused:
                raise ValueError(f"`{name}={getattr(self, name)!r}` is not supported by LongAlignConfig: {why}.")
        if self.shuffle_dataset:
            logger.warning(
                "`shuffle_dataset=True` has no effect: LongAlign's batching already draws batches in random order "
                "(naive), shuffles the groups of sorted batches (sort) or the steps of packs (pack)."
            )
