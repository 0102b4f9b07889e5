"""Chat rows -> clean `messages`: ShareGPT normalization and the paper's cleaning of assistant turns.

`normalize_conversation` maps ShareGPT `{from, value}` turns (and `{role, content}` ones) to `{role, content}`;
`clean_conversation` removes zero-width characters from assistant turns, and empty assistant turns with the questions
they answered (see `longalign_hf.data.sft.build`, step by step). Pure functions over lists of dicts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from longalign_hf.data.chat import VALID_ROLES

SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bard": "assistant",
    "bing": "assistant",
    "system": "system",
}
ZERO_WIDTH_CHARACTERS = "\u200b\u200c\u200d\ufeff"

_ZERO_WIDTH_TABLE = str.maketrans("", "", ZERO_WIDTH_CHARACTERS)


def _normalize_turn(turn: Any, position: int) -> dict[str, str]:
    if not isinstance(turn, dict):
        raise ValueError(f"turn {position} is a {type(turn).__name__}, expected an object with role and content")
    if "from" in turn or "value" in turn:
        speaker = turn.get("from")
        role = SHAREGPT_ROLES.get(str(speaker).strip().lower())
        if role is None:
            raise ValueError(
                f"turn {position} has `from` {speaker!r}; expected one of {', '.join(SHAREGPT_ROLES)} (ShareGPT)"
            )
        content = turn.get("value")
    else:
        role, content = turn.get("role"), turn.get("content")
        if role not in VALID_ROLES:
            raise ValueError(f"turn {position} has `role` {role!r}; expected one of {', '.join(VALID_ROLES)}")
    if content is None:
        content = ""
    if not isinstance(content, str):
        raise ValueError(f"turn {position} has a {type(content).__name__} content, expected a string")
    return {"role": role, "content": content}


def normalize_conversation(turns: Any) -> list[dict[str, str]]:
    """Turn a `messages` list or a ShareGPT `conversations` list into `{role, content}` turns.

    Each turn may be `{role, content}` or ShareGPT's `{from, value}` (roles mapped with `SHAREGPT_ROLES`); raises a
    `ValueError` naming the turn for anything else.

    Example:
        >>> normalize_conversation([{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"}])
        [{'role': 'user', 'content': 'Hi'}, {'role': 'assistant', 'content': 'Hello!'}]
    """
    if not isinstance(turns, list):
        raise ValueError(f"expected a list of turns, got {type(turns).__name__} {turns!r:.80}")
    return [_normalize_turn(turn, position) for position, turn in enumerate(turns)]


def clean_conversation(messages: Sequence[dict[str, str]]) -> tuple[list[dict[str, str]], int, int]:
    """Remove zero-width characters from assistant turns, and empty assistant turns with the questions they answered.

    Returns the cleaned turns, the number of zero-width characters removed and the number of empty assistant turns
    removed. User turns directly before a removed reply, and at the end of the conversation, are removed too (see the
    module docstring); the result may have no assistant turn left, which the caller drops.
    """
    cleaned: list[dict[str, str]] = []
    removed_characters = removed_turns = 0
    for turn in messages:
        if turn["role"] != "assistant":
            cleaned.append(dict(turn))
            continue
        content = turn["content"].translate(_ZERO_WIDTH_TABLE)
        removed_characters += len(turn["content"]) - len(content)
        if content.strip():
            cleaned.append({"role": "assistant", "content": content})
            continue
        removed_turns += 1
        while cleaned and cleaned[-1]["role"] == "user":
            cleaned.pop()
    while cleaned and cleaned[-1]["role"] == "user":
        cleaned.pop()
    return cleaned, removed_characters, removed_turns
