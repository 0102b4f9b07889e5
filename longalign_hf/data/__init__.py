"""Chat data: tokenization with assistant-only targets (`chat`), SFT data loading, mixing and preparation
(`sft_data`), the generated default data (`synthetic`); and one subpackage per `longalign data` command: the
LongBench-Chat data set (`longbench_chat/`), Self-Instruct generation (`self_instruct/`) and the SFT mix (`sft/`), with
what they share: writing a Hub-ready folder (`hub`) and the tokenizer lengths are counted in (`tokenizer`)."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["LongBenchChatBuilder", "build_subparsers"]


def __getattr__(name: str) -> Any:
    # The builder subclasses a `datasets` class: imported on first use, so the command's help stays light.
    if name == "LongBenchChatBuilder":
        from longalign_hf.data.longbench_chat.builder import LongBenchChatBuilder

        return LongBenchChatBuilder
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def build_subparsers(data_subparsers: argparse._SubParsersAction) -> argparse._SubParsersAction:
    """The subcommands of `longalign data build`, created by the first module that asks for them.

    Each data set's `add_parser` adds itself here (`build_subparsers(subparsers).add_parser("sft", ...)`), so
    modules can register in any order.
    """
    build = data_subparsers.choices.get("build")
    if build is None:
        build = data_subparsers.add_parser("build", help="build a data set into a Hub-ready folder")
        return build.add_subparsers(dest="dataset", metavar="DATASET", required=True)
    return next(action for action in build._actions if isinstance(action, argparse._SubParsersAction))
