"""Evaluations of long-context models: answer generation with middle truncation, LongBench-Chat, needle probes.

Names are imported on first use, so importing this package (and the `longalign` command's help) stays light.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Public name -> the module that defines it.
_PUBLIC = {
    "build_needle_prompt": "longalign_hf.evaluation.needle.probes",
    "chat_text": "longalign_hf.evaluation.generation",
    "generate_chat_answers": "longalign_hf.evaluation.generation",
    "match_fraction": "longalign_hf.evaluation.needle.probes",
    "middle_truncate": "longalign_hf.evaluation.generation",
    "plot_heatmap": "longalign_hf.evaluation.needle.heatmap",
    "request_chat_answers": "longalign_hf.evaluation.generation",
    "run_needle": "longalign_hf.evaluation.needle.runner",
    "truncate_prompts": "longalign_hf.evaluation.generation",
}

__all__ = [
    "build_needle_prompt",
    "chat_text",
    "generate_chat_answers",
    "match_fraction",
    "middle_truncate",
    "plot_heatmap",
    "request_chat_answers",
    "run_needle",
    "truncate_prompts",
]

if TYPE_CHECKING:
    from longalign_hf.evaluation.generation import (
        chat_text,
        generate_chat_answers,
        middle_truncate,
        request_chat_answers,
        truncate_prompts,
    )
    from longalign_hf.evaluation.needle.heatmap import plot_heatmap
    from longalign_hf.evaluation.needle.probes import build_needle_prompt, match_fraction
    from longalign_hf.evaluation.needle.runner import run_needle


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_PUBLIC})
