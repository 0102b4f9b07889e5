"""Sorted batching (LongAlign section 3.3) as a torch `Sampler`: distributed-aware and resumable."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

from longalign_hf.training.packing import _check_positive_int
from longalign_hf.training.schedule import _as_sort_keys, _length_grouped_order


class SortedBatchSampler(Sampler[int]):
    """Sorted batching: every global batch holds samples of similar length, global batches in shuffled order.

    With random batches, devices holding short samples wait for the one holding the longest, and padding wastes the
    rest. This sampler sorts samples by `lengths` (stable: ties by index), cuts consecutive groups of one global
    batch (`batch_size * num_replicas * gradient_accumulation_steps` samples, one optimizer step), and shuffles the
    order of the groups with `seed + epoch`. No sample is repeated or dropped unless `drop_last`. The last partial
    group (the longest samples) always comes last, so every full group stays aligned with an optimizer step;
    `drop_last=True` drops it.

    Inside a group the samples stay sorted, and they are laid out in the order the devices consume them: batch `j`
    of `batch_size` consecutive samples goes to rank `j % num_replicas` at micro-step `j // num_replicas`, so the
    devices of one micro-step get neighbouring lengths.

    The same sampler serves the packing schedule: pass pack costs (`pack_cost`, floats are fine) as `lengths` and the
    packs per device as `batch_size`, and it yields the cost-balanced order of `balanced_pack_order`.

    Distributed use:
        - `rank=None` (inside `Trainer` / `accelerate`): yields the global stream and `len()` counts all of it.
          `accelerate.prepare` wraps the dataloader's `BatchSampler` in `BatchSamplerShard`: with the default
          `split_batches=False`, process `p` takes the `p`-th of every `num_processes` consecutive batches of
          `batch_size`, which is exactly the layout above. With the default `even_batches=True` and no `drop_last`,
          a last round too short for every process is completed by cycling from the start of the stream, so a few
          samples repeat in the last step (accelerate's doing).
        - `rank=r` (plain DDP, no accelerate): yields only rank `r`'s share, in its micro-batch order, dealt and
          completed exactly as `BatchSamplerShard` would, so every rank runs the same number of steps.

    Resuming: the order depends only on (`lengths`, `seed`, epoch, sizes), so a re-created sampler with the same
    arguments and `set_epoch` reproduces it, and `Trainer`, which skips the batches already seen in the epoch,
    continues where it stopped.

    Args:
        lengths (`Sequence[float]` or `np.ndarray`):
            Sort key of every sample: token counts, or any finite numbers such as pack costs.
        batch_size (`int`):
            Samples per device per micro-step (`per_device_train_batch_size`).
        num_replicas (`int`, *optional*, defaults to `1`):
            Number of devices (`world_size`).
        gradient_accumulation_steps (`int`, *optional*, defaults to `1`):
            Micro-steps per optimizer step.
        seed (`int`, *optional*, defaults to `0`):
            The group order of epoch `e` is shuffled with numpy's `default_rng(seed + e)`.
        drop_last (`bool`, *optional*, defaults to `False`):
            Drop the last partial global batch.
        rank (`int`, *optional*):
            Yield only this rank's share; `None` yields the global stream (what `accelerate` expects).
        shuffle (`bool`, *optional*, defaults to `True`):
            `False` keeps the groups in ascending length order.

    Example:
        >>> sampler = SortedBatchSampler([50, 10, 40, 20, 30, 60], batch_size=1, num_replicas=2, seed=0)
        >>> list(sampler)  # groups (10, 20), (30, 40), (50, 60) in shuffled order
        [0, 5, 1, 3, 4, 2]
        >>> list(SortedBatchSampler([50, 10, 40, 20, 30, 60], batch_size=1, num_replicas=2, seed=0, rank=1))
        [5, 3, 2]
    """

    def __init__(
        self,
        lengths: Sequence[float] | np.ndarray,
        batch_size: int,
        num_replicas: int = 1,
        gradient_accumulation_steps: int = 1,
        seed: int = 0,
        drop_last: bool = False,
        rank: int | None = None,
        shuffle: bool = True,
    ) -> None:
        super().__init__()
        self.lengths = _as_sort_keys(lengths, "lengths")
        self.batch_size = _check_positive_int(batch_size, "batch_size")
        self.num_replicas = _check_positive_int(num_replicas, "num_replicas")
        self.gradient_accumulation_steps = _check_positive_int(
            gradient_accumulation_steps, "gradient_accumulation_steps"
        )
        if rank is not None and not 0 <= rank < self.num_replicas:
            raise ValueError(f"rank must be in [0, num_replicas={self.num_replicas}) or None, got {rank}")
        self.seed = seed
        self.drop_last = drop_last
        self.rank = rank
        self.shuffle = shuffle
        self.epoch = 0

    @property
    def global_batch_size(self) -> int:
        """Samples in one optimizer step over all devices."""
        return self.batch_size * self.num_replicas * self.gradient_accumulation_steps

    def set_epoch(self, epoch: int) -> None:
        """Use the group order of `epoch` (`Trainer` and `accelerate` call this at the start of every epoch)."""
        self.epoch = epoch

    def _num_global(self) -> int:
        if self.drop_last:
            return len(self.lengths) // self.global_batch_size * self.global_batch_size
        return len(self.lengths)

    def __len__(self) -> int:
        if self.rank is None:
            return self._num_global()
        return math.ceil(self._num_global() / (self.batch_size * self.num_replicas)) * self.batch_size

    def __iter__(self) -> Iterator[int]:
        seed = self.seed + self.epoch if self.shuffle else None
        stream = _length_grouped_order(self.lengths, self.global_batch_size, seed)[: self._num_global()]
        if self.rank is not None:
            round_size = self.batch_size * self.num_replicas
            padding = -len(stream) % round_size
            # Complete the last round by cycling from the start, as accelerate's BatchSamplerShard does.
            stream = np.concatenate([stream, np.resize(stream, padding)])
            stream = stream.reshape(-1, self.num_replicas, self.batch_size)[:, self.rank].ravel()
        return iter(stream.tolist())
