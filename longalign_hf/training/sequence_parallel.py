"""The glue between LongAlign and DeepSpeed's Ulysses sequence parallelism (ALST), as accelerate and transformers run it.

Under `ParallelismConfig(sp_backend="deepspeed", sp_size=N)`, every rank of an SP group trains on a 1/N slice of each
packed row, along the sequence (`train_loader.SequenceParallelSlicer`, the slices DeepSpeed's
`UlyssesSPDataLoaderAdapter` would hand out): so a packed sample's tokens may land on several ranks. DeepSpeed's
`UlyssesSPAttentionHF` swaps heads for sequence with all-to-all, so each rank runs attention over the whole packed row
for 1/N of the heads, with the position ids gathered from the ranks.

What LongAlign adds, and why:
- A slice holds only `[rows, tokens]` tensors (every tensor is cut on dim 1). So the per-sample bookkeeping becomes
  per-token: `loss_shift_num_targets` (N_i of the sample whose label each position predicts, aligned with the
  `shift_labels` made from `labels`) and `loss_sample_starts` (1 on one position per sample with targets). Summed over
  all ranks they count every sample and target token once, wherever its tokens fell.
- The pack-wide `cu_seq_lens` describe the whole row and cannot be sliced; the core attention finds the samples from
  the gathered, restarting position ids instead. Plain `sdpa` would not (with no mask it is causal over the whole
  row, so packed samples would attend to each other), so it is replaced by `sdpa_packed` / `varlen_packed`.
- Each rank's loss is its tokens' share of the step's objective, scaled by what DeepSpeed divides the summed gradient
  by (`deepspeed_checks.gradient_divisor`: the data-parallel replicas, or every rank under ZeRO-3's reduce-scatter);
  DeepSpeed settings under which that divisor differs between parameters, or is not followed here, are refused before
  training (`deepspeed_checks.check_gradient_reduction`, shared with DeepSpeed runs without SP). An MoE model's router
  loss of a step is the mean, over every rank's slice of every micro-step's row, of the slice's router loss (the loss
  over the tokens that rank's routers see): each rank's is scaled by that divisor over the number of processes.
- Rows are padded to `max_length` (`SequenceParallelCollator`), and evaluation runs whole rows without Ulysses
  (`restore_kv_head_groups` undoes what DeepSpeed leaves on the attention modules).
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch

from longalign_hf.data.chat import IGNORE_INDEX
from longalign_hf.training.collator import LOSS_NUM_TARGETS, LOSS_SAMPLE_FEATURES, LOSS_SAMPLE_IDS
from longalign_hf.training.deepspeed_checks import check_gradient_reduction

logger = logging.getLogger(__name__)

# Per-token loss bookkeeping of a sequence-parallel batch (`[rows, tokens]`, sliced with the tokens).
LOSS_SHIFT_NUM_TARGETS = "loss_shift_num_targets"
LOSS_SAMPLE_STARTS = "loss_sample_starts"

# What a packed batch carries that describes the whole row and cannot be sliced along the sequence.
_WHOLE_ROW_KEYS = ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k", LOSS_NUM_TARGETS,
                   LOSS_SAMPLE_FEATURES, LOSS_SAMPLE_IDS)  # fmt: skip


def sequence_parallel_size(parallelism_config) -> int:
    """The Ulysses SP degree of an accelerate `ParallelismConfig` (1 without one)."""
    return 1 if parallelism_config is None else parallelism_config.sp_size


def row_multiple(sp_size: int, pad_to_multiple_of: int | None) -> int:
    """What every packed row's length must divide by: the SP degree (Ulysses slices the row into equal parts) and
    the user's `pad_to_multiple_of`."""
    return math.lcm(sp_size, pad_to_multiple_of or 1)


def per_token_bookkeeping(batch: dict[str, Any]) -> dict[str, Any]:
    """A packed batch of `LongAlignDataCollator` in a layout that can be sliced along the sequence.

    Position t of the per-token keys describes the label at t + 1 (the one position t predicts), like the
    `shift_labels` made from `labels`:

    ```
    labels                  -100  -100    a3  -100    b2  -100    c2    c3
    loss_shift_num_targets     0     1     0     1     0     2     2     0
    loss_sample_starts         0     1     0     1     0     1     0     0
    ```

    Example:
        >>> from longalign_hf.training.collator import LongAlignDataCollator
        >>> batch = LongAlignDataCollator(pad_token_id=0)([{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}])
        >>> sp_batch = per_token_bookkeeping(batch)
        >>> sp_batch["loss_shift_num_targets"].tolist(), sp_batch["loss_sample_starts"].tolist()
        ([[2, 2, 0]], [[1, 0, 0]])
        >>> sorted(key for key in sp_batch if torch.is_tensor(sp_batch[key]))
        ['input_ids', 'labels', 'loss_sample_starts', 'loss_shift_num_targets', 'position_ids']
    """
    labels, sample_ids = batch["labels"], batch[LOSS_SAMPLE_IDS]
    num_targets = batch[LOSS_NUM_TARGETS]
    is_target = labels != IGNORE_INDEX
    shifted_is_target = torch.nn.functional.pad(is_target[:, 1:], (0, 1), value=False)
    shifted_samples = torch.nn.functional.pad(sample_ids[:, 1:], (0, 1), value=-1)
    shift_num_targets = torch.where(shifted_is_target, num_targets[shifted_samples.clamp(min=0)], 0)
    # One marker per sample with targets, on the (flattened) position that predicts its first target.
    positions = shifted_is_target.flatten().nonzero().flatten()
    first = torch.full((len(num_targets),), shifted_is_target.numel(), dtype=torch.long)
    first = first.scatter_reduce(0, shifted_samples.flatten()[positions], positions, "amin")
    sample_starts = torch.zeros(shifted_is_target.numel(), dtype=torch.long)
    sample_starts[first[first < shifted_is_target.numel()]] = 1
    sp_batch = {key: value for key, value in batch.items() if key not in _WHOLE_ROW_KEYS}
    sp_batch[LOSS_SHIFT_NUM_TARGETS] = shift_num_targets.long()
    sp_batch[LOSS_SAMPLE_STARTS] = sample_starts.view_as(shifted_is_target)
    return sp_batch


class SequenceParallelCollator:
    """Wraps `LongAlignDataCollator` for sequence-parallel training: every row padded to `row_length` (the padding is a
    separate, loss-free sample) and the loss bookkeeping made per-token (`per_token_bookkeeping`).

    Rows all have the same length, `max_length` (a multiple of the SP degree, so that a row cuts into equal slices):
    one shape for every step spares GPU kernels a recompilation per length. The planner fills packs to ~99.9% of
    `max_length`, so the padding costs next to nothing.
    """

    def __init__(self, collator, row_length: int):
        if not collator.padding_free:
            raise ValueError("sequence parallelism here trains packed rows (`batching='pack'`)")
        self.row_length = row_length
        self.collator = type(collator)(
            pad_token_id=collator.pad_token_id, padding_free=True, pad_to_multiple_of=row_length,
            return_loss_bookkeeping=True,
        )  # fmt: skip

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.collator(features)
        if batch["input_ids"].shape[1] != self.row_length:
            raise ValueError(
                f"a packed row of {batch['input_ids'].shape[1]} tokens is longer than max_length={self.row_length}"
            )
        return per_token_bookkeeping(batch)


def weighted_nll_sum_per_token(
    log_probs: torch.Tensor, label_mask: torch.Tensor, shift_num_targets: torch.Tensor, loss_weighting: str
) -> torch.Tensor:
    """`weighted_nll_sum` for a slice of a sequence-parallel row: `log_probs` and `label_mask` are aligned with the
    shifted labels, and each position carries the target count of its sample (`loss_shift_num_targets`)."""
    token_loss = -log_probs * label_mask
    if loss_weighting == "token":
        return token_loss.sum()
    return (token_loss / shift_num_targets.clamp(min=1).to(token_loss.dtype)).sum()


def check_sequence_parallel(args, parallelism_config, num_processes: int, deepspeed_config: dict | None) -> None:
    """Refuse, before training, what Ulysses sequence parallelism cannot run, or not exactly, with what to do instead.

    `deepspeed_config` is the DeepSpeed config the run will use (None when the run is not under DeepSpeed).
    """
    sp_size = sequence_parallel_size(parallelism_config)
    if deepspeed_config is None:
        raise ValueError(
            f"`sp_size={sp_size}` needs DeepSpeed (Ulysses sequence parallelism runs inside its engine): launch with "
            "an accelerate config that has `distributed_type: DEEPSPEED` (e.g. recipes/accelerate/sp4_zero3.yaml) "
            "and `pip install 'longalign-hf[deepspeed]'`."
        )
    if args.batching != "pack":
        raise ValueError(
            f"sequence parallelism trains packed rows: use `batching='pack'` (got {args.batching!r}); a sample "
            "longer than any other still trains alone, in a pack of its own."
        )
    if args.per_device_train_batch_size != 1:
        raise ValueError(
            f"under sequence parallelism each micro-step trains one packed row of `max_length` tokens per data-parallel "
            f"replica (the packs of a micro-batch are joined into one row, which must fit `max_length`), so "
            f"`per_device_train_batch_size` must be 1, got {args.per_device_train_batch_size}: set it to 1 and raise "
            "`gradient_accumulation_steps` (or `max_length`) for more tokens per optimizer step."
        )
    multiple = row_multiple(sp_size, args.pad_to_multiple_of)
    if args.max_length is None or args.max_length % multiple:
        raise ValueError(
            f"with sp_size={sp_size}, `max_length` (the whole packed row, split over the SP ranks) must be a multiple "
            f"of {multiple}, got {args.max_length}; e.g. {max(multiple, (args.max_length or 0) // multiple * multiple)}"
        )
    if not parallelism_config.sp_handler.sp_disable_in_eval:
        raise ValueError(
            "`sp_disable_in_eval: false` would run evaluation through Ulysses, whose all-to-all needs rows of one "
            "shape on every rank of an SP group, while evaluation rows are whole packs of different lengths (gloo "
            "aborts, NCCL hangs). Remove it (the default, `true`, evaluates whole rows on each GPU, exactly)."
        )
    _check_process_layout(num_processes, sp_size, parallelism_config.data_parallel_size)
    check_gradient_reduction(deepspeed_config, sp_size)


def _check_process_layout(num_processes: int, sp_size: int, data_parallel: int) -> None:
    if num_processes % sp_size:
        below, above = num_processes // sp_size, num_processes // sp_size + 1
        options = [f"{n * sp_size} processes with `dp_shard_size: {n}`" for n in (below, above) if n]
        raise ValueError(
            f"{num_processes} processes cannot form SP groups of sp_size={sp_size}: the number of processes must be a "
            f"multiple of sp_size, with data parallel (dp_replicate_size x dp_shard_size) = processes / sp_size. "
            f"Launch {' or '.join(options)}, or choose an sp_size that divides {num_processes} (and the attention "
            "heads)."
        )
    if data_parallel * sp_size != num_processes:
        raise ValueError(
            f"{num_processes} processes with sp_size={sp_size} need {num_processes // sp_size} data-parallel "
            f"replicas, but the parallelism config gives {data_parallel} (dp_replicate_size x dp_shard_size): set "
            f"`dp_shard_size: {num_processes // sp_size}` (and `dp_replicate_size: 1`) so that data parallel x "
            "sp_size = the number of processes."
        )


def isolating_core_attention(model_attention: str, sp_attention: str | None, packing_attention) -> str:
    """The attention DeepSpeed's Ulysses wrapper must run over the gathered row: one that cuts packed samples apart from
    the restarting position ids (`packing_attention` maps plain `sdpa` to `sdpa_packed` / `varlen_packed`).

    The model's own choice (FlashAttention, say, picked by the recipe or `--attn_implementation`) wins over the SP
    config's `sp_attn_implementation`, which accelerate sets to `sdpa` when it is not given; the SP config's choice is
    used when the model runs one of the defaults, `sdpa` or `eager`.
    """
    requested = sp_attention if sp_attention and model_attention in ("sdpa", "eager") else model_attention
    target = packing_attention(requested)
    if target == "eager":
        raise ValueError(
            "eager attention cannot run under Ulysses sequence parallelism (it needs the O(n^2) mask that Ulysses "
            "drops); use `sdpa` (run as sdpa_packed / varlen_packed) or `flash_attention_2`."
        )
    return target


def log_layout(sp_size: int, world_size: int, max_length: int, core_attention: str) -> None:
    logger.info(
        "Sequence parallelism (DeepSpeed Ulysses): sp_size=%d x data parallel %d; each packed row of up to %d tokens "
        "is split into %d tokens per rank; core attention %r over the gathered row",
        sp_size, world_size // sp_size, max_length, max_length // sp_size, core_attention,
    )  # fmt: skip


def restore_kv_head_groups(model) -> None:
    """Undo what DeepSpeed's Ulysses forward leaves on the attention modules when sp_size exceeds the key/value heads:
    it replicates the heads and sets `num_key_value_groups` to match, so a forward without Ulysses (evaluation, where
    accelerate turns it off) would pair queries with the wrong keys. Call before such a forward."""
    config = model.config.get_text_config()
    groups = config.num_attention_heads // (getattr(config, "num_key_value_heads", None) or config.num_attention_heads)
    for module in model.modules():
        if hasattr(module, "num_key_value_groups"):
            module.num_key_value_groups = groups
