"""`longalign data build sft`: the command line of `longalign_hf.data.sft.build.build_sft_dataset`."""

from __future__ import annotations

import argparse

from longalign_hf import command_args
from longalign_hf.data import build_subparsers
from longalign_hf.data.chat import BAD_ROW_POLICIES
from longalign_hf.data.sft.build import build_sft_dataset
from longalign_hf.data.tokenizer import DEFAULT_TOKENIZER


def _main(args: argparse.Namespace) -> int:
    report = build_sft_dataset(
        args.long,
        args.short,
        args.out,
        short_ratio=args.short_ratio,
        tokenizer=args.tokenizer,
        seed=args.seed,
        bad_rows=args.bad_rows,
        license=args.license,
        push_to_hub=args.push_to_hub,
        private=args.private,
    )
    print(f"Lengths in tokens of {report.tokenizer}:\n{report.length_table()}")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `longalign data build sft`."""
    parser = build_subparsers(subparsers).add_parser(
        "sft",
        help="SFT mix: long + short chat data -> cleaned, mixed, Hub-ready parquet folder",
        description=(
            "Read long data (LongAlign-10k `messages` format) and short chat data (`messages` or ShareGPT "
            "`conversations`), remove zero-width characters and empty replies from assistant turns, mix them, and "
            "write a folder of parquet shards with a dataset card and a length histogram that "
            "datasets.load_dataset(OUT) reads offline; optionally push it to the Hub."
        ),
    )
    parser.add_argument("--long", required=True, metavar="FILE_OR_ID", help="long data: Hub id, file or folder")
    parser.add_argument("--short", required=True, metavar="FILE_OR_ID", help="short chat data: Hub id, file or folder")
    parser.add_argument(
        "--short-ratio",
        type=command_args.open_fraction,
        metavar="R",
        help="share of short samples in the mix, between 0 and 1 (default: all rows of both sets)",
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="folder to write the Hub-ready dataset to")
    parser.add_argument(
        "--tokenizer",
        default=DEFAULT_TOKENIZER,
        metavar="PATH_OR_ID",
        help="tokenizer the length statistics are counted in: a Hub id, or a local folder (works offline) "
        f"(default: {DEFAULT_TOKENIZER}, from the Hub)",
    )
    parser.add_argument("--seed", type=command_args.seed, default=42, help="seed of the shuffles (default: 42)")
    parser.add_argument(
        "--bad-rows",
        choices=BAD_ROW_POLICIES,
        default="error",
        help="a malformed row stops the build (error, default) or is dropped and counted (skip)",
    )
    parser.add_argument("--license", default="other", help="license id for the dataset card (default: other)")
    parser.add_argument(
        "--push-to-hub",
        metavar="ORG/NAME",
        help="also upload the folder to this Hub dataset, with your token (HF_TOKEN or `hf auth login`)",
    )
    parser.add_argument("--private", action="store_true", help="create the Hub dataset as private")
    parser.set_defaults(func=_main)
