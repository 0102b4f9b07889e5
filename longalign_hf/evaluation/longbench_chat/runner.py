"""`longalign eval longbench-chat`: generate answers to LongBench-Chat, judge them, write results and a summary.

```
longalign eval longbench-chat --model THUDM/LongAlign-7B-64k --judge-model gpt-4o-2024-05-13
longalign eval longbench-chat --model my-org/model --generation-base-url http://localhost:8000/v1 \
    --judge-model Qwen/Qwen2.5-72B-Instruct --judge-base-url http://localhost:8001/v1
```

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
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from longalign_hf import command_args
from longalign_hf.errors import UserInputError, iter_jsonl
from longalign_hf.evaluation import run_folder
from longalign_hf.evaluation.longbench_chat.scoring import score_predictions

if TYPE_CHECKING:
    import datasets
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

DEFAULT_DATASET = "longalign-hf/LongBench-Chat"
DEFAULT_JUDGE_MODEL = "gpt-4o-2024-05-13"
_COLUMNS = {"idx", "query", "prompt", "answer", "few_shots", "language", "length", "judge_template"}
_HOW_TO_BUILD = (
    "build one with `longalign data build longbench-chat --out DIR` and pass --dataset DIR (or the Hub id it was "
    "pushed to)"
)


def default_output_dir(model: str, root: str | os.PathLike = Path("outputs", "longbench_chat")) -> Path:
    """`root/MODEL`, with the model id or path made a folder name (`org/name` -> `org--name`)."""
    return run_folder.default_output_dir(model, root)


def load_cases(dataset: str = DEFAULT_DATASET, config: str = "all") -> datasets.Dataset:
    """The `test` split of a built LongBench-Chat data set: a local folder or a Hub id, checked.

    Raises `UserInputError` naming what is wrong and how to build one: a folder that does not exist or holds no data,
    a data set without the LongBench-Chat configs, split or columns (it says which it has), a Hub id that cannot be
    reached.
    """
    import datasets
    from datasets.exceptions import DatasetGenerationError, DatasetNotFoundError

    local = Path(dataset).expanduser()
    if local.is_file():
        raise UserInputError(
            f"--dataset {dataset} is a file, not a data set folder: {_HOW_TO_BUILD}; that DIR is what --dataset takes"
        )
    if not local.exists() and command_args.looks_like_a_path(dataset):
        raise UserInputError(f"--dataset {dataset}: no such folder; {_HOW_TO_BUILD}")
    source = str(local) if local.exists() else dataset
    try:
        with command_args.quiet_datasets_log():  # its own ERROR lines would come before our one-line reason
            cases = datasets.load_dataset(source, config, split="test")
    except DatasetNotFoundError:
        raise UserInputError(
            f"--dataset {dataset}: no such data set on the Hub, nor a local folder of that name; check the id, or "
            f"{_HOW_TO_BUILD}"
        ) from None
    except ConnectionError as error:
        raise UserInputError(
            f"--dataset {dataset}: not a local folder, and the Hub cannot be reached to load it ({command_args.one_line(error)}); connect to "
            f"the network, or {_HOW_TO_BUILD}"
        ) from None
    except FileNotFoundError as error:  # a folder with no data file in it
        raise UserInputError(
            f"--dataset {dataset} holds no data set ({command_args.one_line(error)}); {_HOW_TO_BUILD}"
        ) from None
    except DatasetGenerationError as error:
        raise UserInputError(
            f"--dataset {dataset}: its data files cannot be read ({command_args.one_line(error.__cause__ or error)}); {_HOW_TO_BUILD}"
        ) from None
    except ValueError as error:  # an unknown config or split; an invalid Hub id
        if not local.exists() and "Repo id" in str(error):
            raise UserInputError(f"--dataset {dataset} is neither a folder nor a Hub id; {_HOW_TO_BUILD}") from None
        if "BuilderConfig" not in str(error) and "split" not in str(error):
            raise
        configs = _config_names(source)
        if "all" in configs and config not in configs:  # a LongBench-Chat set built from a one-language source
            languages = [language for language in ("en", "zh") if language in configs]
            raise UserInputError(
                f"--dataset {dataset} has no {config!r} config (it has: {', '.join(configs)}): the source it was "
                f"built from has no {_LANGUAGE_NAMES.get(config, config)} case. Pass --config "
                f"{' or '.join(['all', *languages])}, or build a set with {config!r} cases from the full benchmark "
                "(`longalign data build longbench-chat --out DIR` without --source downloads it) and pass "
                "--dataset DIR"
            ) from None
        raise UserInputError(
            f"--dataset {dataset} is not a LongBench-Chat data set: {_describe(source)}, but LongBench-Chat has "
            f"configs all, en and zh with a test split; {_HOW_TO_BUILD}"
        ) from None
    missing = sorted(_COLUMNS - set(cases.column_names))
    if missing:
        raise UserInputError(
            f"--dataset {dataset} (config {config}) is not a LongBench-Chat data set: it has columns "
            f"{sorted(cases.column_names)}, LongBench-Chat needs {sorted(_COLUMNS)} (missing {missing}); {_HOW_TO_BUILD}"
        )
    if not len(cases):
        raise UserInputError(f"--dataset {dataset} (config {config}) has no case; {_HOW_TO_BUILD}")
    return cases


_LANGUAGE_NAMES = {"en": "English", "zh": "Chinese"}


def _config_names(source: str) -> list[str]:
    """The configs of a data set, `[]` when they cannot be read."""
    import datasets
    from datasets.exceptions import DatasetsError

    try:
        return list(datasets.get_dataset_config_names(source))
    except (ValueError, OSError, DatasetsError):
        return []


def _describe(source: str) -> str:
    """What a data set holds (configs, splits, columns), to say why it is not the expected one."""
    import datasets
    from datasets.exceptions import DatasetsError

    try:
        configs = datasets.get_dataset_config_names(source)
        streamed = datasets.load_dataset(source, configs[0], streaming=True)
        split = next(iter(streamed))
        columns = streamed[split].column_names
    except (ValueError, OSError, StopIteration, IndexError, DatasetsError):
        return "its configs, splits and columns cannot be read"
    return (
        f"it has configs {configs}; config {configs[0]!r} has splits {sorted(streamed)} and columns "
        f"{sorted(columns) if columns is not None else 'unknown'}"
    )


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
    from longalign_hf.evaluation.generation import generate_chat_answers, request_chat_answers, truncate_prompts
    from longalign_hf.llm_client import JudgeClient

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

    See `add_arguments` for each option (the CLI's help) and the module docstring for the output folder. Every input
    is checked before anything is written: the options and paths, the judge client (a missing API key fails before
    any generation), then the data set, the saved answers, the settings, the tokenizer and the model. The results say
    how many cases have no answer (`num_unanswered`: the generation server failed for them), no score
    (`num_unscored`: every judge run failed, or no answer) or fewer judge runs than `n_runs` (`num_partly_scored`);
    the command exits with status 1 when any is not 0, unless `--allow-incomplete`.
    """
    from longalign_hf.evaluation.generation import check_model_options
    from longalign_hf.llm_client import JudgeClient

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
    check_model_options(dtype, attn_implementation)
    output_dir = Path(output_dir) if output_dir is not None else default_output_dir(model)
    command_args.check_can_create(output_dir, "--output-dir")
    if judge_cache_dir is not None:
        command_args.check_can_create(judge_cache_dir, "--judge-cache-dir")
    judge = JudgeClient(
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
    from longalign_hf.evaluation.longbench_chat.scoring import aggregate_scores

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
    data.add_argument("--limit", type=command_args.count, help="only the first N cases (a smoke test)")
    data.add_argument(
        "--output-dir", help="where predictions, judge cache and results go (default: outputs/longbench_chat/MODEL)"
    )

    gen = parser.add_argument_group("generation (defaults: the paper's released script)")
    gen.add_argument(
        "--max-length",
        type=command_args.count_or_zero,
        default=64_000,
        help="prompts over this many tokens are cut in the middle (default: 64000, the paper's; 0: never)",
    )
    gen.add_argument(
        "--max-new-tokens", type=command_args.count, default=1024, help="answer length cap (default: 1024)"
    )
    gen.add_argument(
        "--temperature",
        type=command_args.at_least_zero,
        default=1.0,
        help="sampling temperature, 0 for greedy (default: 1.0, the paper's)",
    )
    gen.add_argument(
        "--seed", type=command_args.seed, default=42, help="seed before each batch, and of the judge shuffles (42)"
    )
    gen.add_argument("--batch-size", type=command_args.count, default=1, help="prompts per generate call (default: 1)")
    gen.add_argument(
        "--dtype",
        default="auto",
        choices=run_folder.DTYPES,
        help="model weights dtype (default: auto, the checkpoint's)",
    )
    gen.add_argument("--attn-implementation", help=run_folder.ATTN_IMPLEMENTATION_HELP)
    gen.add_argument("--tokenizer", help="tokenizer for truncation and the chat template (default: --model)")
    gen.add_argument(
        "--generation-base-url",
        help="read answers from this OpenAI-compatible server (e.g. `vllm serve MODEL`: http://localhost:8000/v1), "
        "which must serve --model; the chat template is the server's",
    )
    gen.add_argument("--generation-api-key", help="API key of that server (default: OPENAI_API_KEY or none)")
    gen.add_argument(
        "--generation-concurrency", type=command_args.count, default=8, help="requests in flight to it (default: 8)"
    )
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
    judge.add_argument(
        "--judge-concurrency", type=command_args.count, default=8, help="judge requests in flight (default: 8)"
    )
    judge.add_argument(
        "--judge-timeout", type=command_args.positive, default=120.0, help="seconds per judge reply (default: 120)"
    )
    judge.add_argument(
        "--judge-max-retries",
        type=command_args.count_or_zero,
        default=5,
        help="retries per judge call (default: 5)",
    )
    judge.add_argument("--judge-cache-dir", help="judge reply cache (default: OUTPUT_DIR/judge_cache)")
    judge.add_argument(
        "--n-runs",
        type=command_args.count,
        default=2,
        help="judge runs per answer, averaged (default: 2, the paper's)",
    )
    parser.add_argument("--allow-incomplete", action="store_true", help=run_folder.ALLOW_INCOMPLETE_HELP)


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
    return run_folder.exit_status(shortfall(results), args.allow_incomplete)


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
