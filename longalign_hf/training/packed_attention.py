"""`sdpa_packed`: PyTorch SDPA run sample by sample inside a packed row, for machines without FlashAttention.

Plain `sdpa` isolates packed samples with a block-diagonal mask over the whole row, so it computes (and masks) every
token pair of the pack: a 64k-token pack of 300-token samples costs ~200x the attention it needs, plus a 64k x 64k
mask. `sdpa_packed` instead cuts the row at the sample boundaries (`cu_seq_lens_q` from `LongAlignDataCollator`, or
the restarts of `position_ids`) and runs causal SDPA on each sample, like FlashAttention-2's varlen kernel does.
Padded batches (with an attention mask) go through plain `sdpa` unchanged.

Importing this module (the trainer, `longalign_hf.training.attention` and `longalign_hf.training.varlen_attention` do) registers it
with transformers' `AttentionInterface` and `AttentionMaskInterface`.
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

PACKED_SDPA = "sdpa_packed"


# Every layer of a forward gets the same `cu_seq_lens_q` / `position_ids` tensor. Reading the bounds back to the host
# once per forward instead of once per layer saves a device synchronization per layer on GPUs.
_last_bounds: tuple[torch.Tensor, int, list[int]] | None = None


def _read_bounds(kwargs: dict) -> list[int]:
    cu_seq_lens = kwargs.get("cu_seq_lens_q")
    if cu_seq_lens is not None:
        return cu_seq_lens.tolist()
    positions = kwargs["position_ids"].reshape(-1, kwargs["position_ids"].shape[-1])[0]
    starts = (torch.diff(positions, prepend=positions[:1] - 1) != 1).nonzero().flatten().tolist()
    return [*starts, positions.numel()] if starts[:1] == [0] else [0, *starts, positions.numel()]


def _sample_bounds(query: torch.Tensor, key: torch.Tensor, kwargs: dict) -> list[int] | None:
    """Token offsets where the packed samples start (and the row ends), or `None` when the row is not packed."""
    global _last_bounds
    if query.shape[0] != 1 or key.shape[2] != query.shape[2]:
        return None  # a batch, or a step that also attends to cached keys: not a packed row
    source = kwargs.get("cu_seq_lens_q")
    if source is None:
        source = kwargs.get("position_ids")
        if source is None or source.shape[-1] != query.shape[2]:
            return None
    if source.is_inference():  # no version counter to tell a reused tensor from a changed one
        return _read_bounds(kwargs)
    if _last_bounds is not None and _last_bounds[0] is source and _last_bounds[1] == source._version:
        return _last_bounds[2]
    bounds = _read_bounds(kwargs)
    _last_bounds = (source, source._version, bounds)
    return bounds


def packed_sdpa_attention_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """Causal SDPA per packed sample when the row is packed and unmasked; plain SDPA otherwise."""
    bounds = _sample_bounds(query, key, kwargs) if attention_mask is None else None
    if bounds is None or len(bounds) <= 2:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    # `split`, not slicing: the backward of k slices adds k zero-padded full-length gradients, O(k L) per tensor;
    # that of one split is a single concatenation.
    sizes = [end - start for start, end in zip(bounds[:-1], bounds[1:])]
    outputs = [
        sdpa_attention_forward(module, q, k, v, None, dropout=dropout, scaling=scaling, is_causal=True)[0]
        for q, k, v in zip(query.split(sizes, dim=2), key.split(sizes, dim=2), value.split(sizes, dim=2))
    ]
    return torch.cat(outputs, dim=1), None


def packed_sdpa_mask(*args, attention_mask=None, **kwargs):
    """No mask for an unpadded (packed) row, which the attention cuts itself; SDPA's mask for padded batches."""
    if attention_mask is None:
        return None
    return sdpa_mask(*args, attention_mask=attention_mask, **kwargs)


AttentionInterface.register(PACKED_SDPA, packed_sdpa_attention_forward)
AttentionMaskInterface.register(PACKED_SDPA, packed_sdpa_mask)
