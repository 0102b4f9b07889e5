"""The needle probes: what a cell (length, depth, probe) asks, its prompt (`build_needle_prompt`) and the judge-free
score of an answer (`match_fraction`).

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
"""

from __future__ import annotations

import logging
import random
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from longalign_hf.errors import UserInputError
from longalign_hf.evaluation.generation import chat_text
from longalign_hf.evaluation.needle.haystack import Haystack

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

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
# How far (percentage points of the haystack) a needle may land from its asked depth; see the module docstring.
DEPTH_TOLERANCE = 2.0
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


def check_probe(probe: str, num_needles: int, key_type: str, value_type: str) -> None:
    """Refuse an unknown probe, a RULER probe with fewer than 2 needles, or an unknown key or value type."""
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
    check_probe(probe, num_needles, key_type, value_type)
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
