"""Conversations (`messages` lists) -> `input_ids` / `labels` through the tokenizer's chat template.

Only the content of assistant turns and the end-of-turn marker that closes each one are targets; every other token
(BOS, role headers, system blocks a template inserts on its own, the newline after an end-of-turn) gets the label
-100, also when the conversation opens with a reply. An empty assistant turn (nothing but whitespace) has no target
at all, as in the paper's code. Works with any chat template that renders a conversation's prefixes as prefixes of the
whole text and a reply's content as given (trimming aside) after a header that does not depend on it (Llama 3 / 3.1,
Qwen2.5, Gemma, Mistral, GLM and our tiny template do), so no `{% generation %}` markers are needed: each reply ends
where the conversation rendered up to it ends, and starts where the template puts a probe text rendered in its
place. Other templates, and conversations a template refuses, raise `ConversationError` rather than train on template
tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from jinja2 import TemplateError, TemplateSyntaxError

IGNORE_INDEX = -100
VALID_ROLES = ("system", "user", "assistant")
OVERFLOW_POLICIES = ("truncate", "drop")
# What to do with a row that holds no usable conversation: stop with its reason, or drop and count it.
BAD_ROW_POLICIES = ("error", "skip")
# Rendered in place of a reply to find where the template puts the reply's content. Letters only, so a template that
# trims or escapes the content renders it unchanged.
_CONTENT_PROBE = "LongAlignReplyStartsHere"


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


def _render(tokenizer, messages: list[dict[str, str]]) -> str:
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False)
    except TemplateSyntaxError:  # a broken template, not a bad row
        raise
    except TemplateError as error:
        # The template's own `raise_exception` (e.g. Gemma: "System role not supported"): a row the model cannot take.
        raise ConversationError(f"the chat template refuses this conversation: {error}") from error


def _is_empty_reply(turn: dict[str, str]) -> bool:
    """Whether `turn` is an assistant turn with nothing but whitespace: it is masked (no target), as in the paper."""
    return turn["role"] == "assistant" and not turn["content"].strip()


def assistant_char_spans(tokenizer, messages: list[dict[str, str]]) -> tuple[str, list[tuple[int, int]]]:
    """Render `messages` and return the text plus the character span of every non-empty assistant reply.

    A span runs from the first character of the reply's content to its end-of-turn marker, without trailing whitespace
    (so the newline after an end-of-turn token is not a target). The start is found by rendering the conversation
    with a probe text in place of the reply: whatever the template puts before the probe (BOS, role header, a system
    block it inserts itself) is template text, and is not a target. Empty replies get no span. Raises
    `ConversationError` where the template rewrites earlier turns, changes the reply's content, or puts text before
    it that depends on it (the rendered text then differs from the probe's), since the reply cannot be located then.
    """
    text = _render(tokenizer, messages)
    spans = []
    for index, turn in enumerate(messages):
        if turn["role"] != "assistant" or _is_empty_reply(turn):
            continue
        through = _render(tokenizer, messages[: index + 1])
        if not text.startswith(through):
            raise ConversationError(
                f"the chat template does not render turn {index} as a prefix of the conversation, so assistant "
                "tokens cannot be located; use a template without history rewriting (set `chat_template_path`)"
            )
        probe = _render(tokenizer, [*messages[:index], {"role": "assistant", "content": _CONTENT_PROBE}])
        start = probe.find(_CONTENT_PROBE)
        if start < 0 or probe.count(_CONTENT_PROBE) != 1 or not _renders_content_at(text, start, probe, turn):
            raise ConversationError(
                f"cannot tell where the content of assistant turn {index} starts: the chat template changes it, or "
                "puts text before it that depends on it, so template tokens could become targets; use a template "
                "that renders `content` as given after a fixed header (set `chat_template_path`)"
            )
        spans.append((start, len(through.rstrip())))
    return text, spans


def _renders_content_at(text: str, start: int, probe: str, turn: dict[str, str]) -> bool:
    """Whether `text` has the probe's header up to `start` and the reply's content from there (whitespace aside)."""
    if not text.startswith(probe[:start]):
        return False
    while start < len(text) and text[start].isspace():  # templates may trim the content
        start += 1
    return text.startswith(turn["content"].strip(), start)


def tokenize_conversation(
    messages: Any,
    tokenizer,
    max_length: int | None = None,
    overflow: str = "truncate",
) -> dict[str, list[int] | int]:
    """Tokenize one conversation into `input_ids` and `labels` (-100 on every non-assistant token).

    Args:
        messages: list of `{"role", "content"}` turns (roles: system, user, assistant).
        tokenizer: a fast tokenizer with a chat template.
        max_length: longest allowed sample in tokens; `None` keeps everything.
        overflow: `"truncate"` cuts longer samples from the right (the paper's choice); `"drop"` raises
            `ConversationError` so the caller counts the sample as dropped.

    Returns:
        `{"input_ids", "labels", "truncated", "empty_turns"}`; `truncated` is 1 when tokens were cut, `empty_turns`
        counts the assistant turns masked because they are empty.

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
    for position, (start, end) in enumerate(encoding["offset_mapping"]):
        while span_index < len(spans) and start >= spans[span_index][1]:
            span_index += 1
        # A token that overlaps a reply is a target, also one that starts in the template text before it: " Hello"
        # after "[/INST]" in a template that renders " " + content is what the model must generate.
        if span_index < len(spans) and end > spans[span_index][0]:
            labels[position] = input_ids[position]
    truncated = 0
    if max_length is not None and len(input_ids) > max_length:
        if overflow == "drop":
            raise ConversationError(f"{len(input_ids)} tokens is over max_length={max_length} (overflow='drop')")
        input_ids, labels, truncated = input_ids[:max_length], labels[:max_length], 1
    empty_turns = sum(map(_is_empty_reply, messages))
    return {"input_ids": input_ids, "labels": labels, "truncated": truncated, "empty_turns": empty_turns}
