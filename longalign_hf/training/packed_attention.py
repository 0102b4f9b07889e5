"""`sdpa_packed`: PyTorch SDPA run sample by sample inside a packed row, for machines without FlashAttention.

Plain `sdpa` isolates packed samples with a block-diagonal mask over the whole row, so it computes (and masks) every
token pair of the pack: a 64k-token pack of 300-token samples costs ~200x the attention it needs, plus a 64k x 64k
mask. `sdpa_packed` instead cuts the row at the sample boundaries (`cu_seq_lens_q` from `LongAlignDataCollator`, or
the restarts of `position_ids`) and runs causal SDPA on each sample, like FlashAttention-2's varlen kernel does.
A layer with a sliding window (the `sliding_window` transformers passes per layer: Mistral, Qwen2 with
`use_sliding_window`, Gemma-3's local layers) keeps it: a token sees itself and the `sliding_window - 1` tokens before
it, as in the model's eager attention. Padded batches, several rows and decoding steps go through plain `sdpa` with
transformers' own mask. Softcapping and attention sinks, which SDPA cannot compute, are refused.

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


# What a model's attention may hand the attention function that per-sample SDPA (and PyTorch's varlen kernel) do not
# compute. Running without it would train a different model than the model's own (eager) attention, so it is refused.
_UNSUPPORTED_ARGUMENTS = {
    "softcap": "attention logit softcapping",
    "s_aux": "attention sinks",
    "sinks": "attention sinks",
    "position_bias": "a position bias added to the attention scores",
    "indices": "sparse attention over selected keys",
    "block_indices": "block-sparse attention",
}


def refuse_unsupported_attention_arguments(backend: str, kwargs: dict) -> None:
    """Raise for an attention argument that `backend` would drop (softcapping, sinks, ...), naming what to use instead.

    `training.checks.check_packed_attention` refuses such models before training where their modules show it; this
    is the guard for the models it cannot recognize."""
    for name, what in _UNSUPPORTED_ARGUMENTS.items():
        if kwargs.get(name) is not None:
            raise ValueError(
                f"{backend} cannot compute {what} (`{name}`), which this model's attention uses: train it with "
                "'eager' attention (which keeps packed samples apart through the position ids) or a FlashAttention "
                "backend that supports it (`--attn_implementation`)."
            )


def _window_mask(queries: range, first_key: int, window: int, device: torch.device) -> torch.Tensor:
    """[1, 1, queries, keys] boolean mask of a causal sliding window over keys `first_key`..`queries.stop - 1`: a token
    sees itself and the `window - 1` tokens before it, as in transformers' `sliding_window_causal_mask_function` (and
    FlashAttention's `window_size=(window - 1, 0)`)."""
    query = torch.arange(queries.start, queries.stop, device=device)[:, None]
    key = torch.arange(first_key, queries.stop, device=device)[None, :]
    return ((key <= query) & (key > query - window))[None, None]


def _sample_attention(module, query, key, value, dropout, scaling, is_causal, window):
    """Attention over one sample ([1, heads, tokens, dim]). Within a sliding window shorter than the sample, it runs in
    blocks of `window` queries, each against its own keys and the `window - 1` before: work and memory grow as
    tokens x window, not tokens^2."""
    tokens = query.shape[2]
    if window is None or tokens <= window:
        return sdpa_attention_forward(module, query, key, value, None, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal)[0]  # fmt: skip
    if not is_causal:
        raise ValueError(
            f"{PACKED_SDPA} computes sliding-window attention only for causal layers; this layer attends both ways "
            "within a window. Use 'eager' or 'sdpa' attention (`--attn_implementation`) for this model."
        )
    outputs = []
    for start in range(0, tokens, window):
        queries, first_key = range(start, min(start + window, tokens)), max(0, start - window + 1)
        mask = _window_mask(queries, first_key, window, query.device)
        block = query[:, :, queries.start : queries.stop]
        keys, values = key[:, :, first_key : queries.stop], value[:, :, first_key : queries.stop]
        outputs.append(sdpa_attention_forward(module, block, keys, values, mask, dropout=dropout, scaling=scaling)[0])
    return torch.cat(outputs, dim=1)


def packed_sdpa_attention_forward(
    module, query, key, value, attention_mask, dropout=0.0, scaling=None, sliding_window=None, **kwargs
):
    """SDPA per packed sample (within the layer's sliding window, when it has one) for an unmasked row; plain SDPA with
    transformers' mask otherwise (a padded batch, several rows, cached keys)."""
    refuse_unsupported_attention_arguments(PACKED_SDPA, kwargs)
    if attention_mask is not None or query.shape[0] != 1 or key.shape[2] != query.shape[2]:
        # `packed_sdpa_mask` gave transformers' own mask here, which carries the packing and any window.
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    bounds = _sample_bounds(query, key, kwargs) or [0, query.shape[2]]  # no sample bounds: the row is one sample
    is_causal = kwargs.get("is_causal")
    is_causal = getattr(module, "is_causal", True) if is_causal is None else is_causal
    # `split`, not slicing: the backward of k slices adds k zero-padded full-length gradients, O(k L) per tensor;
    # that of one split is a single concatenation.
    sizes = [end - start for start, end in zip(bounds[:-1], bounds[1:])]
    outputs = [
        _sample_attention(module, q, k, v, dropout, scaling, is_causal, sliding_window)
        for q, k, v in zip(query.split(sizes, dim=2), key.split(sizes, dim=2), value.split(sizes, dim=2))
    ]
    return (outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=1)), None


def packed_sdpa_mask(*args, attention_mask=None, **kwargs):
    """No mask for one unpadded row without cached keys (a packed row, which the attention cuts and windows itself);
    SDPA's mask otherwise: padded batches, several rows, decoding steps."""
    one_row = kwargs.get("batch_size") == 1 and kwargs.get("q_length") == kwargs.get("kv_length")
    offsets = [kwargs.get("q_offset", 0), kwargs.get("kv_offset", 0)]
    if attention_mask is None and one_row and all(isinstance(n, int) and n == 0 for n in offsets):
        return None
    return sdpa_mask(*args, attention_mask=attention_mask, **kwargs)


AttentionInterface.register(PACKED_SDPA, packed_sdpa_attention_forward)
AttentionMaskInterface.register(PACKED_SDPA, packed_sdpa_mask)
