"""Offline chat data with the shape of the LongAlign mix, generated from the Python documentation.

The text comes from `pydoc_data.topics`, which ships with CPython, so nothing is downloaded. The mix is long-tailed like
the paper's: many short chat samples (questions about one documentation topic) and fewer long-context samples
(retrieval of a fact hidden at a random depth of a long haystack of documentation, among distractor facts if asked),
spread evenly up to a maximum length.
"""

from __future__ import annotations

import random
import re

_NAMES = ["amber", "basil", "cedar", "delta", "ember", "fjord", "garnet", "harbor", "indigo", "juniper", "kestrel"]


def documentation_paragraphs() -> list[str]:
    """Paragraphs of the Python documentation topics that ship with CPython (`pydoc_data.topics`)."""
    from pydoc_data.topics import topics

    paragraphs = []
    for name in sorted(topics):
        for block in re.split(r"\n\s*\n", topics[name]):
            block = " ".join(block.split())
            if len(block) > 40 and not set(block) <= set("*=-~^ "):
                paragraphs.append(block)
    return paragraphs


def _short_sample(rng: random.Random, paragraphs: list[str]) -> dict:
    paragraph = rng.choice(paragraphs)
    sentences = re.split(r"(?<=[.!?])\s+", paragraph)
    answer = " ".join(sentences[: rng.randint(1, 3)])[:600]
    question = rng.choice(
        [
            "Explain this part of the Python documentation in a sentence or two: {}",
            "What does the Python reference say right after this? {}",
            "Summarize: {}",
        ]
    ).format(paragraph[: rng.randint(40, 200)])
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


def _fact(rng: random.Random) -> tuple[str, int]:
    return f"{rng.choice(_NAMES)}-{rng.randint(100, 999)}", rng.randint(1_000_000, 9_999_999)


def fact_retrieval_sample(
    rng: random.Random, paragraphs: list[str], target_chars: int, num_facts: int = 1, short_answer: bool = False
) -> dict:
    """A retrieval chat of about `target_chars` characters: consecutive documentation paragraphs with `num_facts`
    facts "The secret code of NAME is CODE." (different names, 7-digit codes) at random sentence boundaries, then a
    question about the first fact's NAME. The answer is that fact's sentence, or with `short_answer` the code alone.
    """
    facts = [_fact(rng)]
    while len(facts) < num_facts:
        name, code = _fact(rng)
        if name not in dict(facts):
            facts.append((name, code))
    needles = [f"The secret code of {name} is {code}." for name, code in facts]
    name, code = facts[0]
    instruction = "Answer with the number only." if short_answer else "Answer with one sentence."
    question = f"\n\nWhat is the secret code of {name}? {instruction}"
    haystack, size = [], 0
    start = rng.randrange(len(paragraphs))
    budget = max(target_chars - sum(map(len, needles)) - len(question) - 80, 0)
    while size < budget:
        paragraph = paragraphs[(start + len(haystack)) % len(paragraphs)]
        haystack.append(paragraph)
        size += len(paragraph) + 1
    text = " ".join(haystack)[:budget]
    depths = []
    for _ in needles:
        cut = text.rfind(". ", 0, rng.randint(0, max(len(text), 1)))
        depths.append(cut + 2 if cut >= 0 else 0)
    # Inserted from the deepest first, so the earlier depths still point into the unchanged text.
    document = text
    for depth, needle in sorted(zip(depths, needles), reverse=True):
        document = f"{document[:depth]}{needle} {document[depth:]}"
    return {
        "messages": [
            {"role": "system", "content": "You answer questions about long documents."},
            {"role": "user", "content": document + question},
            {"role": "assistant", "content": str(code) if short_answer else needles[0]},
        ]
    }


def long_tailed_chat_data(
    num_short: int = 240,
    num_long: int = 40,
    max_chars: int = 4000,
    min_long_chars: int = 1000,
    seed: int = 0,
    num_facts: int = 1,
) -> list[dict]:
    """A shuffled list of `{"messages": [...]}` records: `num_short` short chats and `num_long` long retrievals.

    Long samples have a length (in characters, which the byte tokenizer turns into as many tokens; a real tokenizer
    makes about 4.4 characters of this text one token) drawn uniformly from `[min_long_chars, max_chars]`; a little
    chat-template overhead comes on top. Each holds `num_facts` facts, of which it asks one (`fact_retrieval_sample`):
    more than one makes the retrieval a choice among distractors. Records of another `seed` are a held-out set.
    """
    rng = random.Random(seed)
    paragraphs = documentation_paragraphs()
    records = [_short_sample(rng, paragraphs) for _ in range(num_short)]
    records += [
        fact_retrieval_sample(rng, paragraphs, rng.randint(min_long_chars, max_chars), num_facts)
        for _ in range(num_long)
    ]
    rng.shuffle(records)
    return records
