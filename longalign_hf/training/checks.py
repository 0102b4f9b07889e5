"""What `LongAlignSFTTrainer` refuses, and why: parallelism that splits samples across ranks, attention that lets packed
samples see each other or computes something other than the model's own attention, and `SFTTrainer` arguments whose
effect its loss or data path would drop."""

from __future__ import annotations

import logging

import torch

from longalign_hf.training.attention import PACKING_HUB_KERNELS, hub_kernel_repo, varlen_unavailable
from longalign_hf.training.packed_attention import PACKED_SDPA
from longalign_hf.training.sequence_parallel import isolating_core_attention, log_layout, sequence_parallel_size
from longalign_hf.training.varlen_attention import VARLEN_PACKED

logger = logging.getLogger(__name__)

# Attention backends that keep packed samples apart: eager/sdpa through the block-diagonal mask that transformers
# derives from restarting position ids; sdpa_packed, varlen_packed, FlashAttention and its Hub kernels (any revision)
# through `cu_seq_lens`. Each also keeps a layer's sliding window (Mistral, Qwen2 with `use_sliding_window`, Gemma-2/3
# local layers; transformers 5.24 hands the attention function `sliding_window=w` per layer, and a token sees itself
# and the w - 1 tokens before it): eager/sdpa in that mask (`create_sliding_window_causal_mask`), sdpa_packed per
# sample, varlen_packed as the kernel's `window_size=(w - 1, 0)`, FlashAttention and the Hub kernels that have
# `flash_attn_varlen_func` through transformers' FlashAttention wrapper (`_process_flash_attention_kwargs`: causal with
# `window_size=(w - 1, w - 1)` when the row is longer than w), which also passes `softcap` (or raises without it).
# sdpa_packed and varlen_packed do not compute softcapping or attention sinks: `check_packed_attention` refuses those.
ISOLATING_ATTENTION = (
    "eager", "sdpa", PACKED_SDPA, VARLEN_PACKED, "flash_attention_2", "flash_attention_3", *PACKING_HUB_KERNELS,
)  # fmt: skip


def check_parallelism(config) -> None:
    """Refuse a parallelism config (from the training arguments or the launcher) that LongAlign cannot run exactly:
    context and tensor parallelism. Ulysses sequence parallelism (`sp_size`, DeepSpeed) is supported."""
    if config is None:
        return
    if config.cp_size > 1:
        raise ValueError(
            "context parallelism (`cp_size > 1`, FSDP2 ring attention) cannot keep packed samples apart: it replaces "
            "the per-sample attention by plain causal attention over the whole row, so samples would attend to each "
            "other. For rows longer than one device holds, use DeepSpeed Ulysses sequence parallelism instead "
            "(`sp_size: N` with `sp_backend: deepspeed`, e.g. recipes/accelerate/sp4_zero3.yaml), and set `cp_size: 1`."
        )
    if config.tp_size > 1:
        raise ValueError(
            "tensor parallelism (`tp_size > 1`) is not supported: LongAlign loss weighting has not been proven exact "
            "under it. Set `tp_size: 1`; for long rows use sequence parallelism (`sp_size`, DeepSpeed Ulysses)."
        )


def packing_attention(backend: str) -> str:
    """The attention backend a packed row runs with instead of `backend`: itself where it keeps packed samples apart,
    a per-sample backend for plain `sdpa`; raises for a backend that would let samples attend to each other."""
    if backend == "sdpa":
        # Attention per sample instead of a block-diagonal mask over the whole pack: PyTorch's varlen kernel where
        # it runs, SDPA per sample elsewhere.
        if varlen_unavailable() is None:
            target, how = VARLEN_PACKED, "PyTorch's FlashAttention varlen kernel over cu_seq_lens"
        else:
            target, how = PACKED_SDPA, "SDPA per sample, no pack-wide mask"
        logger.info("Packed rows: attention %r -> %r (%s)", backend, target, how)
        return target
    if backend in ISOLATING_ATTENTION or hub_kernel_repo(backend) in ISOLATING_ATTENTION:
        return backend
    if hub_kernel_repo(backend) is not None:
        raise ValueError(
            f"Hub kernel {backend!r} cannot be trusted to keep packed samples apart: transformers cuts packed rows "
            "at `cu_seq_lens` only for the kernels it runs through its FlashAttention wrapper, the FlashAttention "
            f"2/3 builds {', '.join(PACKING_HUB_KERNELS)} (`@revision` allowed). Use one of those, "
            f"'flash_attention_2' or {VARLEN_PACKED!r} (`--attn_implementation`), or `--batching sort`."
        )
    raise ValueError(
        f"attention backend {backend!r} cannot keep packed samples apart, so they would attend to each other. "
        f"Use one of {', '.join(ISOLATING_ATTENTION)} (`--attn_implementation`), or `--batching sort`."
    )


# `layer_types` (transformers' per-layer kinds) whose attention the packing backends cut per sample; "sparse" and
# "dense" name MLP kinds, which never mix tokens.
_PACKABLE_LAYER_TYPES = frozenset({"full_attention", "sliding_attention", "sparse", "dense"})
# Recurrent models without a convolution or `layer_types` to recognize them by.
_RECURRENT_MODEL_TYPES = frozenset({"rwkv", "xlstm"})


def _cross_sample_mixing(model) -> str | None:
    """What in the model mixes tokens across a packed row whatever the attention backend, or `None`."""
    config = model.config.get_text_config()
    other = sorted(set(getattr(config, "layer_types", None) or ()) - _PACKABLE_LAYER_TYPES)
    if other:
        return (
            f"layers of type {', '.join(other)} (`layer_types`): a state or a mask that the packing backends do not "
            "cut at sample bounds"
        )
    if config.model_type in _RECURRENT_MODEL_TYPES:
        return f"recurrent layers ({config.model_type}) whose state runs on across the row"
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model
    for name, module in decoder.named_modules():
        # Mamba, Gated DeltaNet, short-convolution and RG-LRU layers run a causal convolution along the sequence.
        if isinstance(module, torch.nn.Conv1d):
            return f"a convolution along the sequence ({name}: {type(module).__name__}), as recurrent layers have"
    return None


def check_packable_model(model) -> None:
    """Refuse packing for a model in which packed samples would see each other whatever the attention backend: layers
    that carry a state or a convolution along the row (Mamba, linear attention, short convolutions) and attention kinds
    the packing backends do not compute per sample (chunked, indexed or compressed attention)."""
    mixing = _cross_sample_mixing(model)
    if mixing is not None:
        raise ValueError(
            f"{type(model).__name__} has {mixing}, so packed samples would leak into each other. Use "
            "`batching='sort'` (`--batching sort`): sorted batches of padded samples, one sample per row."
        )


def _packed_backend_gap(model) -> str | None:
    """What the model's attention computes that sdpa_packed / varlen_packed would not, or `None`."""
    for module in model.modules():
        softcap = getattr(module, "attn_logit_softcapping", None)
        if softcap is not None:
            return f"attention logit softcapping (attn_logit_softcapping={softcap})"
        if isinstance(getattr(module, "sinks", None), torch.Tensor):
            return "attention sinks (the attention modules' `sinks`)"
        if getattr(module, "sliding_window", None) is not None and getattr(module, "is_causal", True) is False:
            return "sliding-window attention that looks both ways (use_bidirectional_attention)"
    return None


def check_packed_attention(model, backend: str) -> None:
    """Refuse, before training, a model whose attention computes something `backend` (the backend packed rows run
    with, from `packing_attention`) would drop: softcapping or attention sinks in sdpa_packed / varlen_packed. Sliding
    windows are kept by every backend `packing_attention` accepts. (The backends also refuse such arguments at the first
    forward, for models this check cannot recognize.)"""
    if backend not in (PACKED_SDPA, VARLEN_PACKED):
        return
    gap = _packed_backend_gap(model)
    if gap is not None:
        raise ValueError(
            f"{type(model).__name__} uses {gap}, which {backend} does not compute, so it would train a different "
            "model than its own attention: use `--attn_implementation eager` (it computes it and keeps packed samples "
            "apart through the position ids), or a FlashAttention backend that supports it."
        )


def set_packing_attention(model, parallelism_config, num_processes: int, max_length: int) -> None:
    """Switch `model` to the attention its packed rows run with (`packing_attention`; under Ulysses sequence
    parallelism, the core attention DeepSpeed's wrapper runs over the gathered row), after refusing a model or backend
    that would let packed samples see each other or compute something other than the model's own attention."""
    check_packable_model(model)
    backend = model.config._attn_implementation
    sp_size = sequence_parallel_size(parallelism_config)
    if sp_size > 1:
        # DeepSpeed wraps the attention named in the SP handler, and requires the model to run that one.
        handler = parallelism_config.sp_handler
        target = isolating_core_attention(backend, handler.sp_attn_implementation, packing_attention)
        handler.sp_attn_implementation = target
        log_layout(sp_size, num_processes, max_length, target)
    else:
        target = packing_attention(backend)
    check_packed_attention(model, target)
    if target != backend:
        model.set_attn_implementation(target)


def refuse_unsupported_arguments(kwargs: dict) -> None:
    """Refuse `SFTTrainer` arguments whose effect LongAlign's data path or loss would silently drop."""
    if kwargs.get("formatting_func") is not None:
        raise ValueError(
            "`formatting_func` is not supported: LongAlignSFTTrainer renders `messages` through the chat template "
            "itself (assistant-only targets). Map your rows to `messages` first, or pass tokenized `input_ids` with "
            "`labels`."
        )
    if kwargs.get("compute_loss_func") is not None:
        raise ValueError(
            "`compute_loss_func` is not supported: LongAlignSFTTrainer's loss is the LongAlign-weighted NLL "
            "(`loss_weighting`). Subclass LongAlignSFTTrainer and override `compute_loss` for another objective."
        )
    for name in ("compute_metrics", "preprocess_logits_for_metrics"):
        if kwargs.get(name) is not None:
            raise ValueError(
                f"`{name}` is not supported: the loss comes from chunked log-probabilities, so no logits are built "
                "to pass to it. Evaluation reports the exact `eval_loss`, `eval_entropy` and "
                "`eval_mean_token_accuracy`; for generation metrics use `longalign eval` on the saved model."
            )
