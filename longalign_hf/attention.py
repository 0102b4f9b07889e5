"""Pick the attention backend at run time and say why."""

from __future__ import annotations

import importlib.util

import torch


def flash_attn_available() -> bool:
    """Whether the `flash_attn` package is importable and a CUDA device is present."""
    return importlib.util.find_spec("flash_attn") is not None and torch.cuda.is_available()


def choose_attention(requested: str | None = None) -> tuple[str, str]:
    """Return `(attn_implementation, reason)`: the user's choice, else FlashAttention-2 where it can run, else sdpa."""
    if requested:
        if requested == "flash_attention_2" and not flash_attn_available():
            raise ValueError(
                "attn_implementation='flash_attention_2' needs the flash-attn package and a CUDA GPU "
                "(`pip install flash-attn --no-build-isolation`); use 'sdpa' otherwise"
            )
        return requested, "requested by the user"
    if flash_attn_available():
        return "flash_attention_2", "flash-attn is installed and a CUDA GPU is present"
    missing = "flash-attn is not installed" if importlib.util.find_spec("flash_attn") is None else "no CUDA GPU"
    return "sdpa", f"{missing}, so FlashAttention-2 cannot run; sdpa isolates packed samples through position ids"
