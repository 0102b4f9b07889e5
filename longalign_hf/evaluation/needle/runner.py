"""`longalign eval needle`: needle in a haystack as the paper draws it (depth x length heatmap), and RULER's NIAH probes.

```
longalign eval needle --model THUDM/LongAlign-7B-64k
longalign eval needle --model ./my-run --lengths 1k,4k,16k --depths 5 --probes single,multikey,multivalue
```

No API is needed: the model answers locally through its own chat template (greedy by default) and the answers are
scored by string matching; an LLM-judge score can be added with `--judge-model`.

How a prompt is built (`build_needle_prompt`):

1. The haystack is text: by default the prose of the Python documentation that ships with CPython
   (`pydoc_data.topics`, see `load_haystack`), or every `*.txt` file under `--haystack-dir` (sorted by path, joined
   by blank lines). It is repeated if it is too short.
2. Sentence boundaries are found in the text: after `.`, `!` or `?` (and any closing quotes or brackets) followed by
   whitespace, and at blank lines. Never by a token id: the reference script backs up to the period token of one
   tokenizer, so with any other tokenizer every needle lands at the start.
3. A length L counts the tokens of the whole chat-templated prompt the model sees (template, instruction, haystack,
   needles, question and generation prompt; not the answer). The haystack is a run of whole sentences of the text
   whose token count fills L after that overhead; the run is chosen, and the count checked on the finished prompt,
   so that the prompt lands within a few tokens of L. The exact count is recorded as `prompt_tokens`.
4. A needle at depth d% goes in at the sentence boundary nearest to d% of the haystack's tokens: depth 0 is the very
   start of the haystack, 100 the very end. Of the runs of sentences that fill the length, the one with a boundary
   nearest the asked depth is used, so the needle lands within `DEPTH_TOLERANCE` (2 percentage points) of it whenever
   the haystack's sentences allow. With the built-in haystack that is every length from 512 tokens for a tokenizer of
   about 3.5 or more characters per token (most real ones), and from 768 tokens even with one token per byte (tested
   over 512-8k tokens and depths 0-100%). A haystack of long sentences at a short length may not allow it; then the
   needle goes at the nearest boundary there is, a warning says so, and the heatmap shows the depth reached in that
   cell. The depth reached is always recorded as `needle_depths`.

Probes:

- `single`: the paper's needle ("The best thing to do in San Francisco is eat a sandwich and sit in Dolores Park on a
  sunny day.") and question, in the released script's prompt. Score: the fraction of the needle's key facts
  `PAPER_KEY_FACTS` ("eat a sandwich", "dolores park", "sunny day") found in the answer.
- `multikey` (RULER's NIAH multi-key): `--num-needles` needles "One of the special magic {numbers} for {key} is:
  {value}." with different keys; the question asks for one key's value. The asked needle is at depth d, the others
  (distractors) at random depths.
- `multivalue` (RULER's NIAH multi-value): `--num-needles` values for the same key; the question asks for all of them.
  The first is at depth d, the others at random depths.

RULER probes are scored as RULER does (`string_match_all`): the fraction of the expected values found in the answer.
All string matching here is case-insensitive with runs of whitespace read as one space (`match_fraction`). Keys and
values are words (adjective-noun), 7-digit numbers or UUIDs, drawn from a generator seeded by `--seed`, the probe,
the length and the depth, so a rerun builds the same prompts.

The output folder holds `needle.jsonl` (one record per length x depth x probe, written as each answer comes: a rerun
skips the records already there), `run.json` (the settings that decide the answers; a rerun with other ones is
refused), `results.json` (settings, records, mean scores), `summary.md`, and `heatmap_{probe}.png` (plus
`heatmap_single_judge.png` with a judge; a heatmap with nothing to draw is skipped with a warning). Every input is
checked before anything is written. With a judge, each answer it could not rate is a warning, the summary says how
many, and the command exits with status 1 unless `--allow-incomplete`.

`torch` and `transformers` are imported by the functions that use them, so the `longalign` command can import this
module at once.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import re
import uuid
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from statistics import mean
from typing import TYPE_CHECKING, Any, TextIO

from longalign_hf import command_args
from longalign_hf.data.synthetic import documentation_paragraphs
from longalign_hf.errors import UserInputError, iter_jsonl
from longalign_hf.evaluation import run_folder
from longalign_hf.evaluation.generation import (
    chat_text,
    check_model_options,
    generate_chat_answers,
    load_causal_lm,
    load_model_config,
    load_tokenizer,
)
from longalign_hf.evaluation.longbench_chat.scoring import parse_rating
from longalign_hf.evaluation.needle.heatmap import plot_heatmap
from longalign_hf.llm_client import JudgeClient, total_usage

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

PAPER_NEEDLE = "The best thing to do in San Francisco is eat a sandwich and sit in Dolores Park on a sunny day."
PAPER_QUESTION = "What is the best thing to do in San Francisco? Here is the most relevant sentence in the context:"
# The judge-free score of the single probe: the three things the needle says one should do, all lower case.
PAPER_KEY_FACTS = ("eat a sandwich", "dolores park", "sunny day")
# The released script's prompt: its system message, a newline, then the user message, sent as one user turn.
PAPER_TEMPLATE = (
    "You are a helpful AI bot that answers questions for a user. Keep your response short and direct\n"
    "{context}\n\nRead the document and answer: {question}"
)
RULER_NEEDLE = "One of the special magic {type_needle_v} for {key} is: {value}."
RULER_TEMPLATE = (
    "Some special magic {type_needle_v} are hidden within the following text. Make sure to memorize it. I will quiz "
    "you about the {type_needle_v} afterwards.\n{context}\nWhat are all the special magic {type_needle_v} for {query} "
    "mentioned in the provided text?"
)
PROBES = ("single", "multikey", "multivalue")
NEEDLE_TYPES = ("words", "numbers", "uuids")
# The release's Needle_test config: 10 lengths from 1k to 60k tokens, `numpy.linspace(1000, 60000, 10)` rounded.
DEFAULT_LENGTHS = (1000, 7556, 14111, 20667, 27222, 33778, 40333, 46889, 53444, 60000)
DEFAULT_NUM_DEPTHS = 10
# The most depths a count can ask for: they are rounded to whole percents, and 0-100 has 101 of them.
MAX_NUM_DEPTHS = 101
# The shortest length accepted on the command line: no chat prompt with a question and a needle is shorter.
MIN_LENGTH = 100
# How far (percentage points of the haystack) a needle may land from its asked depth; see the module docstring.
DEPTH_TOLERANCE = 2.0

# The released judge prompt (Needle_test/eval.py): the needle is the ground truth, the rating 1-10 comes as [[n]].
JUDGE_SYSTEM_PROMPT = "You are a helpful assistant."
JUDGE_TEMPLATE = (
    "[Instruction]\nPlease act as an impartial judge and evaluate the quality of the response provided by an AI "
    "assistant to the user question displayed below. For this evaluation, you should primarily consider the following "
    "criteria:\naccuracy: \n"
    "    Score 1: The answer is completely unrelated to the reference.\n"
    "    Score 3: The answer has minor relevance but does not align with the reference.\n"
    "    Score 5: The answer has moderate relevance but contains inaccuracies.\n"
    "    Score 7: The answer aligns with the reference but has minor omissions.\n"
    "    Score 10: The answer is completely accurate and aligns perfectly with the reference.\n"
    "    Only respond with a numberical score\n    \n"
    "[Ground truth]\n{reference}\nBegin your evaluation by providing a short explanation. Be as objective as possible. "
    "After providing your explanation, you must rate the response on a scale of 1 to 10 by strictly following this "
    'format: "[[rating]]", for example: "Rating: [[5]]".\n\n[Question]\n{question}\n\n'
    "[The Start of Assistant's Answer]\n{answer}\n[The End of Assistant's Answer]"
)

# A sentence ends at . ! or ? (then any closing quotes or brackets) followed by whitespace; a blank line ends one too.
_BOUNDARY = re.compile(r"(?<=[.!?])[\"')\]]*\s+|\n\s*\n")
# Candidate first sentences of a haystack window (see `Haystack.window`).
_MAX_WINDOW_STARTS = 2048
# Tokens a window may fall short of the best-filling one to bring a sentence boundary nearer the asked depth.
_LENGTH_SLACK = 2
# Tokens of haystack beyond the longest prompt, so windows can start at many different sentences (a short prompt has
# few sentences: it takes many tries to find a run with a boundary near the asked depth).
_HAYSTACK_MARGIN = 32_768
_ADJECTIVES = (
    "amber", "brave", "calm", "dusty", "eager", "faint", "gentle", "hollow", "icy", "jolly", "keen", "lively",
    "mellow", "nimble", "odd", "proud", "quiet", "rusty", "shiny", "tidy", "urban", "vivid", "witty", "young",
)  # fmt: skip
_NOUNS = (
    "anchor", "badger", "candle", "dragon", "engine", "falcon", "garden", "harbor", "island", "jacket", "kettle",
    "lantern", "meadow", "needle", "orchard", "pebble", "quarry", "rocket", "saddle", "tunnel", "valley", "walnut",
    "yacht", "zephyr",
)  # fmt: skip


def match_fraction(answer: str, expected: Sequence[str]) -> float:
    """The fraction of the `expected` strings found in `answer`: case-insensitive, runs of whitespace read as one space.

    The judge-free score of every probe: the single probe's key facts, RULER's expected values (RULER's
    `string_match_all`).

    >>> match_fraction("Eat a sandwich in Dolores  Park.", ["eat a sandwich", "dolores park", "sunny day"])
    0.6666666666666666
    """
    if not expected:
        raise ValueError("`expected` is empty: give at least one string to look for.")
    found = _normalize(answer)
    return sum(_normalize(item) in found for item in expected) / len(expected)


def _normalize(text: str) -> str:
    return " ".join(text.split()).casefold()


def depth_grid(num_depths: int = DEFAULT_NUM_DEPTHS) -> list[float]:
    """`num_depths` depths evenly spaced from 0 to 100%, rounded to whole percents as the reference script does.

    The paper's heatmap spans 0-100%; the released `Needle_test/config-prompt.yaml` spans 10-90%, which is
    `--depths 10,19,28,37,46,54,63,72,81,90`.

    At most `MAX_NUM_DEPTHS` (101): more would repeat depths; list them instead (`--depths 0,0.5,1,...`).

    >>> depth_grid(10)
    [0.0, 11.0, 22.0, 33.0, 44.0, 56.0, 67.0, 78.0, 89.0, 100.0]
    """
    if num_depths < 1:
        raise UserInputError(f"The number of depths must be at least 1, got {num_depths}.")
    if num_depths > MAX_NUM_DEPTHS:
        raise UserInputError(
            f"{num_depths} depths rounded to whole percents would repeat depths (0-100 holds {MAX_NUM_DEPTHS}): ask "
            f"for at most {MAX_NUM_DEPTHS}, or list the depths themselves (e.g. 0,0.5,1,1.5)."
        )
    if num_depths == 1:
        return [0.0]
    return [float(round(100 * i / (num_depths - 1))) for i in range(num_depths)]


def load_haystack(haystack_dir: str | os.PathLike | None = None) -> str:
    """The haystack text: every `*.txt` file under `haystack_dir` (sorted by path, joined by blank lines), or by
    default the prose of the Python documentation that ships with CPython (`pydoc_data.topics`).

    The default keeps the paragraphs that end a sentence and have no sentence over 300 characters, leaving code
    listings and tables out (about 290,000 characters), so a needle can sit close to any depth even in a short
    haystack.
    """
    if haystack_dir is None:
        return "\n\n".join(
            paragraph
            for paragraph in documentation_paragraphs()
            if paragraph.endswith((".", "!", "?")) and max(map(len, _BOUNDARY.split(paragraph))) <= 300
        )
    folder = Path(haystack_dir)
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise UserInputError(
            f"--haystack-dir {folder} {what}: pass a folder of .txt files, or leave --haystack-dir out for the "
            "built-in Python documentation"
        )
    files = sorted(folder.rglob("*.txt"))
    texts = [file.read_text(encoding="utf-8", errors="replace").strip() for file in files]
    text = "\n\n".join(text for text in texts if text)
    if not text:
        raise UserInputError(
            f"--haystack-dir {folder} holds no .txt file with text: put the haystack's text in .txt files there"
        )
    if not _BOUNDARY.search(text):
        raise UserInputError(
            f"The text under --haystack-dir {folder} has no sentence boundary (`.`, `!` or `?` then whitespace, or a "
            "blank line), so there is nowhere to put a needle: use prose"
        )
    return text


class Haystack:
    """Haystack text tokenized once, with its sentence boundaries in characters and in tokens.

    Args:
        text (`str`): the haystack (see `load_haystack`); it is repeated, joined by blank lines, until it holds
            `min_tokens` tokens.
        tokenizer (`PreTrainedTokenizerBase`): the model's tokenizer. It must be a fast one: its offsets map the
            sentence boundaries found in the text to token positions.
        min_tokens (`int`): how many tokens the haystack must hold (the longest prompt and some margin).
    """

    def __init__(self, text: str, tokenizer: PreTrainedTokenizerBase, min_tokens: int):
        if not tokenizer.is_fast:
            raise UserInputError(
                f"The tokenizer of {tokenizer.name_or_path!r} is a slow one: needle prompts need the token offsets "
                "of a fast tokenizer (`AutoTokenizer.from_pretrained(..., use_fast=True)`)."
            )
        unit = text.strip()
        if not unit:
            raise UserInputError("The haystack text is empty: give a haystack with text.")
        num_chars = 6 * min_tokens + 1000  # a first guess; doubled below while it falls short
        while True:
            source = "\n\n".join([unit] * (num_chars // len(unit) + 1))
            starts = [0, *(match.end() for match in _BOUNDARY.finditer(source))]
            cut = starts[bisect_right(starts, num_chars) - 1] or len(source)
            self.text = source[:cut]
            encoding = tokenizer(self.text, add_special_tokens=False, return_offsets_mapping=True)
            self.num_tokens = len(encoding["input_ids"])
            if self.num_tokens >= min_tokens:
                break
            num_chars *= 2
        token_starts = [start for start, _ in encoding["offset_mapping"]]
        # Boundary b starts a sentence at character `chars[b]`, after `tokens[b]` tokens of the haystack.
        self.chars = sorted({*(start for start in starts if start <= len(self.text)), len(self.text)})
        self.tokens = [bisect_right(token_starts, char - 1) for char in self.chars]

    def window(self, budget: int, depth: float | None = None) -> tuple[int, int]:
        """Boundaries `(i, j)` of a run of whole sentences of about `budget` tokens, with a boundary near `depth`.

        Runs starting at each of the first sentences are tried. The candidates are the runs closest to `budget` from
        below and those up to `_LENGTH_SLACK` tokens shorter; of these, the one with a sentence boundary nearest
        `depth` % of its tokens wins (to 0.1 point; without `depth`, the closest to `budget`), then the one closest to
        `budget`, then the one with the most sentences (the finest choice of depths), then the earliest.
        """
        candidates = []
        for i in range(min(len(self.tokens), _MAX_WINDOW_STARTS)):
            if self.tokens[i] + budget > self.num_tokens and i:
                break
            j = bisect_right(self.tokens, self.tokens[i] + budget) - 1
            candidates.append((budget - (self.tokens[j] - self.tokens[i]), i, j))
        closest = min(gap for gap, _, _ in candidates)

        def rank(candidate: tuple[int, int, int]) -> tuple[float, int, int, int]:
            gap, i, j = candidate
            miss = 0.0 if depth is None else abs(self.depth_of(self.place(i, j, depth), i, j) - depth)
            return round(miss, 1), gap, i - j, i

        _, i, j = min((c for c in candidates if c[0] <= closest + _LENGTH_SLACK), key=rank)
        return i, j

    def place(self, i: int, j: int, depth: float) -> int:
        """The boundary between `i` and `j` nearest to `depth` % of the tokens between them (the earlier on a tie)."""
        target = self.tokens[i] + depth / 100 * (self.tokens[j] - self.tokens[i])
        k = bisect_left(self.tokens, target, i, j + 1)
        return k - 1 if k > i and target - self.tokens[k - 1] <= self.tokens[k] - target else k

    def depth_of(self, k: int, i: int, j: int) -> float:
        """Where boundary `k` sits in the run from `i` to `j`, in % of its tokens."""
        total = self.tokens[j] - self.tokens[i]
        return 100 * (self.tokens[k] - self.tokens[i]) / total if total else 0.0

    def compose(self, i: int, j: int, needles: Sequence[str], depths: Sequence[float]) -> tuple[str, list[float]]:
        """The sentences between boundaries `i` and `j` with each needle at the boundary nearest its depth (% of the
        window's tokens). Returns the text and the depth each needle reached."""
        places = [self.place(i, j, depth) for depth in depths]
        pieces, cursor = [], self.chars[i]
        for n in sorted(range(len(needles)), key=lambda n: (places[n], n)):
            pieces.append(self.text[cursor : self.chars[places[n]]])
            cursor = self.chars[places[n]]
            if pieces[-1] and not pieces[-1][-1].isspace():  # only at the text's very end
                pieces.append(" ")
            pieces.append(needles[n] + " ")
        pieces.append(self.text[cursor : self.chars[j]])
        return "".join(pieces).rstrip(), [self.depth_of(place, i, j) for place in places]


@dataclass
class NeedlePrompt:
    """One needle-in-a-haystack prompt and what a right answer holds.

    Args:
        probe (`str`): `"single"`, `"multikey"` or `"multivalue"`.
        length (`int`): the requested length in tokens.
        depth (`float`): the requested depth of the (first) needle, in % of the haystack's tokens.
        prompt (`str`): the user message.
        prompt_tokens (`int`): tokens of the chat-templated prompt, generation prompt included.
        needles (`list[str]`): the needle sentences, the one at `depth` first.
        needle_depths (`list[float]`): the depth each needle reached (the sentence boundary nearest its target).
        query (`str`): what is asked: the paper's question, or the RULER key.
        expected (`list[str]`): the strings the answer must hold (key facts or values).
    """

    probe: str
    length: int
    depth: float
    prompt: str
    prompt_tokens: int
    needles: list[str]
    needle_depths: list[float]
    query: str
    expected: list[str]


def _random_item(rng: random.Random, kind: str) -> str:
    if kind == "numbers":
        return str(rng.randint(1_000_000, 9_999_999))
    if kind == "uuids":
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))
    return f"{rng.choice(_ADJECTIVES)}-{rng.choice(_NOUNS)}"


def _distinct_items(rng: random.Random, kind: str, count: int, taken: set[str]) -> list[str]:
    items: list[str] = []
    while len(items) < count:
        item = _random_item(rng, kind)
        if item not in taken:
            taken.add(item)
            items.append(item)
    return items


def _probe_content(
    probe: str, rng: random.Random, num_needles: int, key_type: str, value_type: str
) -> tuple[list[str], list[str], str, str]:
    """Needles (the one at the requested depth first), expected strings, query, and template with a `{context}` slot."""
    if probe == "single":
        return [PAPER_NEEDLE], list(PAPER_KEY_FACTS), PAPER_QUESTION, _with_context(PAPER_TEMPLATE, PAPER_QUESTION)
    taken: set[str] = set()
    num_keys = num_needles if probe == "multikey" else 1
    keys = _distinct_items(rng, key_type, num_keys, taken)
    values = _distinct_items(rng, value_type, num_needles, taken)
    pairs = list(zip(keys, values)) if probe == "multikey" else [(keys[0], value) for value in values]
    needles = [RULER_NEEDLE.format(type_needle_v=value_type, key=key, value=value) for key, value in pairs]
    expected = values[:1] if probe == "multikey" else values
    return needles, expected, keys[0], _with_context(RULER_TEMPLATE, keys[0], value_type)


def _with_context(template: str, query: str, type_needle_v: str = "") -> str:
    return template.format(context="{context}", question=query, query=query, type_needle_v=type_needle_v)


def _check_probe(probe: str, num_needles: int, key_type: str, value_type: str) -> None:
    if probe not in PROBES:
        raise UserInputError(f"Unknown probe {probe!r}: choose from {', '.join(PROBES)}.")
    if probe != "single" and num_needles < 2:
        raise UserInputError(f"The {probe} probe needs at least 2 needles (--num-needles), got {num_needles}.")
    for name, kind in (("key_type", key_type), ("value_type", value_type)):
        if kind not in NEEDLE_TYPES:
            raise UserInputError(f"Unknown {name} {kind!r}: choose from {', '.join(NEEDLE_TYPES)}.")


def _prompt_tokens(tokenizer: PreTrainedTokenizerBase, prompt: str) -> int:
    # Counted exactly as `generate_chat_answers` tokenizes: the template holds the special tokens.
    return len(tokenizer(chat_text(tokenizer, prompt), add_special_tokens=False)["input_ids"])


def build_needle_prompt(
    tokenizer: PreTrainedTokenizerBase,
    haystack: Haystack,
    length: int,
    depth: float,
    probe: str = "single",
    seed: int = 42,
    num_needles: int = 4,
    key_type: str = "words",
    value_type: str = "numbers",
) -> NeedlePrompt:
    """Build the prompt of one (length, depth, probe) cell; see the module docstring for the rules.

    Args:
        tokenizer: the model's tokenizer, with its chat template (lengths are counted through it).
        haystack: the tokenized haystack, holding at least `length` tokens.
        length: tokens of the whole chat-templated prompt.
        depth: where the (first) needle goes, in % of the haystack's tokens (0: start, 100: end).
        probe: `"single"` (the paper's needle), `"multikey"` or `"multivalue"` (RULER's).
        seed: seeds the RULER keys, values and distractor depths (with the probe, length and depth).
        num_needles: needles of the RULER probes (RULER's multi-key and multi-value tasks: 4).
        key_type, value_type: `"words"`, `"numbers"` (7 digits) or `"uuids"` for RULER's keys and values.

    Example:

    ```python
    haystack = Haystack(load_haystack(), tokenizer, min_tokens=10_000)
    prompt = build_needle_prompt(tokenizer, haystack, length=8000, depth=50)
    prompt.prompt_tokens, prompt.needle_depths  # 8000 within a few tokens; the depth reached, within 2 points of 50
    ```
    """
    _check_probe(probe, num_needles, key_type, value_type)
    if not 0 <= depth <= 100:
        raise UserInputError(f"A depth is a percentage from 0 to 100, got {depth}.")
    rng = random.Random(f"{seed}/{probe}/{length}/{depth}")
    needles, expected, query, template = _probe_content(probe, rng, num_needles, key_type, value_type)
    # As in RULER, needles other than the one asked about (or the first value) go at random depths.
    depths = [float(depth)] + [float(rng.randint(0, 100)) for _ in needles[1:]]

    overhead = _prompt_tokens(tokenizer, template.format(context=" ".join(needles)))
    if length <= overhead:
        raise UserInputError(
            f"A {probe} prompt takes {overhead} tokens before any haystack is added: ask for --lengths over {overhead}."
        )
    if haystack.num_tokens < length:
        raise ValueError(f"The haystack holds {haystack.num_tokens} tokens, fewer than the {length} asked for.")

    def render(budget: int) -> tuple[int, str, list[float]]:
        context, reached = haystack.compose(*haystack.window(max(budget, 0), depth), needles, depths)
        prompt = template.format(context=context)
        return _prompt_tokens(tokenizer, prompt), prompt, reached

    # Sentences tokenize a little differently at the window's edges and next to the needles than inside the whole
    # haystack: measure the finished prompt and correct the budget by the difference, keeping the closest.
    budget = length - overhead
    best = render(budget)
    for _ in range(3):
        if best[0] == length:
            break
        budget += length - best[0]
        candidate = render(budget)
        if abs(candidate[0] - length) < abs(best[0] - length):
            best = candidate
    prompt_tokens, prompt, reached = best
    if abs(reached[0] - depth) > DEPTH_TOLERANCE:
        logger.warning(
            "The %s needle of the %d-token prompt sits at depth %.1f%%, not %g%%: no run of the haystack's sentences "
            "that fills this length has a boundary within %g points of it. The heatmap shows the depth reached.",
            probe,
            length,
            reached[0],
            depth,
            DEPTH_TOLERANCE,
        )
    return NeedlePrompt(probe, length, float(depth), prompt, prompt_tokens, needles, reached, query, expected)


def judge_needle_answers(
    client: JudgeClient, answers: Sequence[str], reference: str = PAPER_NEEDLE, question: str = PAPER_QUESTION
) -> tuple[list[float | None], dict[str, int]]:
    """Rate each answer 1-10 against the needle with an LLM judge, with the release's judge prompt.

    Returns the ratings (`None` where the judge gave none after its retries; the client logs each as a warning) and
    the judge usage (`total_usage`).
    """
    messages = [
        [
            {"role": "system", "content": JUDGE_SYSTEM_PROMPT},
            {"role": "user", "content": JUDGE_TEMPLATE.format(reference=reference, question=question, answer=answer)},
        ]
        for answer in answers
    ]
    results = client.complete(
        messages,
        validate=lambda reply: parse_rating(reply) is not None,
        desc="judging needles",
        invalid_reason="no rating [[n]] in it",
    )
    ratings = [parse_rating(result.text) if result.error is None else None for result in results]
    return ratings, total_usage(results)


def default_output_dir(model: str, root: str | os.PathLike = Path("outputs", "needle")) -> Path:
    """`root/MODEL`, with the model id or path made a folder name (`org/name` -> `org--name`)."""
    return run_folder.default_output_dir(model, root)


def _cell(record: dict[str, Any]) -> tuple[str, int, float]:
    return record["probe"], int(record["length"]), float(record["depth"])


def _read_records(path: Path, model: str) -> dict[tuple[str, int, float], dict[str, Any]]:
    """Records of an earlier run; a last line cut short by a crash is skipped (and redone)."""
    records: dict[tuple[str, int, float], dict[str, Any]] = {}
    if not path.exists():
        return records
    for number, record in iter_jsonl(path, skip_cut_last_line=True):
        try:
            cell = _cell(record)
            record["score"] = float(record["score"])
        except (ValueError, KeyError, TypeError):
            raise UserInputError(
                f"{path}, line {number}: not a needle record (an object with probe, length, depth, score); fix or "
                "delete that line, or pass another --output-dir"
            ) from None
        if record.get("model") != model:
            raise UserInputError(
                f"{path}, line {number} holds an answer of {record.get('model')!r}, not {model!r}: pass another "
                "--output-dir (or delete the file to start over)"
            )
        records[cell] = record
    return records


def _context_window(config: Any, max_model_length: int | None) -> int | None:
    if max_model_length is not None:
        return max_model_length
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    return getattr(text_config, "max_position_embeddings", None)


def _mean_by(records: Sequence[dict[str, Any]], key: str, value_key: str) -> dict[str, float]:
    groups: dict[Any, list[float]] = {}
    for record in records:
        if record.get(value_key) is not None:
            groups.setdefault(record[key], []).append(record[value_key])
    return {_label(group): mean(values) for group, values in sorted(groups.items())}


def _label(number: float) -> str:
    """`1000` -> `"1000"`, `50.0` -> `"50"`, `12.5` -> `"12.5"`: keys of the per-length and per-depth scores."""
    return str(int(number)) if float(number).is_integer() else str(number)


def _summarize(records: Sequence[dict[str, Any]], value_key: str) -> dict[str, Any]:
    values = [record[value_key] for record in records if record.get(value_key) is not None]
    return {
        "mean": mean(values) if values else None,
        "num_scored": len(values),
        "by_length": _mean_by(records, "length", value_key),
        "by_depth": _mean_by(records, "depth", value_key),
    }


def run_needle(
    model: str | PreTrainedModel,
    tokenizer: str | PreTrainedTokenizerBase | None = None,
    lengths: Sequence[int] = DEFAULT_LENGTHS,
    depths: int | Sequence[float] = DEFAULT_NUM_DEPTHS,
    probes: Sequence[str] = ("single",),
    haystack_dir: str | os.PathLike | None = None,
    output_dir: str | os.PathLike | None = None,
    max_new_tokens: int = 64,
    batch_size: int = 1,
    temperature: float = 0.0,
    seed: int = 42,
    num_needles: int = 4,
    key_type: str = "words",
    value_type: str = "numbers",
    dtype: str = "auto",
    attn_implementation: str | None = None,
    max_model_length: int | None = None,
    judge_model: str | None = None,
    judge_base_url: str | None = None,
    judge_api_key: str | None = None,
    judge_concurrency: int = 8,
) -> dict[str, Any]:
    """Run the needle probes on `model` over lengths x depths (resumable), score, draw heatmaps; returns the results.

    `model` is a path or Hub id, or a loaded model (then pass `tokenizer`). `depths` is a count of depths evenly spaced
    from 0 to 100% (`depth_grid`) or the depths themselves. Lengths whose prompt plus `max_new_tokens` exceed the
    model's context window (`max_model_length`, by default the config's `max_position_embeddings`) are skipped with a
    warning and listed under `skipped` in the results; if every length is, it is an error. Every input is checked
    before anything is written. With a judge, `num_unscored` counts the single-needle answers it could not rate (0
    without one; the command exits with status 1 when it is not 0); `num_off_depth` counts the needles more than
    `DEPTH_TOLERANCE` points from their asked depth. See `add_arguments` for the other options and the module
    docstring for the rules and the output folder.

    Example:

    ```python
    results = run_needle("THUDM/LongAlign-7B-64k", lengths=[1000, 8000, 32000], depths=5)
    results["scores"]["single"]["mean"]  # the judge-free score, 0-1
    ```
    """
    model_name = model if isinstance(model, str) else (model.name_or_path or "model")
    lengths = sorted({int(length) for length in lengths})
    if not lengths or lengths[0] < 1:
        raise UserInputError(f"Lengths must be positive numbers of tokens, got {lengths}.")
    depths = depth_grid(depths) if isinstance(depths, int) else sorted({float(depth) for depth in depths})
    if not depths or not all(0 <= depth <= 100 for depth in depths):
        raise UserInputError(f"Depths are percentages from 0 to 100, got {depths}.")
    if not probes:
        raise UserInputError(f"No probe to run: choose from {', '.join(PROBES)}.")
    for probe in probes:
        _check_probe(probe, num_needles, key_type, value_type)
    for name, value in (("max_new_tokens", max_new_tokens), ("batch_size", batch_size)):
        if value < 1:
            raise UserInputError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    if temperature < 0:
        raise UserInputError(f"--temperature must be at least 0, got {temperature}")
    if isinstance(model, str):
        check_model_options(dtype, attn_implementation)
    output_dir = Path(output_dir) if output_dir is not None else default_output_dir(model_name)
    command_args.check_can_create(output_dir, "--output-dir")
    # Every input is checked before anything is written: nothing half-made refuses the corrected rerun.
    judge = None
    if judge_model is not None and "single" not in probes:
        logger.warning("The judge rates the single probe only, which is not run: no judge score.")
    elif judge_model is not None:  # made first, so a missing API key fails before any generation
        judge = JudgeClient(
            judge_model,
            base_url=judge_base_url,
            api_key=judge_api_key,
            max_concurrency=judge_concurrency,
            cache_dir=output_dir / "judge_cache",
        )
    if tokenizer is None and not isinstance(model, str):
        raise ValueError("Pass the `tokenizer` with a loaded model.")
    tok = load_tokenizer(tokenizer or model) if tokenizer is None or isinstance(tokenizer, str) else tokenizer
    haystack_text = load_haystack(haystack_dir)

    settings = {
        "model": model_name,
        "tokenizer": tokenizer if isinstance(tokenizer, str) else None,
        "haystack": str(Path(haystack_dir).resolve()) if haystack_dir is not None else "pydoc_data.topics",
        "needle_placement": f"nearest sentence boundary, within {DEPTH_TOLERANCE:g} points where the haystack allows",
        "max_new_tokens": max_new_tokens,
        "temperature": temperature,
        "seed": seed,
        "num_needles": num_needles,
        "key_type": key_type,
        "value_type": value_type,
    }
    records_path = output_dir / "needle.jsonl"
    records = _read_records(records_path, model_name)
    run_folder.check_settings(output_dir, settings, has_answers=bool(records))

    window = _context_window(_model_config(model), max_model_length)
    skipped = []
    if window is not None:
        for length in [length for length in lengths if length + max_new_tokens > window]:
            reason = f"{length} prompt + {max_new_tokens} new tokens exceed the model's {window}-token window"
            logger.warning(
                "Skipping length %d: %s (set --max-model-length if the model reaches further).", length, reason
            )
            skipped.append({"length": length, "reason": reason})
        lengths = [length for length in lengths if length + max_new_tokens <= window]
        if not lengths:
            raise UserInputError(
                f"Every length is over the model's {window}-token window (prompt + {max_new_tokens} new tokens): ask "
                "for shorter --lengths, or set --max-model-length if the model reaches further than its config says."
            )

    cells = [(probe, length, depth) for probe in probes for length in lengths for depth in depths]
    todo = [cell for cell in cells if cell not in records]
    # All prompts first (a few MB of text at most), so a length too short for its probe fails before anything is
    # written or the model loads.
    prompts = _build_prompts(tok, haystack_text, todo, seed, num_needles, key_type, value_type) if todo else {}
    # The model loads before anything is written too: a checkpoint or backend that fails leaves nothing behind.
    if todo and isinstance(model, str):
        model = load_causal_lm(model, dtype, attn_implementation)
    run_folder.write_settings(output_dir, settings)
    if todo:
        logger.info("Needle: %d records to make (%d already in %s)", len(todo), len(cells) - len(todo), records_path)
        _generate(
            model,
            tok,
            prompts,
            records,
            records_path,
            model_name=model_name,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            temperature=temperature,
            seed=seed,
        )
    else:
        logger.info("Needle: all %d records are already in %s; nothing to generate.", len(cells), records_path)

    kept = [records[cell] for cell in cells]
    results: dict[str, Any] = {"model": model_name, "settings": settings, "lengths": lengths, "depths": depths}
    results["skipped"] = skipped
    results["scores"] = {probe: _summarize([r for r in kept if r["probe"] == probe], "score") for probe in probes}
    results["num_unscored"] = 0
    if judge is not None:  # ratings are cached in the output folder: a rerun pays for new answers only
        single = [record for record in kept if record["probe"] == "single"]
        ratings, usage = judge_needle_answers(judge, [record["answer"] for record in single])
        for record, rating in zip(single, ratings):
            record["judge_rating"] = rating
        results["judge_model"], results["judge_usage"] = judge.model, usage
        results["judge_scores"] = {"single": _summarize(single, "judge_rating")}
        results["num_unscored"] = sum(rating is None for rating in ratings)
    results["depth_tolerance"] = DEPTH_TOLERANCE
    results["num_off_depth"] = sum(_off_depth(record) for record in kept)

    heatmaps = []  # (file name, records, title, value key): drawn if some record has a value to show
    for probe in probes:
        probe_records = [record for record in kept if record["probe"] == probe]
        heatmaps.append((f"heatmap_{probe}.png", probe_records, f"{model_name}: {probe} needle (score 0-1)", "score"))
        if judge is not None and probe == "single":
            title = f"{model_name}: single needle ({judge.model} rating 1-10)"
            heatmaps.append(("heatmap_single_judge.png", probe_records, title, "judge_rating"))
    drawable = [heatmap for heatmap in heatmaps if any(record.get(heatmap[3]) is not None for record in heatmap[1])]
    results["heatmaps_skipped"] = [heatmap[0] for heatmap in heatmaps if heatmap not in drawable]
    results["records"] = kept

    # Results and summary first: a heatmap that cannot be drawn must not cost them.
    (output_dir / "results.json").write_text(json.dumps(results, indent=2, ensure_ascii=False), encoding="utf-8")
    (output_dir / "summary.md").write_text(format_summary(results) + "\n", encoding="utf-8")
    for name in results["heatmaps_skipped"]:
        logger.warning("Not drawing %s: no record has a value to show.", output_dir / name)
    for name, probe_records, title, value_key in drawable:
        low, high = (1, 10) if value_key == "judge_rating" else (0, 1)
        plot_heatmap(probe_records, output_dir / name, title, value_key, low, high, depth_tolerance=DEPTH_TOLERANCE)
    logger.info("Wrote results.json, summary.md and %d heatmaps to %s", len(drawable), output_dir)
    return results


def _off_depth(record: dict[str, Any]) -> bool:
    """Whether the (asked) needle reached a depth more than `DEPTH_TOLERANCE` points from the asked one."""
    return abs((record.get("needle_depths") or [record["depth"]])[0] - record["depth"]) > DEPTH_TOLERANCE


def shortfall(results: dict[str, Any]) -> str | None:
    """What a `run_needle` result lacks, as one sentence; `None` when nothing is missing."""
    if not results["num_unscored"]:
        return None
    num_single = results["judge_scores"]["single"]["num_scored"] + results["num_unscored"]
    return (
        f"{results['model']}: {results['num_unscored']} of {num_single} single-needle answers have no rating from the "
        f"judge {results['judge_model']}"
    )


def _model_config(model: str | PreTrainedModel) -> Any:
    return load_model_config(model) if isinstance(model, str) else model.config


def _build_prompts(
    tokenizer: PreTrainedTokenizerBase,
    haystack_text: str,
    todo: Sequence[tuple[str, int, float]],
    seed: int,
    num_needles: int,
    key_type: str,
    value_type: str,
) -> dict[int, list[NeedlePrompt]]:
    """The prompts of the `todo` cells, by length (prompts of one length batch with little padding)."""
    haystack = Haystack(haystack_text, tokenizer, max(length for _, length, _ in todo) + _HAYSTACK_MARGIN)
    prompts_by_length: dict[int, list[NeedlePrompt]] = {}
    for probe, length, depth in todo:
        prompts_by_length.setdefault(length, []).append(
            build_needle_prompt(tokenizer, haystack, length, depth, probe, seed, num_needles, key_type, value_type)
        )
    return prompts_by_length


def _generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts_by_length: dict[int, list[NeedlePrompt]],
    records: dict[tuple[str, int, float], dict[str, Any]],
    records_path: Path,
    *,
    model_name: str,
    max_new_tokens: int,
    batch_size: int,
    temperature: float,
    seed: int,
) -> None:
    """Answer and score the prompts, one length at a time, appending each record to `records_path` as it comes."""
    logger.info("Model %s (%s, attention: %s)", model_name, model.dtype, model.config._attn_implementation)
    with run_folder.open_for_append(records_path) as f:
        for number, length in enumerate(sorted(prompts_by_length), start=1):
            prompts = prompts_by_length[length]
            save = _saver(f, prompts, records, model_name)
            desc = f"needle {length} tokens ({number}/{len(prompts_by_length)})"
            generate_chat_answers(
                model,
                tokenizer,
                [prompt.prompt for prompt in prompts],
                max_new_tokens=max_new_tokens,
                max_length=None,
                batch_size=batch_size,
                temperature=temperature,
                seed=seed,
                on_answer=save,
                desc=desc,
            )


def _saver(f: TextIO, prompts: Sequence[NeedlePrompt], records: dict, model_name: str) -> Callable[[int, str], None]:
    def save(index: int, answer: str) -> None:
        prompt = prompts[index]
        record = {"model": model_name, **asdict(prompt), "answer": answer}
        record["score"] = match_fraction(answer, prompt.expected)
        del record["prompt"]  # tens of thousands of tokens each; rebuilt exactly from the settings when needed
        f.write(json.dumps(record, ensure_ascii=False) + "\n")
        f.flush()
        records[_cell(record)] = record

    return save


def format_summary(results: dict[str, Any]) -> str:
    """A Markdown table of `run_needle` results: one row per probe (and judge score), mean score overall and per
    length (scores 0-1, judge ratings 1-10); then what is missing or off, if anything."""
    lengths = [_label(length) for length in results["lengths"]]
    header = ["probe", "mean", *lengths]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    rows = [(probe, scores) for probe, scores in results["scores"].items()]
    rows += [(f"{probe} (judge 1-10)", scores) for probe, scores in results.get("judge_scores", {}).items()]
    for name, scores in rows:
        cells = [scores["by_length"].get(length) for length in lengths]
        values = [scores["mean"], *cells]
        lines.append("| " + " | ".join([name, *("-" if v is None else f"{v:.2f}" for v in values)]) + " |")
    lines.append(f"\nmodel: {results['model']}; depths: {', '.join(map(_label, results['depths']))}")
    if results.get("judge_model"):
        lines.append(f"judge: {results['judge_model']}")
    for skipped in results["skipped"]:
        lines.append(f"skipped length {skipped['length']}: {skipped['reason']}")
    if results["num_off_depth"]:
        lines.append(
            f"{results['num_off_depth']} needles sit more than {results['depth_tolerance']:g} points from their asked "
            "depth (the haystack's sentences are long for the length): their heatmap cells show the depth reached"
        )
    if shortfall(results) is not None:
        lines.append(f"**Incomplete:** {shortfall(results)}.")
    for name in results["heatmaps_skipped"]:
        lines.append(f"{name} not drawn: no record has a value to show")
    return "\n".join(lines)


def _parse_lengths(value: str) -> list[int]:
    """`"1000,8k,32k"` -> `[1000, 8000, 32000]`; a length under `MIN_LENGTH` is refused (`1,000` is two lengths).

    >>> _parse_lengths("1000,8k,1.5k")
    [1000, 8000, 1500]
    """
    try:
        lengths = [
            int(float(item[:-1]) * 1000) if item.lower().endswith("k") else int(item)
            for item in (item.strip() for item in value.split(","))
        ]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a list of lengths: give token counts separated by commas, e.g. 1000,8k,32k."
        ) from None
    short = [length for length in lengths if length < MIN_LENGTH]
    if short:
        hint = ""
        if re.fullmatch(r"\d{1,3}(,\d{3})+", value.strip()):
            hint = f"did you mean {value.strip().replace(',', '')}? "
        raise argparse.ArgumentTypeError(
            f"{value!r} holds lengths under {MIN_LENGTH} tokens ({', '.join(map(str, short))}): {hint}lengths are "
            "comma-separated token counts of the whole prompt, e.g. 1000,8k,32k (write 1000 or 1k, not 1,000)."
        )
    return lengths


def _parse_depths(value: str) -> int | list[float]:
    """`"10"` -> 10 evenly spaced depths (1 to `MAX_NUM_DEPTHS`); `"0,50,100"` -> those depths."""
    try:
        depths = [float(item) for item in value.split(",") if item.strip()] if "," in value else int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{value!r} is neither a number of depths (e.g. 10) nor a list of percentages (e.g. 0,50,100)."
        ) from None
    if isinstance(depths, int) and not 1 <= depths <= MAX_NUM_DEPTHS:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a number of depths from 1 to {MAX_NUM_DEPTHS} (more would repeat depths rounded to "
            "whole percents): give a count such as 10, or the depths themselves, e.g. 0,50,100."
        )
    if isinstance(depths, list):
        outside = [depth for depth in depths if not 0 <= depth <= 100]
        repeated = sorted({depth for depth in depths if depths.count(depth) > 1})
        if not depths or outside or repeated:
            problem = (
                "no depth" if not depths else f"depths outside 0-100: {outside}" if outside else f"repeats {repeated}"
            )
            raise argparse.ArgumentTypeError(
                f"{value!r} has {problem}: give percentages from 0 to 100, each once, e.g. 0,50,100."
            )
    return depths


def _parse_probes(value: str) -> list[str]:
    probes = [item.strip() for item in value.split(",") if item.strip()]
    unknown = [probe for probe in probes if probe not in PROBES]
    if unknown or not probes:
        raise argparse.ArgumentTypeError(f"Unknown probes {unknown or value!r}: choose from {','.join(PROBES)}.")
    return probes


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `longalign eval needle` other than `--model`."""
    grid = parser.add_argument_group("probes (defaults: the paper's)")
    grid.add_argument(
        "--lengths",
        type=_parse_lengths,
        default=list(DEFAULT_LENGTHS),
        help="prompt lengths in tokens of the chat-templated prompt, comma-separated, `k` = 1000 (default: 10 from 1k "
        "to 60k, the release's config: " + ",".join(map(str, DEFAULT_LENGTHS)) + ")",
    )
    grid.add_argument(
        "--depths",
        type=_parse_depths,
        default=DEFAULT_NUM_DEPTHS,
        help="a number of depths evenly spaced from 0 to 100%% of the haystack, or comma-separated depths "
        f"(default: {DEFAULT_NUM_DEPTHS})",
    )
    grid.add_argument(
        "--probes",
        type=_parse_probes,
        default=["single"],
        help="comma-separated: single (the paper's needle), multikey, multivalue (RULER's NIAH) (default: single)",
    )
    grid.add_argument(
        "--haystack-dir",
        help="folder of .txt files to use as haystack (default: the prose of the Python documentation that ships "
        "with CPython)",
    )
    grid.add_argument(
        "--num-needles",
        type=command_args.count,
        default=4,
        help="needles of the multikey and multivalue probes (default: 4, RULER's)",
    )
    grid.add_argument("--key-type", choices=NEEDLE_TYPES, default="words", help="RULER keys (default: words)")
    grid.add_argument("--value-type", choices=NEEDLE_TYPES, default="numbers", help="RULER values (default: numbers)")
    grid.add_argument(
        "--seed",
        type=command_args.seed,
        default=42,
        help="seed of RULER keys, values and depths, and of sampling (42)",
    )
    grid.add_argument(
        "--output-dir", help="where records, results, heatmaps and summary go (default: outputs/needle/MODEL)"
    )

    gen = parser.add_argument_group("generation")
    gen.add_argument("--tokenizer", help="tokenizer for lengths and the chat template (default: --model)")
    gen.add_argument("--max-new-tokens", type=command_args.count, default=64, help="answer length cap (default: 64)")
    gen.add_argument(
        "--temperature",
        type=command_args.at_least_zero,
        default=0.0,
        help="sampling temperature, 0 for greedy (default: 0)",
    )
    gen.add_argument(
        "--batch-size",
        type=command_args.count,
        default=1,
        help="prompts of the same length per generate call (default: 1)",
    )
    gen.add_argument(
        "--dtype",
        default="auto",
        choices=run_folder.DTYPES,
        help="model weights dtype (default: auto, the checkpoint's)",
    )
    gen.add_argument("--attn-implementation", help=run_folder.ATTN_IMPLEMENTATION_HELP)
    gen.add_argument(
        "--max-model-length",
        type=command_args.count,
        help="the model's context window in tokens; lengths whose prompt plus --max-new-tokens exceed it are skipped "
        "with a warning (default: the config's max_position_embeddings)",
    )

    judge = parser.add_argument_group("optional LLM-judge score of the single probe (1-10, the release's prompt)")
    judge.add_argument("--judge-model", help="judge model, recorded with the score (default: no judge)")
    judge.add_argument("--judge-base-url", help="OpenAI-compatible judge server (default: the OpenAI API)")
    judge.add_argument(
        "--judge-api-key", help="judge API key (default: the OPENAI_API_KEY environment variable, safer than this)"
    )
    judge.add_argument(
        "--judge-concurrency", type=command_args.count, default=8, help="judge requests in flight (default: 8)"
    )
    parser.add_argument("--allow-incomplete", action="store_true", help=run_folder.ALLOW_INCOMPLETE_HELP)


def options_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """`run_needle` keyword arguments (all but `model`) from options parsed with `add_arguments`."""
    names = (
        "tokenizer", "lengths", "depths", "probes", "haystack_dir", "output_dir", "max_new_tokens", "batch_size",
        "temperature", "seed", "num_needles", "key_type", "value_type", "dtype", "attn_implementation",
        "max_model_length", "judge_model", "judge_base_url", "judge_api_key", "judge_concurrency",
    )  # fmt: skip
    return {name: getattr(args, name) for name in names}


def _main(args: argparse.Namespace) -> int:
    results = run_needle(args.model, **options_from_args(args))
    print(format_summary(results))
    return run_folder.exit_status(shortfall(results), args.allow_incomplete)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `longalign eval needle`."""
    parser = subparsers.add_parser(
        "needle",
        help="needle in a haystack: depth x length heatmap of retrieval (the paper's needle, RULER's NIAH probes)",
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument("--model", required=True, help="model path or Hub id")
    add_arguments(parser)
    parser.set_defaults(func=_main)
