"""The synthetic task mix of `weighting_effect.py`: long-input / short-output and short-input / long-output tasks.

Every sample is a `{"task", "messages", "answer"}` record made in code (nothing downloaded). With the byte-level tokenizer
of `longalign_hf.tiny`, one character is one token, so the sizes below are token counts (plus a few template tokens).

Long input, short output (the answer is one letter, then the end-of-turn token: 2 target tokens):
    majority  a text of random letters from a-j, one of them drawn twice as often as each other; "which letter is the
              most frequent?" The answer is the letter with the most occurrences (texts with a tie are drawn again).
    absent    a text of random letters using all of a-j but one; "which letter is missing?"
Short input, long output (answers of `answer_tokens` tokens, plus the end-of-turn token):
    sort      "Sort these letters: ..." (random lowercase letters); the answer is the letters in alphabetical order.
    count     "Count from 017 to 112": the answer is "017 018 ... 112" (zero-padded 3-digit numbers, 4 tokens each).
Used for calibration only (not in the default mix; the tiny model did not learn them within the budget):
    lookup    a context of "key: value" lines (3-letter keys, all different; 4-digit values), then "What is the value of
              KEY?" for one of its keys; the answer is that key's value.
    needle    the same kind of context with one extra line "secret: X" (X an uppercase letter) at a random depth, then
              "what is the secret?"; the answer is X.
    reverse   "Reverse these letters: ..."; the answer is the letters in reverse order.
"""

from __future__ import annotations

import itertools
import random
import string
from collections import Counter
from dataclasses import dataclass

TASKS = ("majority", "absent", "sort", "count")
CALIBRATION_TASKS = ("lookup", "needle", "reverse")
LONG_INPUT_TASKS = ("majority", "absent", "lookup", "needle")
_KEYS = ["".join(letters) for letters in itertools.product(string.ascii_lowercase, repeat=3)]
_LINE_CHARS = len("abc: 1234\n")
_NUMBER_TOKENS = len("017 ")
# Ten letters, not 26: each letter is then a tenth of the text, a signal the tiny model picks up within the budget.
_LONG_ALPHABET = string.ascii_lowercase[:10]


@dataclass(frozen=True)
class MixSizes:
    """Sizes of the task mix, in tokens of the byte-level tokenizer (one per character).

    Args:
        context_tokens (`tuple[int, int]`): range of the input length of the long-input tasks (uniform).
        answer_tokens (`tuple[int, int]`): range of the answer length of the short-input tasks (uniform).
        train_per_task (`int`): training samples of each task.
        heldout_per_task (`int`): held-out samples of each task.
    """

    context_tokens: tuple[int, int] = (512, 1536)
    answer_tokens: tuple[int, int] = (64, 256)
    train_per_task: int = 256
    heldout_per_task: int = 32


def _letters(rng: random.Random, alphabet: str, count: int, weights: list[int] | None = None) -> str:
    return "".join(rng.choices(alphabet, weights, k=count))


def _long_input(task: str, rng: random.Random, length: int) -> tuple[str, str]:
    alphabet = _LONG_ALPHABET
    if task == "majority":
        weights = [1] * len(alphabet)
        weights[rng.randrange(len(alphabet))] = 2
        while True:
            text = _letters(rng, alphabet, length, weights)
            (answer, first), (_, second) = Counter(text).most_common(2)
            if first > second:
                return f"{text}\nwhich letter is the most frequent?", answer
    if task == "absent":
        answer = rng.choice(alphabet)
        present = alphabet.replace(answer, "")
        while True:
            text = _letters(rng, present, length)
            if len(set(text)) == len(present):
                return f"{text}\nwhich letter is missing?", answer
    lines = [(key, f"{rng.randint(0, 9999):04d}") for key in rng.sample(_KEYS, max(2, length // _LINE_CHARS))]
    if task == "lookup":
        key, answer = rng.choice(lines)
        question = f"What is the value of {key}?"
    else:
        answer = rng.choice(string.ascii_uppercase)
        lines.insert(rng.randint(0, len(lines)), ("secret", answer))
        question = "what is the secret?"
    return "".join(f"{key}: {value}\n" for key, value in lines) + f"\n{question}", answer


def _short_input(task: str, rng: random.Random, answer_tokens: int) -> tuple[str, str]:
    if task == "count":
        numbers = max(1, (answer_tokens + 1) // _NUMBER_TOKENS)
        start = rng.randint(0, 1000 - numbers)
        answer = " ".join(f"{n:03d}" for n in range(start, start + numbers))
        return f"Count from {start:03d} to {start + numbers - 1:03d}", answer
    letters = _letters(rng, string.ascii_lowercase, answer_tokens)
    if task == "sort":
        return f"Sort these letters: {letters}", "".join(sorted(letters))
    return f"Reverse these letters: {letters}", letters[::-1]


def make_sample(task: str, rng: random.Random, sizes: MixSizes) -> dict:
    """One sample of `task`, drawn with `rng`: `{"task", "messages": [user, assistant], "answer"}`."""
    if task in LONG_INPUT_TASKS:
        prompt, answer = _long_input(task, rng, rng.randint(*sizes.context_tokens))
    elif task in TASKS + CALIBRATION_TASKS:
        prompt, answer = _short_input(task, rng, rng.randint(*sizes.answer_tokens))
    else:
        raise ValueError(f"unknown task {task!r}; choose from {', '.join(TASKS + CALIBRATION_TASKS)}")
    messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
    return {"task": task, "messages": messages, "answer": answer}


def pretraining_texts(count: int, sizes: MixSizes, seed: int) -> list[str]:
    """Unlabelled long texts for the base model: letters a-j with letter probabilities drawn per text (Dirichlet(1)).

    Predicting the next letter of such a text pays for estimating the letter frequencies seen so far, which is what the
    long-input tasks ask about; the texts carry no question and no answer.
    """
    rng = random.Random(seed)
    texts = []
    for _ in range(count):
        weights = [rng.expovariate(1.0) for _ in _LONG_ALPHABET]  # normalised, i.i.d. exponentials are Dirichlet(1)
        texts.append(_letters(rng, _LONG_ALPHABET, rng.randint(*sizes.context_tokens), weights))
    return texts


def make_mix(sizes: MixSizes, seed: int = 0, tasks: tuple[str, ...] = TASKS) -> tuple[list[dict], list[dict]]:
    """The training and held-out samples of `tasks`: shuffled training samples, held-out samples by task.

    Both come from one `random.Random(seed)`; a held-out sample whose prompt is also a training prompt is drawn again,
    so the split never overlaps.
    """
    rng = random.Random(seed)
    train = [make_sample(task, rng, sizes) for task in tasks for _ in range(sizes.train_per_task)]
    seen = {record["messages"][0]["content"] for record in train}
    heldout = []
    for task in tasks:
        for _ in range(sizes.heldout_per_task):
            record = make_sample(task, rng, sizes)
            while record["messages"][0]["content"] in seen:
                record = make_sample(task, rng, sizes)
            seen.add(record["messages"][0]["content"])
            heldout.append(record)
    rng.shuffle(train)
    return train, heldout
