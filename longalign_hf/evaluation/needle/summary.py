"""What a needle run amounts to: mean scores per probe, length and depth (`summarize`), what it lacks (`shortfall`),
its Markdown summary (`format_summary`) and its section of the model card (`card_section`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from statistics import mean
from typing import Any

from longalign_hf.evaluation.needle.probes import DEPTH_TOLERANCE
from longalign_hf.public_names import public_name


def _mean_by(records: Sequence[dict[str, Any]], key: str, value_key: str) -> dict[str, float]:
    groups: dict[Any, list[float]] = {}
    for record in records:
        if record.get(value_key) is not None:
            groups.setdefault(record[key], []).append(record[value_key])
    return {_label(group): mean(values) for group, values in sorted(groups.items())}


def _label(number: float) -> str:
    """`1000` -> `"1000"`, `50.0` -> `"50"`, `12.5` -> `"12.5"`: keys of the per-length and per-depth scores."""
    return str(int(number)) if float(number).is_integer() else str(number)


def summarize(records: Sequence[dict[str, Any]], value_key: str) -> dict[str, Any]:
    """The mean of `value_key` over the records that have one (overall, per length, per depth) and their number."""
    values = [record[value_key] for record in records if record.get(value_key) is not None]
    return {
        "mean": mean(values) if values else None,
        "num_scored": len(values),
        "by_length": _mean_by(records, "length", value_key),
        "by_depth": _mean_by(records, "depth", value_key),
    }


def off_depth(record: dict[str, Any]) -> bool:
    """Whether the (asked) needle reached a depth more than `DEPTH_TOLERANCE` points from the asked one."""
    return abs((record.get("needle_depths") or [record["depth"]])[0] - record["depth"]) > DEPTH_TOLERANCE


def shortfall(results: dict[str, Any]) -> str | None:
    """What a `run_needle` result lacks, as one sentence; `None` when nothing is missing."""
    missing = []
    if results.get("num_unanswered"):
        missing.append(
            f"{results['num_unanswered']} of {results['num_cells']} cells have no answer (the generation server "
            "failed for them)"
        )
    if results["num_unscored"]:
        num_single = results["judge_scores"]["single"]["num_scored"] + results["num_unscored"]
        missing.append(
            f"{results['num_unscored']} of {num_single} single-needle answers have no rating from the judge "
            f"{results['judge_model']}"
        )
    return f"{results['model']}: {'; '.join(missing)}" if missing else None


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


def card_section(results: dict[str, Any], images: Sequence[str], date: str) -> str:
    """The needle section of a model card: what was run (`date`: when), the heatmaps (`images`: file names next to
    the card) and the `format_summary` table. A local model or judge is named by its folder name only
    (`public_name`): a card is published."""
    results = {**results, "model": public_name(results["model"])}
    if results.get("judge_model"):
        results["judge_model"] = public_name(results["judge_model"])
    settings = results["settings"]
    haystack = f"the .txt files of `{Path(settings['haystack']).name}/`"
    if settings["haystack"] == "pydoc_data.topics":
        haystack = "the Python documentation"
    table, _, notes = format_summary(results).partition("\n\n")
    probes = ", ".join(results["scores"])
    sampling = "greedy" if settings["temperature"] == 0 else f"sampled at temperature {settings['temperature']:g}"
    judge = ""
    if results.get("judge_model"):
        judge = f"; the judge `{results['judge_model']}` also rated the single needle 1-10"
    lines = [
        "### Needle in a haystack",
        "",
        f"`longalign eval needle`, {date}: probes {probes} at {len(results['depths'])} depths of {haystack} cut to "
        f"prompts of {', '.join(map(_label, results['lengths']))} tokens; answers {sampling}, at most "
        f"{settings['max_new_tokens']} new tokens. A score is the fraction of the expected facts found in the answer "
        f"(0-1){judge}.",
        "",
        *(f"![needle heatmap: {name.removesuffix('.png').split('heatmap_')[-1]}]({name})" for name in images),
        "",
        table,
        "",
        *(f"- {note}" for note in notes.splitlines() if note),  # a list: lines of one paragraph would run together
    ]
    return "\n".join(lines).rstrip()
