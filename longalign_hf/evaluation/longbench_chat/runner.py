"""`run_longbench_chat`: generate answers to LongBench-Chat (resumable), judge them (cached), write results and a
summary.

The output folder holds `predictions.jsonl` (one answer per line, written as it is produced: a rerun skips the cases
already answered), `run.json` (the settings that decide the answers: model, tokenizer, data set, generation server or
transformers, --max-length, --max-new-tokens, --temperature, --seed; a rerun with other ones into a folder that holds
answers is refused), `judge_cache/` (a rerun pays no judge call twice), `results.json` (scores on the judge's 1-10
scale, per-case ratings and judge replies, judge model, token usage, settings, how many cases have no score) and
`summary.md`.

A generation or judge call that fails after its retries is logged as a warning; if any case is left without an
answer or a score (or with fewer judge runs than --n-runs), the summary says how many and the command exits with status
1, unless `--allow-incomplete` (then cases without an answer count as unscored). Rerunning the same command retries
just those calls. Every input is checked before anything is written, the model loaded included.

`torch`, `transformers` and `datasets` are imported by the functions that use them, so the `longalign` command can
import this module at once.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from longalign_hf import command_args
from longalign_hf.errors import UserInputError, iter_jsonl
from longalign_hf.evaluation import run_folder
from longalign_hf.evaluation.longbench_chat.cases import DEFAULT_DATASET, load_cases
from longalign_hf.evaluation.longbench_chat.scoring import aggregate_scores, score_predictions
from longalign_hf.evaluation.longbench_chat.summary import format_summary

if TYPE_CHECKING:
    import datasets
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

DEFAULT_JUDGE_MODEL = "gpt-4o-2024-05-13"


def default_output_dir(model: str, root: str | os.PathLike = Path("outputs", "longbench_chat")) -> Path:
    """`root/MODEL`, with the model id or path made a folder name (`org/name` -> `org--name`)."""
    return run_folder.default_output_dir(model, root)


def _read_predictions(path: Path, model: str) -> dict[int, str]:
    """Answers saved by an earlier run of the same model; a last line cut short by a crash is skipped (and redone)."""
    predictions: dict[int, str] = {}
    if not path.exists():
        return predictions
    for number, record in iter_jsonl(path, skip_cut_last_line=True):
        if not (
            isinstance(record, dict)
            and isinstance(record.get("idx"), int)
            and isinstance(record.get("prediction"), str)
            and "model" in record
        ):
            raise UserInputError(
                f"{path}, line {number}: not a saved answer (an object with idx, model and prediction); fix or delete "
                "that line, or pass another --output-dir"
            )
        if record["model"] != model:
            raise UserInputError(
                f"{path}, line {number} holds an answer of {record['model']!r}, not {model!r}: pass another "
                "--output-dir (or delete the file to start over)"
            )
        predictions[record["idx"]] = record["prediction"]
    return predictions


def _generate(
    cases: datasets.Dataset,
    model: str,
    lm: PreTrainedModel | None,
    tok: PreTrainedTokenizerBase,
    save: Callable[[int, str], None],
    *,
    generation_base_url: str | None,
    generation_api_key: str | None,
    generation_concurrency: int,
    max_length: int | None,
    max_new_tokens: int,
    temperature: float,
    seed: int,
    batch_size: int,
) -> None:
    """Answer `cases` with the loaded model `lm`, or with the server at `generation_base_url` (then `lm` is `None`);
    `save(idx, answer)` is called for each answer as it comes. A server call that fails is logged and left out."""
    from longalign_hf.evaluation.generation import (
        generate_chat_answers,
        request_chat_answers,
        serving_client,
        truncate_prompts,
    )

    if generation_base_url is not None:
        client = serving_client(model, generation_base_url, generation_api_key, generation_concurrency,
                                max_new_tokens, temperature, seed)  # fmt: skip
        prompts = truncate_prompts(tok, cases["prompt"], max_length)
        request_chat_answers(client, prompts, on_answer=lambda i, answer: save(cases[i]["idx"], answer))
        return
    logger.info("Loaded %s (%s, attention: %s)", model, lm.dtype, lm.config._attn_implementation)
    generate_chat_answers(
        lm,
        tok,
        cases["prompt"],
        max_new_tokens=max_new_tokens,
        max_length=max_length,
        batch_size=batch_size,
        temperature=temperature,
        seed=seed,
        on_answer=lambda i, answer: save(cases[i]["idx"], answer),
    )


def run_longbench_chat(
    model: str,
    dataset: str = DEFAULT_DATASET,
    config: str = "all",
    output_dir: str | os.PathLike | None = None,
    max_length: int | None = 64_000,
    max_new_tokens: int = 1024,
    temperature: float = 1.0,
    seed: int = 42,
    batch_size: int = 1,
    dtype: str = "auto",
    attn_implementation: str | None = None,
    tokenizer: str | None = None,
    generation_base_url: str | None = None,
    generation_api_key: str | None = None,
    generation_concurrency: int = 8,
    judge_model: str = DEFAULT_JUDGE_MODEL,
    judge_base_url: str | None = None,
    judge_api_key: str | None = None,
    judge_concurrency: int = 8,
    judge_timeout: float = 120.0,
    judge_max_retries: int = 5,
    judge_cache_dir: str | os.PathLike | None = None,
    n_runs: int = 2,
    limit: int | None = None,
    flatten_newlines: bool = True,
) -> dict[str, Any]:
    """Evaluate `model` on LongBench-Chat: generate (resumable), judge (cached), write results; returns them.

    See the command's `add_arguments` (`longalign_hf.evaluation.longbench_chat.command`) for each option (the CLI's
    help) and the module docstring for the output folder. Every input is checked before anything is written: the
    options and paths, the judge client (a missing API key fails before any generation), then the data set, the saved
    answers, the settings, the tokenizer and the model. The results say how many cases have no answer
    (`num_unanswered`: the generation server failed for them), no score (`num_unscored`: every judge run failed, or no
    answer) or fewer judge runs than `n_runs` (`num_partly_scored`); the command exits with status 1 when any is not
    0, unless `--allow-incomplete`.
    """
    from longalign_hf.evaluation.generation import check_model_options, check_served_options
    from longalign_hf.llm_client import ChatClient

    for name, value in (
        ("max_new_tokens", max_new_tokens),
        ("batch_size", batch_size),
        ("n_runs", n_runs),
        ("generation_concurrency", generation_concurrency),
        ("judge_concurrency", judge_concurrency),
    ):
        if value < 1:
            raise UserInputError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    if limit is not None and limit < 1:
        raise UserInputError(f"--limit must be at least 1, got {limit}")
    if max_length is not None and max_length < 1:
        raise UserInputError(f"--max-length must be at least 1 (0 on the command line: never cut), got {max_length}")
    if temperature < 0:
        raise UserInputError(f"--temperature must be at least 0, got {temperature}")
    if not judge_timeout > 0:
        raise UserInputError(f"--judge-timeout must be above 0 seconds, got {judge_timeout}")
    if judge_max_retries < 0:
        raise UserInputError(f"--judge-max-retries must be 0 or more, got {judge_max_retries}")
    if generation_base_url is not None:
        check_served_options(dtype, attn_implementation, batch_size)
    else:
        check_model_options(dtype, attn_implementation)
    output_dir = Path(output_dir) if output_dir is not None else default_output_dir(model)
    command_args.check_can_create(output_dir, "--output-dir")
    if judge_cache_dir is not None:
        command_args.check_can_create(judge_cache_dir, "--judge-cache-dir")
    judge = ChatClient(
        judge_model,
        base_url=judge_base_url,
        api_key=judge_api_key,
        max_concurrency=judge_concurrency,
        timeout=judge_timeout,
        max_retries=judge_max_retries,
        cache_dir=judge_cache_dir or output_dir / "judge_cache",
    )
    cases = load_cases(dataset, config)
    if limit is not None:
        cases = cases.select(range(min(limit, len(cases))))
    logger.info("LongBench-Chat: %d cases from %s (config %s)", len(cases), dataset, config)

    # The settings that decide the answers (not the batch size, dtype or attention backend, which change numerics).
    settings = {
        "model": model,
        "tokenizer": tokenizer,
        "dataset": str(Path(dataset).expanduser().resolve()) if Path(dataset).expanduser().exists() else dataset,
        "generation": "server" if generation_base_url is not None else "transformers",
        "max_length": max_length,
        "max_new_tokens": max_new_tokens,
        "temperature": temperature,
        "seed": seed,
    }
    predictions_path = output_dir / "predictions.jsonl"
    predictions = _read_predictions(predictions_path, model)
    run_folder.check_settings(output_dir, settings, has_answers=bool(predictions))
    todo = cases.select([i for i, idx in enumerate(cases["idx"]) if idx not in predictions])
    lm = None
    if len(todo):
        from longalign_hf.evaluation.generation import load_causal_lm, load_tokenizer

        tok = load_tokenizer(tokenizer or model)
        if generation_base_url is None:  # loaded before anything is written: a model that fails leaves nothing
            lm = load_causal_lm(model, dtype, attn_implementation)
    if judge_cache_dir is not None:  # the first write: a folder that cannot be made leaves nothing behind
        command_args.make_folder(judge_cache_dir, "--judge-cache-dir")
    run_folder.write_settings(output_dir, settings)

    if len(todo):
        logger.info("Generating %d answers (%d already in %s)", len(todo), len(cases) - len(todo), predictions_path)
        with run_folder.open_for_append(predictions_path) as f:

            def save(idx: int, prediction: str) -> None:
                f.write(json.dumps({"idx": idx, "model": model, "prediction": prediction}, ensure_ascii=False) + "\n")
                f.flush()
                predictions[idx] = prediction

            _generate(
                todo,
                model,
                lm,
                tok,
                save,
                generation_base_url=generation_base_url,
                generation_api_key=generation_api_key,
                generation_concurrency=generation_concurrency,
                max_length=max_length,
                max_new_tokens=max_new_tokens,
                temperature=temperature,
                seed=seed,
                batch_size=batch_size,
            )
    answers: list[str | None] = [predictions.get(idx) for idx in cases["idx"]]
    unanswered = [idx for idx, answer in zip(cases["idx"], answers) if answer is None]
    if unanswered:
        logger.warning(
            "No answer for cases %s (the generation failed, see the warnings above): they are left unscored; rerun "
            "the same command to retry them.",
            unanswered,
        )
    scores = _score_answered(cases, answers, judge, n_runs=n_runs, seed=seed, flatten_newlines=flatten_newlines)
    results = {
        "model": model,
        "dataset": dataset,
        "config": config,
        "num_cases": len(cases),
        "generation": {
            "via": generation_base_url or "transformers",
            "max_length": max_length,
            "max_new_tokens": max_new_tokens,
            "temperature": temperature,
            "seed": seed,
        },
        "judge_settings": {
            "base_url": judge_base_url,
            "temperature": judge.temperature,
            "n_runs": n_runs,
            "flatten_newlines": flatten_newlines,
        },
        **{key: scores[key] for key in ("score", "language_scores", "num_scored", "num_failed", "failures", "usage")},
        "num_unanswered": len(unanswered),
        "num_unscored": len(cases) - scores["num_scored"],
        "num_partly_scored": sum(
            score is not None and None in ratings for score, ratings in zip(scores["scores"], scores["ratings"])
        ),
        "judge_model": scores["judge_model"],
        "cases": [
            {
                "idx": case["idx"],
                "language": case["language"],
                "length": case["length"],
                "score": scores["scores"][i],
                "ratings": scores["ratings"][i],
                "prediction": answers[i],
                "judge_replies": scores["judge_replies"][i],
            }
            for i, case in enumerate(cases)
        ],
    }
    (output_dir / "results.json").write_text(json.dumps(results, indent=2, ensure_ascii=False), encoding="utf-8")
    (output_dir / "summary.md").write_text(format_summary([results]) + "\n", encoding="utf-8")
    logger.info("Wrote %s and %s", output_dir / "results.json", output_dir / "summary.md")
    return results


def _score_answered(
    cases: datasets.Dataset,
    answers: Sequence[str | None],
    judge: Any,
    *,
    n_runs: int,
    seed: int,
    flatten_newlines: bool,
) -> dict[str, Any]:
    """`score_predictions` over the cases that have an answer; a case without one gets no rating, no judge call."""
    answered = [i for i, answer in enumerate(answers) if answer is not None]
    subset = cases.select(answered)
    scores = score_predictions(
        [answers[i] for i in answered],
        subset["answer"],
        subset["query"],
        subset["few_shots"],
        cases[0]["judge_template"],
        judge,
        languages=subset["language"],
        n_runs=n_runs,
        seed=seed,
        flatten_newlines=flatten_newlines,
    )
    if len(answered) == len(answers):
        return scores
    ratings: list[list[float | None]] = [[None] * n_runs for _ in answers]
    replies: list[list[str | None]] = [[None] * n_runs for _ in answers]
    for position, i in enumerate(answered):
        ratings[i], replies[i] = scores["ratings"][position], scores["judge_replies"][position]
    for failure in scores["failures"]:  # indices into `cases`, as with every case answered
        failure["index"] = answered[failure["index"]]
    return {**scores, **aggregate_scores(ratings, cases["language"]), "ratings": ratings, "judge_replies": replies}
