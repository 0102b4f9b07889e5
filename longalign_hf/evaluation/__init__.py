"""Evaluations of long-context models: answer generation with middle truncation, LongBench-Chat, needle probes."""

from longalign_hf.evaluation.generation import (
    chat_text,
    generate_chat_answers,
    middle_truncate,
    request_chat_answers,
    truncate_prompts,
)
from longalign_hf.evaluation.needle.heatmap import plot_heatmap
from longalign_hf.evaluation.needle.runner import build_needle_prompt, match_fraction, run_needle

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
