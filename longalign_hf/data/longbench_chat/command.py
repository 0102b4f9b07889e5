"""`longalign data build longbench-chat`: the command line of `hub_folder.write_hub_folder`."""

from __future__ import annotations

import argparse
import logging

from longalign_hf.data import build_subparsers
from longalign_hf.data.hub import push_hub_folder
from longalign_hf.data.longbench_chat.hub_folder import write_hub_folder
from longalign_hf.data.longbench_chat.source import SOURCE_FILES, SOURCE_URL

logger = logging.getLogger(__name__)


def _main(args: argparse.Namespace) -> int:
    out_dir = write_hub_folder(args.out, source_dir=args.source, repo_id=args.push_to_hub)
    logger.info("Wrote %s; load it with datasets.load_dataset(%r, 'all')", out_dir, str(out_dir))
    if args.push_to_hub:
        url = push_hub_folder(
            out_dir, args.push_to_hub, "Build LongBench-Chat with `longalign data build longbench-chat`", args.private
        )
        logger.info("Pushed to %s; load it with datasets.load_dataset(%r, 'all')", url, args.push_to_hub)
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `longalign data build longbench-chat`."""
    parser = build_subparsers(subparsers).add_parser(
        "longbench-chat",
        help="LongBench-Chat: source files -> Hub-ready parquet folder (configs all, en, zh)",
        description=(
            "Read LongBench-Chat's test_cases.json, few_shots.json and prompt_fs.txt, check them, and write a "
            "folder of parquet shards with a dataset card that datasets.load_dataset(OUT, CONFIG) reads offline; "
            "optionally push it to the Hub."
        ),
    )
    parser.add_argument(
        "--source",
        metavar="DIR",
        help=f"folder with {', '.join(SOURCE_FILES)} (a copy of THUDM/LongAlign LongBench_Chat/); "
        f"default: download them from {SOURCE_URL}",
    )
    parser.add_argument(
        "--out",
        metavar="DIR",
        required=True,
        help="folder to write the Hub-ready dataset to (changed only once the build succeeds)",
    )
    parser.add_argument(
        "--push-to-hub",
        metavar="ORG/NAME",
        help="also upload the folder to this Hub dataset, with your token (HF_TOKEN or `hf auth login`)",
    )
    parser.add_argument("--private", action="store_true", help="create the Hub dataset as private")
    parser.set_defaults(func=_main)
