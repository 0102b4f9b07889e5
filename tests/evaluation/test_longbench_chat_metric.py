"""LongBench-Chat scoring: prompt building, rating parse, aggregation, and the `evaluate` metric with a real judge."""

import importlib.util
import re
import threading
from collections import Counter
from pathlib import Path

import evaluate
import pytest
from longbench_chat_source import CASES, FEW_SHOTS, TEMPLATE
from loopback_server import LoopbackServer

from longalign_hf.data.longbench_chat.format import detect_language, few_shot_slots
from longalign_hf.evaluation.longbench_chat.scoring import (
    JUDGE_SYSTEM_PROMPT,
    aggregate_scores,
    answer_for_judge,
    build_judge_prompt,
    parse_rating,
)
from longalign_hf.metrics import LONGBENCH_CHAT

SHOTS = [
    {"answer": "Too short.", "score": 2},
    {"answer": "Right, but vague.", "score": 6},
    {"answer": "Exact.", "score": 9},
]


def test_judge_prompt_fills_the_template_in_order():
    prompt = build_judge_prompt(TEMPLATE, "Who signed?", "Dana signed.", SHOTS, "I think {Dana} did.")
    assert prompt == (
        "Judge the answer.\n[Question]\nWho signed?\n[Reference]\nDana signed.\n"
        "[Example]\nToo short.\nRating: [[2]]\n[Example]\nRight, but vague.\nRating: [[6]]\n"
        "[Example]\nExact.\nRating: [[9]]\n"
        'Reply "[[rating]]".\n[Answer]\nI think {Dana} did.\nRating: '
    )


def _shown_examples(prompt):
    return re.findall(r"\[Example\]\n(.*)\nRating: \[\[(\d+)\]\]", prompt)


def test_judge_prompt_shuffle_is_seeded_and_keeps_answers_with_their_scores():
    orders = set()
    for seed in range(12):
        prompt = build_judge_prompt(TEMPLATE, "Q", "R", SHOTS, "A", shuffle_seed=f"42:{seed}")
        assert prompt == build_judge_prompt(TEMPLATE, "Q", "R", SHOTS, "A", shuffle_seed=f"42:{seed}")
        shown = _shown_examples(prompt)
        assert sorted(shown) == sorted((shot["answer"], str(shot["score"])) for shot in SHOTS)
        orders.add(tuple(shown))
    assert len(orders) > 2  # the order really changes with the seed


@pytest.mark.parametrize(
    ("prediction", "flattened"),
    [
        ("One line.", "One line."),
        ("  First.\nSecond.\n\nThird.  ", "First. Second.  Third."),  # one space per line break, as the script
        ("Windows\r\nline and old Mac\rline", "Windows line and old Mac line"),
        ("\n", ""),
    ],
)
def test_answers_are_flattened_for_the_judge_as_the_released_script_did(prediction, flattened):
    # The script: `response.strip().replace("\n", " ")`, written as one line, read back with `line.strip()`.
    assert answer_for_judge(prediction) == flattened
    assert answer_for_judge(prediction, flatten_newlines=False) == prediction.strip()


def test_metric_can_keep_newlines_for_the_judge():
    metric = evaluate.load(LONGBENCH_CHAT, keep_in_memory=True)
    with LoopbackServer(lambda request: "[[5]]") as server:
        inputs = _inputs({"model": "judge-x", "base_url": server.base_url})
        inputs["predictions"] = ["two\nlines", "x", "y"]
        kept = metric.compute(**inputs, n_runs=1, flatten_newlines=False)
        flat = metric.compute(**inputs, n_runs=1)
        shown = [re.search(r"\[Answer\]\n(.*)\nRating: $", r.user_content, re.S).group(1) for r in server.requests]
    assert "two\nlines" in shown[:3] and "two lines" in shown[3:]
    assert (kept["flatten_newlines"], flat["flatten_newlines"]) == (False, True)


@pytest.mark.parametrize(
    ("reply", "rating"),
    [
        ("The answer is correct. Rating: [[8]]", 8.0),
        ("[[7.5]]", 7.5),
        ("Rating: [[8]] ... on reflection [[6]]", 6.0),  # the last brackets win
        ("[[rating: 9/10]]", 9.0),  # the first number inside them
        ("[[ 10 ]]", 10.0),
        ("Rating: 8", None),
        ("Rating: [[eight]]", None),
        ("[8]", None),
        ("", None),
    ],
)
def test_rating_is_parsed_as_the_paper_does(reply, rating):
    assert parse_rating(reply) == rating


@pytest.mark.parametrize(
    ("text", "language"),
    [
        ("What does the report conclude?", "en"),
        ("请总结这份报告。", "zh"),
        ("请总结这份 LongAlign 报告的主要结论。", "zh"),
        ("What does 李白 write about the moon in the poem above?", "en"),
        ("1234 ???", "en"),
    ],
)
def test_language_is_derived_from_characters(text, language):
    assert detect_language(text) == language


def test_template_slots_are_checked():
    assert few_shot_slots(TEMPLATE) == 3
    assert few_shot_slots("Q {} R {} A {} [[{{literal}}]]") == 0  # a zero-shot template
    for bad in ("{} {}", "{} {} {} {}", "{question} {} {}", "{0} {1} {2}", "{} {:>5} {}", "{ {}"):
        with pytest.raises(ValueError, match="template"):
            few_shot_slots(bad)


def test_aggregation_leaves_failures_out_of_the_means():
    result = aggregate_scores([[6.0, 8.0], [None, 4.0], [None, None], [9.0, 9.0]], ["en", "zh", "zh", "en"])
    assert result == {
        "score": (7.0 + 4.0 + 9.0) / 3,
        "scores": [7.0, 4.0, None, 9.0],
        "language_scores": {"en": 8.0, "zh": 4.0},
        "num_scored": 3,
    }
    assert aggregate_scores([[None]], ["zh"])["language_scores"] == {"zh": None}


class ScriptedJudge:
    """Rates by the answer it is shown: "good" 9; "average" 6 then 8; "rambling" never gives a rating."""

    def __init__(self):
        self.calls = Counter()
        self.lock = threading.Lock()

    def __call__(self, request):
        answer = re.search(r"\[Answer\]\n(.*)\nRating: $", request.user_content, re.S).group(1)
        with self.lock:
            self.calls[answer] += 1
            count = self.calls[answer]
        if answer == "average":
            return f"Partly right. Rating: [[{6 if count == 1 else 8}]]"
        if answer == "rambling":
            return "I cannot decide on a rating."
        return "Correct and complete. Rating: [[9]]"


def _inputs(judge):
    return {
        "predictions": ["good", "average", "rambling"],
        "references": [case["answer"] for case in CASES],
        "questions": [case["query"] for case in CASES],
        "few_shots": FEW_SHOTS,
        "judge_template": TEMPLATE,
        "judge": judge,
    }


def test_metric_judges_averages_runs_and_reports_failures():
    metric = evaluate.load(LONGBENCH_CHAT, keep_in_memory=True)
    with LoopbackServer(ScriptedJudge()) as server:
        result = metric.compute(**_inputs({"model": "judge-x", "base_url": server.base_url, "max_retries": 2}))
        requests = server.requests

    assert result["scores"] == [9.0, 7.0, None]  # (6 + 8) / 2; the rambling answer has no score, not 0
    assert result["score"] == 8.0
    assert result["language_scores"] == {"en": 9.0, "zh": 7.0}  # derived from the questions
    assert result["num_scored"] == 2 and result["n_runs"] == 2 and result["judge_model"] == "judge-x"
    assert sorted(result["ratings"][1]) == [6.0, 8.0] and result["ratings"][2] == [None, None]
    assert result["num_failed"] == 2
    assert [(f["index"], f["reply"]) for f in result["failures"]] == [(2, "I cannot decide on a rating.")] * 2
    assert all("invalid reply" in failure["error"] for failure in result["failures"])
    assert result["judge_replies"][0] == ["Correct and complete. Rating: [[9]]"] * 2
    # 2 runs x (1 + 1 + 3 attempts for the rambling answer) requests, all paid for.
    assert len(requests) == result["usage"]["requests"] == 10
    assert result["usage"]["total_tokens"] > 0 and result["usage"]["failed"] == 2

    first = requests[0]
    assert first.messages[0] == {"role": "system", "content": JUDGE_SYSTEM_PROMPT}
    assert first.body["model"] == "judge-x" and first.body["temperature"] == 0.0
    for request in requests:  # the judge sees the short question, never the document
        assert any(case["query"] in request.user_content for case in CASES)
        assert not any(case["prompt"] in request.user_content for case in CASES)
    # Each run shows the examples in its own order (seeded), the same three every time.
    orders = {}
    for request in requests:
        question = re.search(r"\[Question\]\n(.*)\n", request.user_content).group(1)
        orders.setdefault(question, set()).add(tuple(_shown_examples(request.user_content)))
    assert any(len(shown) == 2 for shown in orders.values())


def test_metric_reruns_from_the_cache_and_takes_languages(tmp_path):
    metric = evaluate.load(LONGBENCH_CHAT, keep_in_memory=True)
    options = {"model": "judge-x", "max_retries": 0, "cache_dir": str(tmp_path)}
    with LoopbackServer(ScriptedJudge()) as server:
        first = metric.compute(
            **_inputs({**options, "base_url": server.base_url}), n_runs=1, languages=["a", "b", "a"]
        )
        count = len(server.requests)
        second = metric.compute(
            **_inputs({**options, "base_url": server.base_url}), n_runs=1, languages=["a", "b", "a"]
        )
        assert (count, len(server.requests)) == (3, 4)  # only the call that failed is asked again
    assert second["scores"] == first["scores"] == [9.0, 6.0, None]
    assert second["language_scores"] == {"a": 9.0, "b": 6.0}
    assert second["usage"]["cached"] == 2 and second["usage"]["requests"] == 1


def test_metric_rejects_misaligned_inputs():
    metric = evaluate.load(LONGBENCH_CHAT, keep_in_memory=True)
    inputs = _inputs({"model": "judge-x", "base_url": "http://127.0.0.1:9/v1"})
    with pytest.raises(ValueError, match="3 predictions but 2 few_shots"):
        metric.compute(**{**inputs, "few_shots": FEW_SHOTS[:2]})
    with pytest.raises(ValueError, match="Sample 1 has 2 few-shot examples but the judge template takes 3"):
        metric.compute(**{**inputs, "few_shots": [FEW_SHOTS[0], FEW_SHOTS[1][:2], FEW_SHOTS[2]]})


def test_concurrency_benchmark_runs(capsys):
    path = Path(__file__).resolve().parents[2] / "benchmark" / "judge_concurrency.py"
    spec = importlib.util.spec_from_file_location("judge_concurrency", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["--quick", "--concurrency", "8"])
    table = capsys.readouterr().out
    assert "Judging 16 answers" in table
    assert re.search(r"\| 8 \| [\d.]+ s \| 1.0 s \| 8 \|", table)
