"""How the training batches reach each process: a train loader that resumes exactly on any number of processes, and
under Ulysses sequence parallelism hands every rank its slice of its replica's packed rows.

Resuming mid-epoch, `Trainer` skips the batches already trained with accelerate's `skip_first_batches`, which wraps
the loader's batch sampler in a `SkipBatchSampler`. On several processes that batch sampler is accelerate's
`BatchSamplerShard`, through which neither accelerate's `set_epoch` nor `Trainer`'s reaches the sampler: the
resumed epoch would be dealt in the first epoch's order. The shard is given its sampler back (`set_sampler`).

Under SP, DeepSpeed's `UlyssesSPDataLoaderAdapter` (which `Trainer` wraps the train loader in) has each rank of a group
read a different row, all-gathers them, and yields `sp_size` micro-batches (one slice of each row) per row it read.
That loader cannot resume (`skip_first_batches` needs a `DataLoader`, and counts micro-batches, not the rows each rank
read: a checkpoint can fall in the middle of a rank's `sp_size` micro-batches), and its packs are dealt to every
process, so a run on sp 2 plans, pads and orders its steps for twice the replicas it has. Here every rank of an SP
group reads the same rows and keeps its own slice of each (`SequenceParallelSlicer`, exactly what the adapter hands
it; each rank collates the whole row, which is cheap next to the model, and no row crosses the network), and the rows
are dealt to the data-parallel replicas. The loader yields one micro-batch per micro-step: `Trainer` counts, skips and
reshuffles it as without SP, and a run on one replica with SP takes the steps of the same run on one process.
"""

from __future__ import annotations

from typing import Any

import torch

from longalign_hf.data.chat import IGNORE_INDEX

# Real (not padding) tokens in a rank's slice of a row; the trainer pops it to count the tokens trained.
LOSS_REAL_TOKENS = "loss_real_tokens"


class SequenceParallelSlicer:
    """Collates a packed row with `row_collator` (`SequenceParallelCollator`: the row padded to `max_length`, per-token
    loss bookkeeping) and keeps rank `sp_rank`'s part of it, as DeepSpeed's adapter would hand it: `labels` shifted
    into `shift_labels` (position t holds the label t predicts), then every `[rows, tokens]` tensor cut into `sp_size`
    equal parts along the tokens. Adds `loss_real_tokens`, the slice's tokens that are not row padding.

    Example:
        >>> from longalign_hf.training.collator import LongAlignDataCollator
        >>> from longalign_hf.training.sequence_parallel import SequenceParallelCollator
        >>> rows = SequenceParallelCollator(LongAlignDataCollator(pad_token_id=0), row_length=8)
        >>> features = [{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8, 9], "labels": [8, 9]}]
        >>> parts = [SequenceParallelSlicer(rows, sp_rank=rank, sp_size=2)(features) for rank in (0, 1)]
        >>> [part["input_ids"].tolist() for part in parts], [part["shift_labels"].tolist() for part in parts]
        ([[[5, 6, 7, 8]], [[9, 0, 0, 0]]], [[[6, 7, -100, 9]], [[-100, -100, -100, -100]]])
        >>> [part["loss_real_tokens"] for part in parts]
        [4, 1]
    """

    def __init__(self, row_collator, sp_rank: int, sp_size: int):
        if not 0 <= sp_rank < sp_size:
            raise ValueError(f"sp_rank must be in [0, {sp_size}), got {sp_rank}")
        self.row_collator = row_collator
        self.sp_rank = sp_rank
        self.sp_size = sp_size

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.row_collator(features)
        # The row is the features' tokens, then the padding.
        real_tokens = sum(len(feature["input_ids"]) for feature in features)
        labels = batch.pop("labels")
        batch["shift_labels"] = torch.nn.functional.pad(labels, (0, 1), value=IGNORE_INDEX)[:, 1:]
        chunk = labels.shape[1] // self.sp_size
        start = chunk * self.sp_rank
        part = {
            key: value[:, start : start + chunk].contiguous() if torch.is_tensor(value) else value
            for key, value in batch.items()
        }
        part[LOSS_REAL_TOKENS] = min(max(real_tokens - start, 0), chunk)
        return part


class TrainLoaderHooks:
    """The `Trainer` hooks of this train loader, a mixin of `LongAlignSFTTrainer` (before `SFTTrainer`; the trainer
    sets `_sp_size`, and under SP `_replicas` and `_sp_collator`)."""

    _sp_size = 1

    def get_train_dataloader(self):
        if self._sp_size == 1:
            return _sampler_in_reach(super().get_train_dataloader())
        replica, sp_rank = divmod(self.accelerator.process_index, self._sp_size)
        collator = self.data_collator
        self.data_collator = SequenceParallelSlicer(self._sp_collator, sp_rank, self._sp_size)
        try:
            loader = super().get_train_dataloader()
        finally:
            self.data_collator = collator  # evaluation runs whole rows
        # `accelerate.prepare` dealt the rows to every process (`BatchSamplerShard`); only its share count and index
        # change (transformers' `Trainer` does the same for its rank-aware `BatchRebalanceSampler`).
        shard = loader.batch_sampler
        if not hasattr(shard, "num_processes"):
            raise TypeError(f"expected accelerate's BatchSamplerShard in the train loader, got {type(shard).__name__}")
        shard.num_processes, shard.process_index = self._replicas, replica
        return _sampler_in_reach(loader)

    def _prepare_for_training(self, max_steps, train_dataloader, resume_from_checkpoint):
        model, prepared = super()._prepare_for_training(max_steps, train_dataloader, resume_from_checkpoint)
        if self._sp_size == 1:
            return model, prepared
        # `Trainer` wraps the loader in DeepSpeed's SP adapter, which would gather and slice the slices again.
        from deepspeed.utils import groups

        if getattr(prepared, "dl", None) is not train_dataloader:
            raise RuntimeError(
                f"expected DeepSpeed's SP adapter around the train loader, got {type(prepared).__name__}"
            )
        sp_rank = self.accelerator.process_index % self._sp_size
        if groups._get_sequence_parallel_rank() != sp_rank:
            raise RuntimeError(
                f"this process is rank {groups._get_sequence_parallel_rank()} of its DeepSpeed SP group but reads slice "
                f"{sp_rank} of its rows: DeepSpeed no longer groups consecutive ranks, as the train loader assumes"
            )
        self.callback_handler.train_dataloader = train_dataloader
        return model, train_dataloader

    def get_sp_size(self) -> int:
        # `Trainer` multiplies the train loader's length by this, for DeepSpeed's adapter (sp_size micro-batches per
        # row each rank reads); this loader yields every micro-batch itself.
        return 1

    def get_total_train_batch_size(self, args) -> int:
        return super().get_total_train_batch_size(args) // self._sp_size


def _sampler_in_reach(loader):
    """`loader` with its sampler where `set_epoch` finds it past the `SkipBatchSampler` of a resumed epoch: on the
    `BatchSamplerShard` of a multi-process loader, which (unlike the `BatchSampler` it wraps) has no `sampler`."""
    shard = getattr(loader, "batch_sampler", None)
    if hasattr(shard, "num_processes") and not hasattr(shard, "sampler"):
        loader.set_sampler(shard.batch_sampler.sampler)
    return loader
