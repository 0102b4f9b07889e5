"""What LongBench-Chat runs amount to: what a run lacks (`shortfall`), one Markdown table over runs
(`format_summary`), and a run's section and `model-index` entry in the model card (`card_key`, `card_section`,
`model_index_result`)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from longalign_hf.public_names import public_name


def shortfall(results: dict[str, Any]) -> str | None:
    """What a `run_longbench_chat` result lacks, as one sentence ("2 of 12 cases have no score ..."); `None` if
    every case has an answer and all its judge runs."""
    unanswered = results.get("num_unanswered", 0)
    unrated = results["num_unscored"] - unanswered  # answered, but every judge run failed
    if not unanswered and not unrated and not results["num_partly_scored"]:
        return None
    parts = []
    if unanswered:
        parts.append(f"{unanswered} of {results['num_cases']} cases have no answer (the generation failed)")
    if unrated:
        parts.append(f"{unrated} of {results['num_cases']} cases have no score")
    if results["num_partly_scored"]:
        runs = results["judge_settings"]["n_runs"]
        parts.append(f"{results['num_partly_scored']} were rated in fewer than {runs} judge runs")
    judge_note = (
        f" ({results['num_failed']} judge calls failed; see `failures` in results.json)"
        if results["num_failed"]
        else ""
    )
    return f"{results['model']}: {' and '.join(parts)}{judge_note}"


def format_summary(results: Sequence[dict[str, Any]]) -> str:
    """A Markdown table with one row per results of `run_longbench_chat`: mean score on the judge's 1-10 scale,
    overall and per language, cases scored, failed judge calls, judge model and judge tokens spent; then a line for
    each result with cases left unscored."""

    def number(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}"

    languages = sorted({language for result in results for language in result["language_scores"]})
    header = [
        "model",
        "score (1-10)",
        *(f"{language} (1-10)" for language in languages),
        "cases scored",
        "failed judge calls",
        "judge",
        "judge tokens",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for result in results:
        row = [
            result["model"],
            number(result["score"]),
            *(number(result["language_scores"].get(language)) for language in languages),
            f"{result['num_scored']}/{result['num_cases']}",
            str(result["num_failed"]),
            f"{result['judge_model']} x{result['judge_settings']['n_runs']}",
            f"{result['usage']['total_tokens']} ({result['usage']['cached']} cached calls)",
        ]
        lines.append("| " + " | ".join(row) + " |")
    lines.append(
        "\nScores are means of the judge's 1-10 ratings over the scored cases (the released script sums them)."
    )
    lines += [f"**Incomplete:** {note}." for note in map(shortfall, results) if note is not None]
    return "\n".join(lines)


def _public(results: dict[str, Any]) -> dict[str, Any]:
    """`results` with the model, data set and judge named as a published card may name them (`public_name`): a local
    folder or file by its name only."""
    return {**results, **{key: public_name(results[key]) for key in ("model", "dataset", "judge_model")}}


def card_key(results: dict[str, Any]) -> str:
    """The model card section of a run: one per data set configuration and judge, so a rerun replaces its own.

    >>> card_key({"config": "all", "judge_model": "gpt-4o-2024-05-13"})
    'longbench-chat:all:gpt-4o-2024-05-13'
    """
    judge = re.sub(r"[^\w.:/@+-]", "_", public_name(results["judge_model"]))
    judge = re.sub(r"-{2,}", "-", judge)  # HTML comments allow no "--"
    return f"longbench-chat:{results['config']}:{judge}"


def card_section(results: dict[str, Any], date: str) -> str:
    """The LongBench-Chat section of a model card: what was run (`date`: when) and the `format_summary` table; a local
    model, data set or judge is named by its folder or file name only."""
    results = _public(results)
    generation = results["generation"]
    via = "transformers" if generation["via"] == "transformers" else "a generation server"
    cut = f"prompts over {generation['max_length']:,} tokens cut in the middle" if generation["max_length"] else ""
    lines = [
        f"### LongBench-Chat ({results['config']}, judge {results['judge_model']})",
        "",
        f"`longalign eval longbench-chat`, {date}: {results['num_cases']} cases of `{results['dataset']}` "
        f"(configuration {results['config']}), answered through {via} at temperature {generation['temperature']:g} "
        f"(at most {generation['max_new_tokens']} new tokens, seed {generation['seed']}{'; ' + cut if cut else ''}), "
        f"rated 1-10 by `{results['judge_model']}` in {results['judge_settings']['n_runs']} runs, averaged.",
        "",
        format_summary([results]),
    ]
    return "\n".join(lines)


def model_index_result(results: dict[str, Any], date: str, dataset_type: str):
    """The run's score as a `huggingface_hub.EvalResult`, the `model-index` entry the Hub shows: the mean rating on
    the judge's 1-10 scale, with the judge model, its runs and the date (`metric_args`). `dataset_type` is the data
    set's Hub id (or another identifier when it was read from a local folder)."""
    from huggingface_hub import EvalResult

    results = _public(results)
    return EvalResult(
        task_type="text-generation",
        task_name="Long-context instruction following",
        dataset_type=dataset_type,
        dataset_name="LongBench-Chat",
        dataset_config=results["config"],
        dataset_split="test",
        metric_type="longbench_chat",
        metric_name=f"LongBench-Chat score (1-10, judge {results['judge_model']})",
        metric_value=round(results["score"], 2),
        metric_config=results["judge_model"],
        metric_args={
            "scale": "1-10",
            "judge_model": results["judge_model"],
            "judge_runs": results["judge_settings"]["n_runs"],
            "cases": results["num_cases"],
            "date": date,
        },
    )
