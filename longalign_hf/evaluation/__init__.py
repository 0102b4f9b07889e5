"""Evaluations of long-context models: answer generation with middle truncation, LongBench-Chat."""

from longalign_hf.evaluation.generation import (
    generate_chat_answers,
    middle_truncate,
    request_chat_answers,
    truncate_prompts,
)

__all__ = ["generate_chat_answers", "middle_truncate", "request_chat_answers", "truncate_prompts"]
