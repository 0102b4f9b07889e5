"""`varlen_packed`: packed rows through PyTorch's own FlashAttention varlen kernel, with no flash-attn install.

`torch.nn.attention.varlen.varlen_attn` (torch >= 2.10, CUDA) runs causal attention over the samples of a packed row
cut at `cu_seq_lens`, forward and backward, like flash-attn's `flash_attn_varlen_func`. `varlen_packed` hands it the
collator's `cu_seq_lens_q/k` and `max_length_q/k` (or the bounds of restarting `position_ids`, as `sdpa_packed` reads
them), and the layer's sliding window (the `sliding_window` transformers passes for Mistral, Qwen2 and Gemma-3's local
layers: a token sees itself and `sliding_window - 1` tokens before it, `window_size=(sliding_window - 1, 0)`). Where
the kernel cannot run (not CUDA, a dtype other than float16/bfloat16, a head size it does not take, a GPU older than
Ampere, a padded batch, a step that attends to cached keys, attention dropout, a layer that attends both ways, a
torch without `varlen_attn` or, for a sliding window, without its `window_size`) the layer runs `sdpa_packed` instead
and says why once per reason. What neither computes (softcapping, attention sinks) is refused.

The signature of `varlen_attn` changed between releases (torch 2.10: `is_causal`, no `scale`, no window; 2.11: causal
as `window_size=(-1, 0)`; later: `enable_gqa`), so it is read at run time.

Importing this module (the trainer and `longalign_hf.training.attention` do) registers it with transformers'
`AttentionInterface` and `AttentionMaskInterface`.
"""

from __future__ import annotations

import functools
import inspect
import logging

import torch
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface

from longalign_hf.training.packed_attention import (
    PACKED_SDPA,
    _sample_bounds,
    packed_sdpa_attention_forward,
    packed_sdpa_mask,
    refuse_unsupported_attention_arguments,
)

try:
    from torch.nn.attention.varlen import varlen_attn
except ImportError:  # torch < 2.10
    varlen_attn = None

VARLEN_PACKED = "varlen_packed"

logger = logging.getLogger(__name__)

# The FlashAttention-2 kernel inside torch takes half precision only, head sizes up to 256 in multiples of 8, and
# needs an Ampere (sm80) or newer GPU.
_KERNEL_DTYPES = (torch.float16, torch.bfloat16)
_MAX_HEAD_DIM = 256
_MIN_CAPABILITY = (8, 0)

_reported: set[str] = set()  # fallback reasons already logged: once per reason, not once per layer call
_last_cu_seq_lens: tuple[list[int], torch.Tensor] | None = None


@functools.cache
def _capability(device_index: int) -> tuple[int, int]:
    return torch.cuda.get_device_capability(device_index)


def _device_reason(device: torch.device) -> str | None:
    """Why the kernel cannot run on `device`, or `None` when it can."""
    if device.type != "cuda":
        return f"tensors on {device.type}, not a CUDA GPU"
    major, minor = _capability(device.index if device.index is not None else torch.cuda.current_device())
    if (major, minor) < _MIN_CAPABILITY:
        return f"compute capability {major}.{minor}; the kernel needs 8.0 (Ampere) or newer"
    return None


def _fallback_reason(module, query, key, value, attention_mask, dropout, kwargs) -> str | None:
    """Why this call cannot run through `varlen_attn`, or `None` when it can."""
    if varlen_attn is None:
        return f"torch {torch.__version__} has no torch.nn.attention.varlen.varlen_attn (torch >= 2.10 has it)"
    if attention_mask is not None:
        return "a padded batch (with an attention mask), not a packed row"
    if query.shape[0] != 1:
        return f"a batch of {query.shape[0]} unpadded rows, not one packed row"
    if key.shape[2] != query.shape[2]:
        return "a step that attends to cached keys"
    if dropout:
        return f"attention dropout {dropout}; the kernel has none"
    is_causal = kwargs.get("is_causal")
    if not (getattr(module, "is_causal", True) if is_causal is None else is_causal):
        return "a layer that attends both ways (is_causal=False)"
    device = _device_reason(query.device)
    if device is not None:
        return device
    if query.dtype not in _KERNEL_DTYPES or key.dtype != query.dtype or value.dtype != query.dtype:
        return f"dtype {str(query.dtype).removeprefix('torch.')}; the kernel takes float16 or bfloat16"
    head_dim = query.shape[-1]
    if head_dim % 8 or head_dim > _MAX_HEAD_DIM or value.shape[-1] != head_dim:
        return f"head size {head_dim} (values: {value.shape[-1]}); the kernel takes one size, a multiple of 8 <= 256"
    return None


def _cu_seq_lens(query: torch.Tensor, key: torch.Tensor, kwargs: dict) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """`cu_seq_q`, `cu_seq_k`, `max_q`, `max_k` for the row: the collator's, else read from restarting position ids."""
    global _last_cu_seq_lens
    cu_seq_q = kwargs.get("cu_seq_lens_q")
    if cu_seq_q is not None:
        cu_seq_k = kwargs.get("cu_seq_lens_k")
        cu_seq_k = cu_seq_q if cu_seq_k is None else cu_seq_k
        max_q = kwargs.get("max_length_q")
        max_q = int(cu_seq_q.diff().max()) if max_q is None else int(max_q)
        max_k = kwargs.get("max_length_k")
        max_k = max_q if max_k is None else int(max_k)
        return cu_seq_q.to(query.device, torch.int32), cu_seq_k.to(query.device, torch.int32), max_q, max_k
    bounds = _sample_bounds(query, key, kwargs) or [0, query.shape[2]]  # no position ids: one sequence
    # `_sample_bounds` returns the same list for every layer of a forward: copy it to the device once.
    if _last_cu_seq_lens is None or _last_cu_seq_lens[0] is not bounds or _last_cu_seq_lens[1].device != query.device:
        _last_cu_seq_lens = (bounds, torch.tensor(bounds, dtype=torch.int32, device=query.device))
    longest = max(end - start for start, end in zip(bounds[:-1], bounds[1:]))
    return _last_cu_seq_lens[1], _last_cu_seq_lens[1], longest, longest


@functools.cache
def _signature(function) -> frozenset[str]:
    return frozenset(inspect.signature(function).parameters)


def _window_reason(sliding_window: int | None, max_q: int) -> str | None:
    """Why this torch's kernel cannot run a layer's sliding window, or `None` when it can (or none is needed)."""
    if sliding_window is None or max_q <= sliding_window or "window_size" in _signature(varlen_attn):
        return None
    return f"torch {torch.__version__}'s varlen_attn has no window_size for the {sliding_window}-token sliding window"


def _run_varlen(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, scaling, window):
    """Causal `varlen_attn` on [tokens, heads, dim] tensors, whichever of its signatures this torch has; `window`: how
    many tokens a token sees (itself included), `None` for all before it."""
    parameters = _signature(varlen_attn)
    if "window_size" in parameters:  # FlashAttention's convention: (tokens to the left, tokens to the right)
        options = {"window_size": (-1, 0) if window is None else (window - 1, 0)}
    else:  # torch 2.10, causal only: `_window_reason` sends windowed layers to sdpa_packed
        options = {"is_causal": True}
    if "enable_gqa" in parameters:
        options["enable_gqa"] = key.shape[1] != query.shape[1]
    elif key.shape[1] != query.shape[1]:
        groups = query.shape[1] // key.shape[1]  # query head h reads key/value head h // groups, as in `repeat_kv`
        key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    if "scale" in parameters:
        options["scale"] = scaling
    elif scaling is not None and scaling != query.shape[-1] ** -0.5:
        # torch 2.10 always scales by 1/sqrt(head_dim): fold the model's own scale into the query.
        query = query * (scaling * query.shape[-1] ** 0.5)
    return varlen_attn(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, **options)


def varlen_packed_attention_forward(
    module, query, key, value, attention_mask, dropout=0.0, scaling=None, sliding_window=None, **kwargs
):
    """Causal `varlen_attn` over the samples of a packed row on CUDA, within the layer's sliding window when it has
    one; `sdpa_packed` where the kernel cannot run."""
    refuse_unsupported_attention_arguments(VARLEN_PACKED, kwargs)
    reason = _fallback_reason(module, query, key, value, attention_mask, dropout, kwargs)
    if reason is None:
        cu_seq_q, cu_seq_k, max_q, max_k = _cu_seq_lens(query, key, kwargs)
        reason = _window_reason(sliding_window, max_q)
    if reason is not None:
        if reason not in _reported:
            _reported.add(reason)
            logger.warning("%s: %s, so this attention runs %s", VARLEN_PACKED, reason, PACKED_SDPA)
        return packed_sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
            sliding_window=sliding_window, **kwargs,
        )  # fmt: skip
    window = sliding_window if sliding_window is not None and max_q > sliding_window else None
    # transformers hands [batch, heads, tokens, dim] (a transposed view of [batch, tokens, heads, dim]); the kernel
    # takes [tokens, heads, dim] and gives back the layout transformers expects, [batch, tokens, heads, dim].
    output = _run_varlen(
        query[0].transpose(0, 1), key[0].transpose(0, 1), value[0].transpose(0, 1),
        cu_seq_q, cu_seq_k, max_q, max_k, scaling, window,
    )  # fmt: skip
    return output.unsqueeze(0), None


AttentionInterface.register(VARLEN_PACKED, varlen_packed_attention_forward)
AttentionMaskInterface.register(VARLEN_PACKED, packed_sdpa_mask)
