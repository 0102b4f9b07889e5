"""Conversations (`messages` lists) -> `input_ids` / `labels` through the tokenizer's chat template.

Only assistant tokens (and the end-of-turn token that closes each assistant turn) are targets; every other token gets
the label -100. Works with any chat template that renders a conversation's prefixes as prefixes of the whole text
(Llama 3, Qwen2.5, Mistral, GLM and our tiny template do): the assistant spans are found by rendering the prefixes, so
no `{% generation %}` markers are needed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

IGNORE_INDEX = -100
VALID_ROLES = ("system", "user", "assistant")
OVERFLOW_POLICIES = ("truncate", "drop")


class ConversationError(ValueError):
    """A conversation that cannot be trained on; the message says why."""


def validate_messages(messages: Any) -> list[dict[str, str]]:
    """Check that `messages` is a list of `{role, content}` turns with at least one assistant turn."""
    if not isinstance(messages, Sequence) or isinstance(messages, str) or len(messages) == 0:
        raise ConversationError(
            f"`messages` must be a non-empty list of {{role, content}} turns, got {messages!r:.80}"
        )
    for turn_index, turn in enumerate(messages):
        if not isinstance(turn, dict) or "role" not in turn or "content" not in turn:
            raise ConversationError(f"turn {turn_index} must be a dict with `role` and `content`, got {turn!r:.80}")
        if turn["role"] not in VALID_ROLES:
            raise ConversationError(
                f"turn {turn_index} has role {turn['role']!r}; expected one of {', '.join(VALID_ROLES)} "
                "(normalize ShareGPT `from`/`value` turns with `longalign data build sft` first)"
            )
        if not isinstance(turn["content"], str):
            raise ConversationError(
                f"turn {turn_index} content must be a string, got {type(turn['content']).__name__}"
            )
    if not any(turn["role"] == "assistant" for turn in messages):
        raise ConversationError("the conversation has no assistant turn, so it has nothing to learn from")
    return [{"role": turn["role"], "content": turn["content"]} for turn in messages]


def _render(tokenizer, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def assistant_char_spans(tokenizer, messages: list[dict[str, str]]) -> tuple[str, list[tuple[int, int]]]:
    """Render `messages` and return the text plus the character spans of every assistant reply (with its end token).

    A span runs from the end of the generation prompt before the reply to the end of the rendered reply, without
    trailing whitespace (so the newline after an end-of-turn token is not a target).
    """
    text = _render(tokenizer, messages, add_generation_prompt=False)
    spans = []
    for index, turn in enumerate(messages):
        if turn["role"] != "assistant":
            continue
        before = _render(tokenizer, messages[:index], add_generation_prompt=True) if index else ""
        through = _render(tokenizer, messages[: index + 1], add_generation_prompt=False)
        if not (text.startswith(before) and text.startswith(through) and len(through) > len(before)):
            raise ConversationError(
                f"the chat template does not render turn {index} as a prefix of the conversation, so assistant "
                "tokens cannot be located; use a template without history rewriting (set `chat_template_path`)"
            )
        end = len(through.rstrip())
        spans.append((len(before), end))
    return text, spans


def tokenize_conversation(
    messages: Any,
    tokenizer,
    max_length: int | None = None,
    overflow: str = "truncate",
) -> dict[str, list[int]]:
    """Tokenize one conversation into `input_ids` and `labels` (-100 on every non-assistant token).

    Args:
        messages: list of `{"role", "content"}` turns (roles: system, user, assistant).
        tokenizer: a fast tokenizer with a chat template.
        max_length: longest allowed sample in tokens; `None` keeps everything.
        overflow: `"truncate"` cuts longer samples from the right (the paper's choice); `"drop"` raises
            `ConversationError` so the caller counts the sample as dropped.

    Returns:
        `{"input_ids", "labels", "truncated"}`; `truncated` is 1 when tokens were cut.

    Example:
        >>> from longalign_hf.tiny import build_byte_tokenizer
        >>> tok = build_byte_tokenizer()
        >>> sample = tokenize_conversation([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}], tok)
        >>> tok.decode([t for t in sample["labels"] if t != -100])
        'yo<|end|>'
    """
    if overflow not in OVERFLOW_POLICIES:
        raise ValueError(f"overflow must be one of {OVERFLOW_POLICIES}, got {overflow!r}")
    messages = validate_messages(messages)
    text, spans = assistant_char_spans(tokenizer, messages)
    try:
        encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    except NotImplementedError as error:
        raise TypeError("assistant-only targets need a fast tokenizer (one that returns offset mappings)") from error
    input_ids = list(encoding["input_ids"])
    labels = [IGNORE_INDEX] * len(input_ids)
    span_index = 0
    for position, (start, _end) in enumerate(encoding["offset_mapping"]):
        while span_index < len(spans) and start >= spans[span_index][1]:
            span_index += 1
        if span_index < len(spans) and spans[span_index][0] <= start < spans[span_index][1]:
            labels[position] = input_ids[position]
    truncated = 0
    if max_length is not None and len(input_ids) > max_length:
        if overflow == "drop":
            raise ConversationError(f"{len(input_ids)} tokens is over max_length={max_length} (overflow='drop')")
        input_ids, labels, truncated = input_ids[:max_length], labels[:max_length], 1
    return {"input_ids": input_ids, "labels": labels, "truncated": truncated}
