"""What LongBench-Chat runs amount to: what a run lacks (`shortfall`) and one Markdown table over runs
(`format_summary`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


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
