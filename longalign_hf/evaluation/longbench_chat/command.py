"""`longalign eval longbench-chat`: generate answers to LongBench-Chat, judge them, write results and a summary.

```
longalign eval longbench-chat --model THUDM/LongAlign-7B-64k --judge-model gpt-4o-2024-05-13
longalign eval longbench-chat --model my-org/model --generation-base-url http://localhost:8000/v1 \
    --judge-model Qwen/Qwen2.5-72B-Instruct --judge-base-url http://localhost:8001/v1
```

The output folder, resuming and the exit status are described in `longalign_hf.evaluation.longbench_chat.runner`.
When `--model` is a local folder, a complete run (no `--limit`, no case left unscored) adds its score to the model
card (`README.md`): a `model-index` entry (mean rating on the 1-10 scale, judge model, date) and a summary section,
both replacing those of an earlier run with the same configuration and judge (`longalign_hf.evaluation.model_card`;
`--no-model-card` leaves the card alone).

Light at import (torch, transformers and `datasets` load when the command runs), so `longalign --help` answers at
once.
"""

from __future__ import annotations

import argparse
import datetime
from typing import Any

from longalign_hf import command_args
from longalign_hf.evaluation import run_folder
from longalign_hf.evaluation.longbench_chat.cases import DEFAULT_DATASET
from longalign_hf.evaluation.longbench_chat.runner import DEFAULT_JUDGE_MODEL, run_longbench_chat
from longalign_hf.evaluation.longbench_chat.summary import (
    card_key,
    card_section,
    format_summary,
    model_index_result,
    shortfall,
)
from longalign_hf.evaluation.model_card import record_in_model_card
from longalign_hf.public_names import hub_id


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
    if not args.no_model_card:
        _add_to_model_card(args, results)
    return run_folder.exit_status(shortfall(results), args.allow_incomplete)


def _add_to_model_card(args: argparse.Namespace, results: dict[str, Any]) -> None:
    """The score (as a `model-index` entry) and the summary, in `--model`'s card; only for a complete run."""
    missing = shortfall(results)
    if args.limit is not None:
        reason = f"--limit {args.limit} runs only the first cases (a smoke test, not the benchmark's score)"
    else:
        reason = None if missing is None else f"the results are incomplete ({missing})"
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    entry = model_index_result(results, date, hub_id(args.dataset) or "longbench-chat") if reason is None else None
    record_in_model_card(
        args.model,
        card_key(results),
        card_section(results, date),
        eval_results=[entry] if entry is not None else [],
        skip_reason=reason,
    )


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
    parser.add_argument(
        "--no-model-card",
        action="store_true",
        help="leave a local --model folder's README.md as it is (default: add the score and summary to it)",
    )
    add_arguments(parser)
    parser.set_defaults(func=_main)
