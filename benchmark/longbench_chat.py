"""LongBench-Chat scores of several models in one table, with the code of `longalign eval longbench-chat`.

    python benchmark/longbench_chat.py --models THUDM/LongAlign-7B-64k my-org/my-model \
        --dataset longalign-hf/LongBench-Chat --judge-model gpt-4o-2024-05-13

Every option of `longalign eval longbench-chat` applies to every model (see `--help`); `--output-dir` is the root
under which each model gets its own folder (default `outputs/longbench_chat/MODEL`), so an interrupted run resumes
where it stopped and the judge pays nothing twice. The table (mean score on the judge's 1-10 scale, overall and per
language, cases scored, failed judge calls, judge model and tokens) is printed and written to `OUTPUT_DIR/summary.md`
with the command that made it. As the command does, the script exits with status 1 when a case of any model could not
be scored, unless `--allow-incomplete`.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from longalign_hf.evaluation import run_folder
from longalign_hf.evaluation.longbench_chat.command import add_arguments, options_from_args
from longalign_hf.evaluation.longbench_chat.runner import default_output_dir, run_longbench_chat
from longalign_hf.evaluation.longbench_chat.summary import format_summary, shortfall


def _without_keys(argv: list[str]) -> list[str]:
    """The command line with API key values masked, so the table can be shared."""
    masked = []
    for arg in argv:
        if masked and masked[-1].endswith("-api-key"):
            arg = "***"
        elif "-api-key=" in arg:
            arg = arg.split("=", 1)[0] + "=***"
        masked.append(arg)
    return masked


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", required=True, help="model paths or Hub ids, evaluated in turn")
    add_arguments(parser)
    args = parser.parse_args(argv)
    root = Path(args.output_dir or "outputs/longbench_chat")
    options = options_from_args(args)
    results = [
        run_longbench_chat(model, **{**options, "output_dir": default_output_dir(model, root)})
        for model in args.models
    ]
    command = shlex.join(
        ["python", "benchmark/longbench_chat.py", *_without_keys(sys.argv[1:] if argv is None else argv)]
    )
    table = f"{format_summary(results)}\n\nMade with `{command}`.\n"
    print(table)
    (root / "summary.md").write_text(table, encoding="utf-8")
    missing = [note for note in map(shortfall, results) if note is not None]
    return run_folder.exit_status("; ".join(missing) or None, args.allow_incomplete)


if __name__ == "__main__":
    raise SystemExit(main())
