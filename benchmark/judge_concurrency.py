"""Judging throughput: LongBench-Chat judge calls against a judge that takes a fixed time per reply.

The judge is the tests' loopback server (a real OpenAI-compatible HTTP server on 127.0.0.1) answering "[[7]]"
after `--delay` seconds; the calls go through `score_predictions`, the code the metric and `longalign eval
longbench-chat` use. With 50 cases and 1 s per reply, concurrency 8 needs ceil(50 / 8) = 7 rounds: about 7 s,
against about 50 s one at a time.

    python benchmark/judge_concurrency.py           # 50 cases, 1 s per reply, concurrency 8 then 1 (~1 min)
    python benchmark/judge_concurrency.py --quick   # 16 cases, 0.5 s per reply (~10 s, a smoke test)
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

# The loopback judge lives with the tests; it is not part of the installed package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from loopback_server import LoopbackServer, Reply  # noqa: E402

from longalign_hf.evaluation.longbench_chat.scoring import score_predictions  # noqa: E402
from longalign_hf.llm_client import ChatClient  # noqa: E402

# A synthetic judge template with the published slot layout (question, reference, 3 x (answer, score), answer).
_TEMPLATE = "Q: {}\nReference: {}\n" + "Example: {}\nRating: [[{}]]\n" * 3 + "Answer: {}\nRating: "


def judge_wall_time(cases: int, delay: float, concurrency: int) -> tuple[float, int]:
    """Seconds to judge `cases` answers once each at `concurrency`, and the peak requests the server saw at once."""
    shots = [{"answer": f"example {k}", "score": 3 * k + 1} for k in range(3)]
    with LoopbackServer(lambda request: Reply(content="Rating: [[7]]", delay=delay)) as server:
        judge = ChatClient("loopback-judge", base_url=server.base_url, max_concurrency=concurrency)
        start = time.perf_counter()
        result = score_predictions(
            [f"answer {i}" for i in range(cases)],
            [f"reference {i}" for i in range(cases)],
            [f"question {i}" for i in range(cases)],
            [shots] * cases,
            _TEMPLATE,
            judge,
            n_runs=1,
        )
        elapsed = time.perf_counter() - start
    if result["num_scored"] != cases or result["score"] != 7.0:
        raise RuntimeError(f"The loopback judge's ratings did not come through: {result['failures'][:3]}")
    return elapsed, server.max_in_flight


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=50, help="answers to judge (default: 50, the benchmark's size)")
    parser.add_argument("--delay", type=float, default=1.0, help="seconds the judge takes per reply (default: 1)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[8, 1], help="levels to time (default: 8 1)")
    parser.add_argument("--quick", action="store_true", help="16 cases at 0.5 s per reply")
    args = parser.parse_args(argv)
    if args.quick:
        # Replies slow enough that every request of a round is in flight before the first reply, even on a busy
        # machine (at 0.1 s a round's eighth request could come after its first reply: 7 in flight).
        args.cases, args.delay = 16, 0.5

    print(f"Judging {args.cases} answers, {args.delay:g} s per judge reply")
    print("| concurrency | wall time | ideal ceil(cases / concurrency) * delay | peak requests in flight |")
    print("|---|---|---|---|")
    for concurrency in args.concurrency:
        elapsed, peak = judge_wall_time(args.cases, args.delay, concurrency)
        ideal = math.ceil(args.cases / concurrency) * args.delay
        print(f"| {concurrency} | {elapsed:.1f} s | {ideal:.1f} s | {peak} |", flush=True)


if __name__ == "__main__":
    main()
