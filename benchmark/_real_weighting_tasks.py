"""The task mix of `weighting_real.py`: long-input / short-output and short-input / long-output tasks over the Python
documentation that ships with CPython (`pydoc_data.topics`), for a real tokenizer. Nothing is downloaded.

Long input, short output (documents of `context_chars` characters, about 4.4 per SmolLM2 token):
    code      three facts "The secret code of NAME is CODE." (7-digit codes) at random sentence boundaries of
              consecutive documentation paragraphs; "What is the secret code of NAME? Answer with the number only."
              for the first; the answer is its code (`longalign_hf.data.synthetic.fact_retrieval_sample`).
    word      the same facts as "The password of the NAME room is WORD." (three different words of a list of 40);
              "What is the password of the NAME room? Answer with the word only."; the answer is the word.
Short input, long output (answers of `answer_chars` characters):
    continue  "Continue this passage of the Python documentation: FIRST SENTENCE"; the answer is the rest of that
              paragraph (a prose one), cut at the first sentence end past `answer_chars`. Held-out paragraphs are
              never training paragraphs.
    count     "Count from A to B, separated by spaces."; the answer is "A A+1 ... B" (a digit is a token: 1/16 of
              `answer_chars` numbers, about as many tokens as `continue`'s answers).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from longalign_hf.data.synthetic import documentation_paragraphs, fact_retrieval_sample

TASKS = ("code", "word", "continue", "count")
LONG_INPUT_TASKS = ("code", "word")
_WORDS = (
    "apple river candle mirror pepper silver garden rocket violin marble thunder pencil orange window castle jacket "
    "dragon coffee meadow anchor bottle cotton island ladder magnet needle parrot saddle tunnel wallet bridge cherry "
    "forest hammer lemon planet rabbit sugar tiger yellow"
).split()
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
# A paragraph of prose: starts with a capital letter, ends a sentence, no table rules or interpreter prompts.
_PROSE = re.compile(r"(?!.*(\+--|>>>|\|))[A-Z].*[.!?]")


@dataclass(frozen=True)
class MixSizes:
    """Sizes of the task mix, in characters (a SmolLM2 token is about 4.4 characters of this text).

    Args:
        context_chars (`tuple[int, int]`): range of the document length of the long-input tasks (uniform).
        answer_chars (`tuple[int, int]`): range of the answer length of the short-input tasks (uniform).
        train_per_task (`int`): training samples of each task.
        heldout_per_task (`int`): held-out samples of each task.
    """

    context_chars: tuple[int, int] = (2200, 4400)
    answer_chars: tuple[int, int] = (500, 1000)
    train_per_task: int = 64
    heldout_per_task: int = 6


def _word_sample(rng: random.Random, paragraphs: list[str], chars: int) -> tuple[str, str]:
    record = fact_retrieval_sample(rng, paragraphs, chars, num_facts=3, short_answer=True)
    prompt = record["messages"][1]["content"]
    asked = re.search(r"What is the secret code of ([\w-]+)\? Answer with the number only\.$", prompt).group(1)
    prompt = prompt.replace(
        f"What is the secret code of {asked}? Answer with the number only.",
        f"What is the password of the {asked} room? Answer with the word only.",
    )
    # Each code fact becomes a room password, with a word of its own.
    facts = re.findall(r"The secret code of ([\w-]+) is (\d{7})\.", prompt)
    words = dict(zip((name for name, _ in facts), rng.sample(_WORDS, len(facts))))
    for name, code in facts:
        prompt = prompt.replace(
            f"The secret code of {name} is {code}.", f"The password of the {name} room is {words[name]}."
        )
    return prompt, words[asked]


def _continue_sample(rng: random.Random, paragraphs: list[str], chars: int) -> tuple[str, str] | None:
    paragraph = rng.choice(paragraphs)
    if not _PROSE.fullmatch(paragraph):
        return None  # a table, a code listing or a fragment: draw another
    sentences = _SENTENCE_END.split(paragraph)
    answer = ""
    for sentence in sentences[1:]:
        if len(answer) >= chars:
            break
        answer = f"{answer} {sentence}".strip()
    if len(answer) < chars // 2:
        return None  # a paragraph too short for this answer length: draw another
    return f"Continue this passage of the Python documentation: {sentences[0]}", answer


def make_sample(task: str, rng: random.Random, sizes: MixSizes, paragraphs: list[str]) -> dict:
    """One sample of `task` drawn with `rng` from `paragraphs`: `{"task", "messages": [user, assistant], "answer"}`."""
    if task == "code":
        record = fact_retrieval_sample(rng, paragraphs, rng.randint(*sizes.context_chars), 3, short_answer=True)
        prompt, answer = record["messages"][1]["content"], record["messages"][2]["content"]
    elif task == "word":
        prompt, answer = _word_sample(rng, paragraphs, rng.randint(*sizes.context_chars))
    elif task == "continue":
        drawn = None
        while drawn is None:
            drawn = _continue_sample(rng, paragraphs, rng.randint(*sizes.answer_chars))
        prompt, answer = drawn
    elif task == "count":
        start = rng.randint(1, 900)
        numbers = list(range(start, start + rng.randint(*sizes.answer_chars) // 16))
        prompt = f"Count from {numbers[0]} to {numbers[-1]}, separated by spaces."
        answer = " ".join(map(str, numbers))
    else:
        raise ValueError(f"unknown task {task!r}; choose from {', '.join(TASKS)}")
    messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
    return {"task": task, "messages": messages, "answer": answer}


def make_mix(sizes: MixSizes, seed: int = 0, tasks: tuple[str, ...] = TASKS) -> tuple[list[dict], list[dict]]:
    """Shuffled training samples and held-out samples (by task) of `tasks`, from one `random.Random(seed)`.

    The documentation paragraphs are split in two by the seed: the held-out `continue` samples come from paragraphs
    no training sample continues, and a held-out prompt that is also a training prompt is drawn again.
    """
    rng = random.Random(seed)
    paragraphs = documentation_paragraphs()
    order = list(range(len(paragraphs)))
    rng.shuffle(order)
    train_paragraphs = [paragraphs[i] for i in sorted(order[: len(order) * 4 // 5])]
    heldout_paragraphs = [paragraphs[i] for i in sorted(order[len(order) * 4 // 5 :])]
    train = [make_sample(task, rng, sizes, train_paragraphs) for task in tasks for _ in range(sizes.train_per_task)]
    seen = {record["messages"][0]["content"] for record in train}
    heldout = []
    for task in tasks:
        for _ in range(sizes.heldout_per_task):
            record = make_sample(task, rng, sizes, heldout_paragraphs)
            while record["messages"][0]["content"] in seen:
                record = make_sample(task, rng, sizes, heldout_paragraphs)
            seen.add(record["messages"][0]["content"])
            heldout.append(record)
    rng.shuffle(train)
    return train, heldout
