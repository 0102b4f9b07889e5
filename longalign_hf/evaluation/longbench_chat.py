"""`longalign eval longbench-chat`: generate answers to LongBench-Chat, judge them, write results and a summary.

```
longalign eval longbench-chat --model THUDM/LongAlign-7B-64k --judge-model gpt-4o-2024-05-13
longalign eval longbench-chat --model my-org/model --generation-base-url http://localhost:8000/v1 \
    --judge-model Qwen/Qwen2.5-72B-Instruct --judge-base-url http://localhost:8001/v1
```

The output folder holds `predictions.jsonl` (one answer per line, written as it is produced: a rerun skips the cases
already answered), `judge_cache/` (a rerun pays no judge call twice), `results.json` (scores, per-case ratings and
judge replies, judge model, token usage, settings) and `summary.md`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import datasets
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from longalign_hf.evaluation.generation import generate_chat_answers, request_chat_answers, truncate_prompts
from longalign_hf.judge import JudgeClient
from longalign_hf.longbench_chat import score_predictions

logger = logging.getLogger(__name__)

DEFAULT_DATASET = "longalign-hf/LongBench-Chat"
DEFAULT_JUDGE_MODEL = "gpt-4o-2024-05-13"
_COLUMNS = {"idx", "query", "prompt", "answer", "few_shots", "language", "length", "judge_template"}


def default_output_dir(model: str, root: str | os.PathLike = Path("outputs", "longbench_chat")) -> Path:
    """`root/MODEL`, with the model id or path made a folder name (`org/name` -> `org--name`)."""
    return Path(root, re.sub(r"[^A-Za-z0-9._-]+", "--", model.strip("/")))


def _read_predictions(path: Path, model: str) -> dict[int, str]:
    """Answers saved by an earlier run of the same model; a line cut short by a crash is dropped (and redone)."""
    predictions: dict[int, str] = {}
    if not path.exists():
        return predictions
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        try:
            record = json.loads(line)
            idx, prediction, saved_model = int(record["idx"]), str(record["prediction"]), record["model"]
        except (ValueError, KeyError, TypeError):
            logger.warning("%s line %d is not a saved prediction (cut short by a crash?); it is redone.", path, number)
            continue
        if saved_model != model:
            raise ValueError(
                f"{path} line {number} holds an answer of {saved_model!r}, not {model!r}: pass another --output-dir "
                "(or delete the file to start over)."
            )
        predictions[idx] = prediction
    return predictions


def _generate(
    cases: datasets.Dataset,
    model: str,
    save: Callable[[int, str], None],
    *,
    tokenizer: str | None,
    generation_base_url: str | None,
    generation_api_key: str | None,
    generation_concurrency: int,
    max_length: int | None,
    max_new_tokens: int,
    temperature: float,
    seed: int,
    batch_size: int,
    dtype: str,
    attn_implementation: str | None,
) -> None:
    tok = AutoTokenizer.from_pretrained(tokenizer or model)
    if generation_base_url is not None:
        client = JudgeClient(
            model,
            base_url=generation_base_url,
            api_key=generation_api_key,
            temperature=temperature,
            max_concurrency=generation_concurrency,
            max_tokens=max_new_tokens,
            seed=seed,
        )
        prompts = truncate_prompts(tok, cases["prompt"], max_length)
        request_chat_answers(client, prompts, on_answer=lambda i, answer: save(cases[i]["idx"], answer))
        return
    lm = AutoModelForCausalLM.from_pretrained(
        model,
        dtype=dtype,
        attn_implementation=attn_implementation,
        device_map="auto" if torch.cuda.is_available() else None,
    ).eval()
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

    See `add_arguments` for each option (the CLI's help) and the module docstring for the output folder. The
    judge client is made first, so a missing API key fails before any generation.
    """
    output_dir = Path(output_dir) if output_dir is not None else default_output_dir(model)
    judge = JudgeClient(
        judge_model,
        base_url=judge_base_url,
        api_key=judge_api_key,
        max_concurrency=judge_concurrency,
        timeout=judge_timeout,
        max_retries=judge_max_retries,
        cache_dir=judge_cache_dir or output_dir / "judge_cache",
    )
    cases = datasets.load_dataset(dataset, config, split="test")
    missing_columns = sorted(_COLUMNS - set(cases.column_names))
    if missing_columns:
        raise ValueError(
            f"{dataset} (config {config}) has no column {missing_columns}: build the dataset with "
            "`longalign data build longbench-chat --out DIR` and pass DIR (or the Hub id it was pushed to)."
        )
    if limit is not None:
        cases = cases.select(range(min(limit, len(cases))))
    logger.info("LongBench-Chat: %d cases from %s (config %s)", len(cases), dataset, config)

    output_dir.mkdir(parents=True, exist_ok=True)
    predictions_path = output_dir / "predictions.jsonl"
    predictions = _read_predictions(predictions_path, model)
    todo = cases.select([i for i, idx in enumerate(cases["idx"]) if idx not in predictions])
    if len(todo):
        logger.info("Generating %d answers (%d already in %s)", len(todo), len(cases) - len(todo), predictions_path)
        with predictions_path.open("a", encoding="utf-8") as f:
            if f.tell() and not predictions_path.read_bytes().endswith(b"\n"):
                f.write("\n")  # end the line a crash cut short, so the next answer starts on its own line

            def save(idx: int, prediction: str) -> None:
                f.write(json.dumps({"idx": idx, "model": model, "prediction": prediction}, ensure_ascii=False) + "\n")
                f.flush()
                predictions[idx] = prediction

            _generate(
                todo,
                model,
                save,
                tokenizer=tokenizer,
                generation_base_url=generation_base_url,
                generation_api_key=generation_api_key,
                generation_concurrency=generation_concurrency,
                max_length=max_length,
                max_new_tokens=max_new_tokens,
                temperature=temperature,
                seed=seed,
                batch_size=batch_size,
                dtype=dtype,
                attn_implementation=attn_implementation,
            )
    missing = [idx for idx in cases["idx"] if idx not in predictions]
    if missing:
        raise RuntimeError(
            f"No answer for cases {missing} (generation failed, see the log); rerun the same command to retry them."
        )

    # The released script stores one answer per line, so the judge saw answers with newlines flattened.
    answers = [predictions[idx] for idx in cases["idx"]]
    judged = [answer.replace("\n", " ") for answer in answers] if flatten_newlines else answers
    scores = score_predictions(
        judged,
        cases["answer"],
        cases["query"],
        cases["few_shots"],
        cases[0]["judge_template"],
        judge,
        languages=cases["language"],
        n_runs=n_runs,
        seed=seed,
    )
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
            "flatten_newlines": flatten_newlines,
        },
        "judge_settings": {
            "base_url": judge_base_url,
            "temperature": judge.temperature,
            "n_runs": n_runs,
        },
        **{key: scores[key] for key in ("score", "language_scores", "num_scored", "num_failed", "failures", "usage")},
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


def format_summary(results: Sequence[dict[str, Any]]) -> str:
    """A Markdown table with one row per results of `run_longbench_chat`: mean score (1-10), per language, failures,
    judge model and judge tokens spent."""

    def number(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}"

    languages = sorted({language for result in results for language in result["language_scores"]})
    header = ["model", "score", *languages, "scored", "failed judge calls", "judge", "judge tokens"]
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
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `longalign eval longbench-chat` other than `--model` (shared with `benchmark/longbench_chat.py`)."""
    data = parser.add_argument_group("data")
    data.add_argument(
        "--dataset",
        default=DEFAULT_DATASET,
        help="Hub id or folder of the built dataset (`longalign data build longbench-chat --out DIR "
        f"[--push-to-hub ORG/NAME]`); default: {DEFAULT_DATASET}",
    )
    data.add_argument("--config", default="all", choices=["all", "en", "zh"], help="cases to run (default: all)")
    data.add_argument("--limit", type=int, help="only the first N cases (a smoke test)")
    data.add_argument(
        "--output-dir", help="where predictions, judge cache and results go (default: outputs/longbench_chat/MODEL)"
    )

    gen = parser.add_argument_group("generation (defaults: the paper's released script)")
    gen.add_argument(
        "--max-length",
        type=int,
        default=64_000,
        help="prompts over this many tokens are cut in the middle (default: 64000, the paper's; 0: never)",
    )
    gen.add_argument("--max-new-tokens", type=int, default=1024, help="answer length cap (default: 1024)")
    gen.add_argument(
        "--temperature", type=float, default=1.0, help="sampling temperature, 0 for greedy (default: 1.0, the paper's)"
    )
    gen.add_argument("--seed", type=int, default=42, help="seed before each batch, and of the judge shuffles (42)")
    gen.add_argument("--batch-size", type=int, default=1, help="prompts per generate call (default: 1)")
    gen.add_argument("--dtype", default="auto", help="model weights dtype (default: auto, the checkpoint's)")
    gen.add_argument(
        "--attn-implementation", help="attention backend, e.g. flash_attention_2 or sdpa (default: transformers')"
    )
    gen.add_argument("--tokenizer", help="tokenizer for truncation and the chat template (default: --model)")
    gen.add_argument(
        "--generation-base-url",
        help="read answers from this OpenAI-compatible server (e.g. `vllm serve MODEL`: http://localhost:8000/v1), "
        "which must serve --model; the chat template is the server's",
    )
    gen.add_argument("--generation-api-key", help="API key of that server (default: OPENAI_API_KEY or none)")
    gen.add_argument("--generation-concurrency", type=int, default=8, help="requests in flight to it (default: 8)")
    gen.add_argument(
        "--keep-newlines",
        action="store_true",
        help="show the judge answers with their newlines (the released script flattened them; default: flatten)",
    )

    judge = parser.add_argument_group("judge")
    judge.add_argument(
        "--judge-model",
        default=DEFAULT_JUDGE_MODEL,
        help=f"judge model, recorded with the score ({DEFAULT_JUDGE_MODEL})",
    )
    judge.add_argument("--judge-base-url", help="OpenAI-compatible judge server (default: the OpenAI API)")
    judge.add_argument(
        "--judge-api-key", help="judge API key (default: the OPENAI_API_KEY environment variable, safer than this)"
    )
    judge.add_argument("--judge-concurrency", type=int, default=8, help="judge requests in flight (default: 8)")
    judge.add_argument("--judge-timeout", type=float, default=120.0, help="seconds per judge reply (default: 120)")
    judge.add_argument("--judge-max-retries", type=int, default=5, help="retries per judge call (default: 5)")
    judge.add_argument("--judge-cache-dir", help="judge reply cache (default: OUTPUT_DIR/judge_cache)")
    judge.add_argument(
        "--n-runs", type=int, default=2, help="judge runs per answer, averaged (default: 2, the paper's)"
    )


def options_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """`run_longbench_chat` keyword arguments (all but `model`) from options parsed with `add_arguments`."""
    return {
        "dataset": args.dataset,
        "config": args.config,
        "limit": args.limit,
        "output_dir": args.output_dir,
        "max_length": args.max_length or None,
        "max_new_tokens": args.max_new_tokens,
        "temperature": args.temperature,
        "seed": args.seed,
        "batch_size": args.batch_size,
        "dtype": args.dtype,
        "attn_implementation": args.attn_implementation,
        "tokenizer": args.tokenizer,
        "generation_base_url": args.generation_base_url,
        "generation_api_key": args.generation_api_key,
        "generation_concurrency": args.generation_concurrency,
        "flatten_newlines": not args.keep_newlines,
        "judge_model": args.judge_model,
        "judge_base_url": args.judge_base_url,
        "judge_api_key": args.judge_api_key,
        "judge_concurrency": args.judge_concurrency,
        "judge_timeout": args.judge_timeout,
        "judge_max_retries": args.judge_max_retries,
        "judge_cache_dir": args.judge_cache_dir,
        "n_runs": args.n_runs,
    }


def _main(args: argparse.Namespace) -> int:
    results = run_longbench_chat(args.model, **options_from_args(args))
    print(format_summary([results]))
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `longalign eval longbench-chat`."""
    parser = subparsers.add_parser(
        "longbench-chat",
        help="LongBench-Chat: generate answers with a model's chat template and score them with an LLM judge",
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument(
        "--model",
        required=True,
        help="model path or Hub id (with --generation-base-url: the model name the server serves)",
    )
    add_arguments(parser)
    parser.set_defaults(func=_main)
