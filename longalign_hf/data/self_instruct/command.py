"""`longalign data generate`: long-context instruction data by Self-Instruct from long documents, as in LongAlign.

The command line of `longalign_hf.data.self_instruct.generator.generate_long_data`, which describes the method and
the record.
"""

from __future__ import annotations

import argparse

from longalign_hf import command_args
from longalign_hf.data.self_instruct.generator import generate_long_data
from longalign_hf.data.tokenizer import DEFAULT_TOKENIZER


def _main(args: argparse.Namespace) -> int:
    report = generate_long_data(
        args.docs,
        args.out,
        args.model,
        base_url=args.base_url,
        api_key=args.api_key,
        num_docs=args.num_docs,
        tokenizer=args.tokenizer,
        min_tokens=args.min_tokens,
        max_tokens=args.max_tokens,
        text_column=args.text_column,
        id_column=args.id_column,
        name=args.config,
        split=args.split,
        glob=args.glob,
        seed=args.seed,
        temperature=args.temperature,
        max_new_tokens=args.max_new_tokens,
        max_concurrency=args.concurrency,
        timeout=args.timeout,
        max_retries=args.max_retries,
        cache_dir=args.cache_dir,
        batch_size=args.batch_size,
    )
    print(report.summary())
    if report.failed and not args.allow_incomplete:
        print(
            f"{len(report.failed)} documents produced no sample: exit status 1. Rerun the same command to retry them "
            "(replies already received are cached), or pass --allow-incomplete to exit 0."
        )
        return 1
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `longalign data generate`."""
    parser = subparsers.add_parser(
        "generate",
        help="Self-Instruct long-context data from long documents with an LLM (resumable JSONL)",
        description=__doc__.split("\n\n")[0],
    )
    source = parser.add_argument_group("documents")
    source.add_argument(
        "--docs",
        required=True,
        metavar="SOURCE",
        help="a folder of text files, a .jsonl/.json/.parquet file with a text column, or a Hub data set id",
    )
    source.add_argument("--out", required=True, metavar="FILE", help="JSONL file to append records to (resumable)")
    source.add_argument(
        "--num-docs",
        type=command_args.count,
        metavar="N",
        help="stop after N documents within the length bounds (default: all)",
    )
    source.add_argument(
        "--tokenizer",
        default=DEFAULT_TOKENIZER,
        metavar="PATH_OR_ID",
        help="tokenizer of the model you will train, for the length bounds: a Hub id, or a local folder (works "
        f"offline) (default: {DEFAULT_TOKENIZER}, from the Hub)",
    )
    source.add_argument(
        "--min-tokens",
        type=command_args.count_or_zero,
        default=8_000,
        help="skip shorter documents (default: 8000, the paper's 8k)",
    )
    source.add_argument(
        "--max-tokens",
        type=command_args.count,
        default=64_000,
        help="skip longer documents (default: 64000, the paper's 64k)",
    )
    source.add_argument("--text-column", default="text", help="document column of a file or Hub set (default: text)")
    source.add_argument("--id-column", help="column of unique document ids (default: the row number, row-N)")
    source.add_argument("--config", help="config (subset) name of a Hub data set")
    source.add_argument("--split", default="train", help="split of a Hub data set (default: train)")
    source.add_argument("--glob", default="**/*.txt", help="files of a folder to read (default: **/*.txt)")
    source.add_argument(
        "--seed", type=command_args.seed, default=42, help="seed of the task and question draws (default: 42)"
    )

    llm = parser.add_argument_group("LLM")
    llm.add_argument("--model", required=True, help="model name the server serves, recorded in every record")
    llm.add_argument(
        "--base-url",
        help="OpenAI-compatible server, e.g. `vllm serve MODEL`: http://localhost:8000/v1 (default: the OpenAI API)",
    )
    llm.add_argument("--api-key", help="API key (default: the OPENAI_API_KEY environment variable, safer than this)")
    llm.add_argument(
        "--temperature",
        type=command_args.at_least_zero,
        default=1.0,
        help="sampling temperature (default: 1.0, the API default; the paper does not give one)",
    )
    llm.add_argument("--max-new-tokens", type=command_args.count, help="cap on reply tokens (default: the server's)")
    llm.add_argument("--concurrency", type=command_args.count, default=8, help="requests in flight (default: 8)")
    llm.add_argument(
        "--timeout",
        type=command_args.positive,
        default=600.0,
        help="seconds to wait for one reply (default: 600, long prompts)",
    )
    llm.add_argument(
        "--max-retries",
        type=command_args.count_or_zero,
        default=5,
        help="retries per call after an error or a bad reply (5)",
    )
    llm.add_argument("--cache-dir", help="reply cache, what makes reruns free (default: OUT.cache next to --out)")
    llm.add_argument(
        "--batch-size",
        type=command_args.count,
        default=64,
        help="documents held in memory and asked at a time (default: 64)",
    )
    parser.add_argument(
        "--allow-incomplete",
        action="store_true",
        help="exit 0 even when some documents could not be turned into samples (default: exit 1; they are retried "
        "by the next run)",
    )
    parser.set_defaults(func=_main)
