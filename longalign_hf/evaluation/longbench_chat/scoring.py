"""LongBench-Chat scoring as plain functions: the judge prompt, the rating parse, the aggregation.

LongBench-Chat (Bai et al., 2024, "LongAlign") asks a judge LLM to rate an answer 1-10 given the short question,
the reference answer and scored example answers (few-shot). The judge prompt template is the benchmark's own
`prompt_fs.txt`, read from the source files at run time and carried in the built dataset's `judge_template` column:
it has positional `{}` slots for the question, the reference, (answer, score) for each example, and the answer to
rate. The `evaluate` metric (`longalign_hf/metrics/longbench_chat`) and `longalign eval longbench-chat` are thin
wrappers around `score_predictions`, which alone decides the text the judge sees (`answer_for_judge`): the same
prediction gives the same judge request from either.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from statistics import mean
from typing import Any

from longalign_hf.data.longbench_chat.format import detect_language, few_shot_slots
from longalign_hf.errors import UserInputError
from longalign_hf.llm_client import ChatClient, total_usage

JUDGE_SYSTEM_PROMPT = "You're a good assistant at evaluating the quality of texts."


_RATING_BRACKETS = re.compile(r"\[\[([^\]]+)\]\]")
_NUMBER = re.compile(r"\d+\.\d+|\d+")
_LINE_BREAK = re.compile(r"\r\n|\r|\n")


def build_judge_prompt(
    template: str,
    question: str,
    reference: str,
    few_shots: Sequence[dict[str, Any]],
    prediction: str,
    shuffle_seed: str | int | None = None,
) -> str:
    """Fill the judge prompt template (`prompt_fs.txt`) for one answer.

    Args:
        template: the benchmark's judge prompt template (see `few_shot_slots`).
        question: the short query (not the long prompt: the judge never sees the document).
        reference: the reference answer.
        few_shots: the case's scored examples, `{"answer": str, "score": int}` each.
        prediction: the answer to rate.
        shuffle_seed: if given, the examples are shown in an order shuffled by `random.Random(shuffle_seed)`, as the
            paper does per judge run; `None` keeps the file's order, as the released script does.
    """
    shots = list(few_shots)
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(shots)
    values = [question, reference]
    for shot in shots:
        values += [shot["answer"], shot["score"]]
    return template.format(*values, prediction)


def answer_for_judge(prediction: str, flatten_newlines: bool = True) -> str:
    """The answer as the judge sees it: stripped and, by default, with every line break made one space.

    The released script wrote each answer on one line (`response.strip().replace('\\n', ' ')`) and read it back
    stripped, so the paper's judge saw flattened answers. `\\r\\n` and `\\r` count as one line break here (the
    script would have split such an answer over two lines when reading it back).

    >>> answer_for_judge("  First line.\\r\\nSecond line.\\n")
    'First line. Second line.'
    >>> answer_for_judge("First line.\\nSecond line.", flatten_newlines=False)
    'First line.\\nSecond line.'
    """
    text = prediction.strip()
    return _LINE_BREAK.sub(" ", text) if flatten_newlines else text


def parse_rating(reply: str) -> float | None:
    """The judge's rating as the paper parses it: the first number in the last `[[...]]`; `None` if there is none.

    `"Rating: [[7.5]]"` gives 7.5 and `"[[8]] ... [[6]]"` gives 6. No range check is applied, as in the paper.
    """
    brackets = _RATING_BRACKETS.findall(reply)
    if not brackets:
        return None
    numbers = _NUMBER.findall(brackets[-1])
    return float(numbers[0]) if numbers else None


def aggregate_scores(ratings: Sequence[Sequence[float | None]], languages: Sequence[str]) -> dict[str, Any]:
    """Average per-run ratings per sample, then over samples and per language, leaving failed ratings out.

    Args:
        ratings: one list per sample of its ratings per judge run, `None` where the judge gave no rating.
        languages: one language per sample.

    Returns:
        `{"score", "scores", "language_scores", "num_scored"}`: a sample's score is the mean of its parsed ratings
        (`None` if every run failed); `score` is the mean over scored samples (1-10; the released script reports the
        sum instead); a language with no scored sample maps to `None`.
    """
    scores = []
    for sample_ratings in ratings:
        parsed = [rating for rating in sample_ratings if rating is not None]
        scores.append(mean(parsed) if parsed else None)
    by_language: dict[str, list[float]] = {language: [] for language in sorted(set(languages))}
    for score, language in zip(scores, languages, strict=True):
        if score is not None:
            by_language[language].append(score)
    scored = [score for score in scores if score is not None]
    return {
        "score": mean(scored) if scored else None,
        "scores": scores,
        "language_scores": {language: mean(values) if values else None for language, values in by_language.items()},
        "num_scored": len(scored),
    }


def score_predictions(
    predictions: Sequence[str],
    references: Sequence[str],
    questions: Sequence[str],
    few_shots: Sequence[Sequence[dict[str, Any]]],
    judge_template: str,
    judge: ChatClient,
    languages: Sequence[str] | None = None,
    n_runs: int = 2,
    seed: int = 42,
    flatten_newlines: bool = True,
) -> dict[str, Any]:
    """Judge every prediction `n_runs` times with shuffled few-shot examples and aggregate the ratings.

    The judge sees each prediction as `answer_for_judge(prediction, flatten_newlines)` makes it: stripped, with line
    breaks made spaces as in the released script (`flatten_newlines=False` keeps them). A reply with no parsable rating is asked again (`judge.max_retries` times); if it still has none, that run is
    reported in `failures` and left out of the means, never scored as 0. Each run's example order is seeded by
    `seed`, the run number and the case's question and reference, so the same case gets the same judge prompts in
    any subset or config (and hits the judge cache).

    Returns:
        The keys of `aggregate_scores` plus `ratings` (per sample, per run), `judge_replies` (per sample, per run),
        `num_failed` and `failures` (one `{"index", "run", "error", "reply"}` per failed judge call), `usage`
        (see `total_usage`), `judge_model`, `n_runs` and `flatten_newlines`.
    """
    count = len(predictions)
    for name, values in (("references", references), ("questions", questions), ("few_shots", few_shots)):
        if len(values) != count:
            raise UserInputError(f"Got {count} predictions but {len(values)} {name}: pass one per prediction.")
    if languages is not None and len(languages) != count:
        raise UserInputError(f"Got {count} predictions but {len(languages)} languages: pass one per prediction.")
    if n_runs < 1:
        raise UserInputError(f"`n_runs` must be at least 1, got {n_runs}.")
    slots = few_shot_slots(judge_template)
    for index, shots in enumerate(few_shots):
        if len(shots) != slots:
            raise UserInputError(
                f"Sample {index} has {len(shots)} few-shot examples but the judge template takes {slots}: pass the "
                "case's `few_shots` from the same LongBench-Chat release as the template."
            )
    languages = list(languages) if languages is not None else [detect_language(question) for question in questions]
    answers = [answer_for_judge(prediction, flatten_newlines) for prediction in predictions]

    calls = [(run, index) for run in range(n_runs) for index in range(count)]
    messages_list = [
        [
            {"role": "system", "content": JUDGE_SYSTEM_PROMPT},
            {
                "role": "user",
                "content": build_judge_prompt(
                    judge_template,
                    questions[index],
                    references[index],
                    few_shots[index],
                    answers[index],
                    shuffle_seed=f"{seed}:{run}:{questions[index]}:{references[index]}",
                ),
            },
        ]
        for run, index in calls
    ]
    results = judge.complete(
        messages_list,
        validate=lambda reply: parse_rating(reply) is not None,
        desc="judging",
        invalid_reason="no rating [[n]] in it",
    )

    ratings: list[list[float | None]] = [[None] * n_runs for _ in range(count)]
    replies: list[list[str | None]] = [[None] * n_runs for _ in range(count)]
    failures = []
    for (run, index), result in zip(calls, results, strict=True):
        replies[index][run] = result.text
        if result.error is None:
            ratings[index][run] = parse_rating(result.text)
        else:
            failures.append({"index": index, "run": run, "error": result.error, "reply": result.text})
    return {
        **aggregate_scores(ratings, languages),
        "ratings": ratings,
        "judge_replies": replies,
        "num_failed": len(failures),
        "failures": failures,
        "usage": total_usage(results),
        "judge_model": judge.model,
        "n_runs": n_runs,
        "flatten_newlines": flatten_newlines,
    }
