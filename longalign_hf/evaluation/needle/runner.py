"""`run_needle`: the needle probes over a model, lengths x depths: build the prompts, generate (resumable), score,
judge (optional), write the results, the summary and the heatmaps.

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

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from longalign_hf import command_args
from longalign_hf.errors import UserInputError, iter_jsonl
from longalign_hf.evaluation import run_folder
from longalign_hf.evaluation.generation import (
    check_model_options,
    check_served_options,
    load_causal_lm,
    load_model_config,
    load_tokenizer,
    serving_client,
)
from longalign_hf.evaluation.longbench_chat.scoring import parse_rating
from longalign_hf.evaluation.needle.answering import build_prompts, generate, record_cell, request
from longalign_hf.evaluation.needle.haystack import load_haystack
from longalign_hf.evaluation.needle.heatmap import plot_heatmap
from longalign_hf.evaluation.needle.probes import (
    DEFAULT_LENGTHS,
    DEFAULT_NUM_DEPTHS,
    DEPTH_TOLERANCE,
    PAPER_NEEDLE,
    PAPER_QUESTION,
    PROBES,
    check_probe,
    depth_grid,
)
from longalign_hf.evaluation.needle.summary import format_summary, off_depth, summarize
from longalign_hf.llm_client import ChatClient, total_usage
from longalign_hf.public_names import public_name

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

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


def judge_needle_answers(
    client: ChatClient, answers: Sequence[str], reference: str = PAPER_NEEDLE, question: str = PAPER_QUESTION
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


def _read_records(path: Path, model: str) -> dict[tuple[str, int, float], dict[str, Any]]:
    """Records of an earlier run; a last line cut short by a crash is skipped (and redone)."""
    records: dict[tuple[str, int, float], dict[str, Any]] = {}
    if not path.exists():
        return records
    for number, record in iter_jsonl(path, skip_cut_last_line=True):
        try:
            cell = record_cell(record)
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
    generation_base_url: str | None = None,
    generation_api_key: str | None = None,
    generation_concurrency: int = 8,
) -> dict[str, Any]:
    """Run the needle probes on `model` over lengths x depths (resumable), score, draw heatmaps; returns the results.

    `model` is a path or Hub id, or a loaded model (then pass `tokenizer`). `depths` is a count of depths evenly spaced
    from 0 to 100% (`depth_grid`) or the depths themselves. Lengths whose prompt plus `max_new_tokens` exceed the
    model's context window (`max_model_length`, by default the config's `max_position_embeddings`) are skipped with a
    warning and listed under `skipped` in the results; if every length is, it is an error. Every input is checked
    before anything is written. With `generation_base_url` the answers come from that OpenAI-compatible server (which
    must serve `model` under that name; the tokenizer, `tokenizer` or else `model`, still measures the prompts), the
    window is `max_model_length` (unset: no length is skipped, and the server refuses what it cannot take), and
    `num_unanswered` counts the cells the server did not answer after its retries (a rerun asks for them again). With
    a judge, `num_unscored` counts the single-needle answers it could not rate (0 without one; the command exits with
    status 1 when either is not 0); `num_off_depth` counts the needles more than
    `DEPTH_TOLERANCE` points from their asked depth. See the command's `add_arguments`
    (`longalign_hf.evaluation.needle.command`) for the other options, `longalign_hf.evaluation.needle.probes` for how
    the prompts are built, and the module docstring for the output folder.

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
        check_probe(probe, num_needles, key_type, value_type)
    for name, value in (
        ("max_new_tokens", max_new_tokens),
        ("batch_size", batch_size),
        ("generation_concurrency", generation_concurrency),
    ):
        if value < 1:
            raise UserInputError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    if temperature < 0:
        raise UserInputError(f"--temperature must be at least 0, got {temperature}")
    served = generation_base_url is not None
    if served and not isinstance(model, str):
        raise ValueError("With `generation_base_url`, `model` is the name the server serves, not a loaded model.")
    if served:
        check_served_options(dtype, attn_implementation, batch_size)
    elif isinstance(model, str):
        check_model_options(dtype, attn_implementation)
    output_dir = Path(output_dir) if output_dir is not None else default_output_dir(model_name)
    command_args.check_can_create(output_dir, "--output-dir")
    # Every input is checked before anything is written: nothing half-made refuses the corrected rerun.
    judge = None
    if judge_model is not None and "single" not in probes:
        logger.warning("The judge rates the single probe only, which is not run: no judge score.")
    elif judge_model is not None:  # made first, so a missing API key fails before any generation
        judge = ChatClient(
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
    if served:  # only then: the folders of local runs keep the settings they were made with
        settings["generation"] = "server"
    records_path = output_dir / "needle.jsonl"
    records = _read_records(records_path, model_name)
    run_folder.check_settings(output_dir, settings, has_answers=bool(records))

    window = max_model_length if served else _context_window(_model_config(model), max_model_length)
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
    prompts = build_prompts(tok, haystack_text, todo, seed, num_needles, key_type, value_type) if todo else {}
    # The model loads before anything is written too: a checkpoint or backend that fails leaves nothing behind.
    if todo and isinstance(model, str) and not served:
        model = load_causal_lm(model, dtype, attn_implementation)
    run_folder.write_settings(output_dir, settings)
    if todo and served:
        logger.info("Needle: %d records to ask %s for (%d already in %s)", len(todo), generation_base_url,
                    len(cells) - len(todo), records_path)  # fmt: skip
        client = serving_client(model_name, generation_base_url, generation_api_key, generation_concurrency,
                                max_new_tokens, temperature, seed)  # fmt: skip
        request(client, prompts, records, records_path, model_name=model_name)
    elif todo:
        logger.info("Needle: %d records to make (%d already in %s)", len(todo), len(cells) - len(todo), records_path)
        generate(
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

    kept = [records[cell] for cell in cells if cell in records]
    unanswered = [cell for cell in cells if cell not in records]
    if unanswered:
        logger.warning(
            "No answer for %d of %d cells (the server failed for them, see the warnings above): they are left out of "
            "the scores and heatmaps; rerun the same command to ask for them again.", len(unanswered), len(cells)
        )  # fmt: skip
    results: dict[str, Any] = {"model": model_name, "settings": settings, "lengths": lengths, "depths": depths}
    results["skipped"] = skipped
    results["num_cells"], results["num_unanswered"] = len(cells), len(unanswered)
    results["scores"] = {probe: summarize([r for r in kept if r["probe"] == probe], "score") for probe in probes}
    results["num_unscored"] = 0
    if judge is not None:  # ratings are cached in the output folder: a rerun pays for new answers only
        single = [record for record in kept if record["probe"] == "single"]
        ratings, usage = judge_needle_answers(judge, [record["answer"] for record in single])
        for record, rating in zip(single, ratings):
            record["judge_rating"] = rating
        results["judge_model"], results["judge_usage"] = judge.model, usage
        results["judge_scores"] = {"single": summarize(single, "judge_rating")}
        results["num_unscored"] = sum(rating is None for rating in ratings)
    results["depth_tolerance"] = DEPTH_TOLERANCE
    results["num_off_depth"] = sum(off_depth(record) for record in kept)

    heatmaps = []  # (file name, records, title, value key): drawn if some record has a value to show
    shown = public_name(model_name)  # the heatmaps go into the model card: no local path in their titles
    for probe in probes:
        probe_records = [record for record in kept if record["probe"] == probe]
        heatmaps.append((f"heatmap_{probe}.png", probe_records, f"{shown}: {probe} needle (score 0-1)", "score"))
        if judge is not None and probe == "single":
            title = f"{shown}: single needle ({public_name(judge.model)} rating 1-10)"
            heatmaps.append(("heatmap_single_judge.png", probe_records, title, "judge_rating"))
    drawable = [heatmap for heatmap in heatmaps if any(record.get(heatmap[3]) is not None for record in heatmap[1])]
    results["heatmaps"] = [heatmap[0] for heatmap in drawable]
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


def _model_config(model: str | PreTrainedModel) -> Any:
    return load_model_config(model) if isinstance(model, str) else model.config
