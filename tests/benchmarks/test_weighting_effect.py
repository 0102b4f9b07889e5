"""benchmark/weighting_effect.py: its task mix is right, its quick run reports what it says, its verdict follows its rule."""

import json
import random
import re
import string
from collections import Counter

import pytest

SIZES = {"context_tokens": (64, 200), "answer_tokens": (8, 40), "train_per_task": 12, "heldout_per_task": 6}


@pytest.fixture
def tasks(benchmark):
    return benchmark("_weighting_tasks")


def _check_answer(task: str, prompt: str, answer: str) -> None:
    """Solve `prompt` independently of the generator and compare with `answer`."""
    if task in ("majority", "absent"):
        text, question = prompt.split("\n")
        assert set(text) <= set("abcdefghij") and 64 <= len(text) <= 200
        counts = Counter(text)
        if task == "majority":
            assert question == "which letter is the most frequent?"
            assert [letter for letter, n in counts.items() if n == max(counts.values())] == [answer]
        else:
            assert question == "which letter is missing?"
            assert set("abcdefghij") - set(text) == {answer}
    elif task in ("sort", "reverse"):
        letters = prompt.split(": ")[1]
        assert set(letters) <= set(string.ascii_lowercase) and 8 <= len(letters) <= 40
        assert answer == ("".join(sorted(letters)) if task == "sort" else letters[::-1])
    elif task == "count":
        start, end = map(int, re.fullmatch(r"Count from (\d{3}) to (\d{3})", prompt).groups())
        assert answer == " ".join(f"{n:03d}" for n in range(start, end + 1))
    else:
        context, question = prompt.split("\n\n")
        pairs = [line.split(": ") for line in context.split("\n") if line]
        values = dict(pairs)
        assert len(values) == len(pairs)  # every key once, so the answer is unambiguous
        if task == "lookup":
            assert answer == values[re.fullmatch(r"What is the value of (\w{3})\?", question).group(1)]
        else:
            assert question == "what is the secret?" and answer == values["secret"] and answer.isupper()


def test_every_answer_is_right_and_the_heldout_split_is_new(tasks):
    everything = tasks.TASKS + tasks.CALIBRATION_TASKS
    train, heldout = tasks.make_mix(tasks.MixSizes(**SIZES), seed=3, tasks=everything)
    assert Counter(r["task"] for r in train) == {task: 12 for task in everything}
    assert Counter(r["task"] for r in heldout) == {task: 6 for task in everything}
    for record in train + heldout:
        user, assistant = record["messages"]
        assert (user["role"], assistant["role"]) == ("user", "assistant") and assistant["content"] == record["answer"]
        _check_answer(record["task"], user["content"], record["answer"])
    assert not {r["messages"][0]["content"] for r in heldout} & {r["messages"][0]["content"] for r in train}
    order = [r["task"] for r in train]
    assert order != sorted(order, key=everything.index)  # shuffled, not grouped by task


def test_the_heldout_split_draws_again_when_a_prompt_repeats(tasks, monkeypatch):
    # Count prompts from a range of 3 starts and 1 length: held-out samples must still all be new.
    monkeypatch.setattr(tasks.random.Random, "randint", lambda self, a, b: a + self.randrange(min(b - a + 1, 3)))
    train, heldout = tasks.make_mix(
        tasks.MixSizes(answer_tokens=(7, 7), train_per_task=2, heldout_per_task=1), seed=0, tasks=("count",)
    )
    assert heldout[0]["messages"][0]["content"] not in {r["messages"][0]["content"] for r in train}


def test_pretraining_texts_are_letters_only(tasks):
    texts = tasks.pretraining_texts(20, tasks.MixSizes(**SIZES), seed=0)
    assert len(texts) == 20 and all(set(t) <= set("abcdefghij") and 64 <= len(t) <= 200 for t in texts)
    assert len({Counter(t).most_common(1)[0][0] for t in texts}) > 1  # letter frequencies vary from text to text


def test_scored_tokens_are_the_answer_and_its_end_token(benchmark, tasks, tokenizer):
    train, _ = tasks.make_mix(tasks.MixSizes(**SIZES), seed=0)
    tokenized = benchmark("weighting_effect").tokenize(train, tokenizer, max_length=512)
    for record, row in zip(train, tokenized):
        targets = [token for token in row["labels"] if token != -100]
        assert tokenizer.decode(targets) == record["answer"] + "<|end|>"


def test_verdict_needs_long_tasks_better_in_every_seed_and_no_short_task_worse_in_every_seed(benchmark):
    verdict = benchmark("weighting_effect").verdict
    assert verdict({"majority": [-0.2, -0.1, -0.01], "absent": [-0.3, -0.2, -0.1], "sort": [0.02, -0.01, 0.03]})[0]
    reproduced, text = verdict({"majority": [-0.2, 0.01, -0.1], "sort": [-0.1, 0.0, 0.1]})
    assert not reproduced and "long-input tasks NOT better in every seed" in text
    reproduced, text = verdict({"majority": [-0.2, -0.1, -0.1], "count": [0.01, 0.02, 0.01]})
    assert not reproduced and "worse in every seed: count" in text


def test_weighting_effect_quick(benchmark, capsys, tmp_path, library_log_level):
    module = benchmark("weighting_effect")
    out = tmp_path / "results.json"
    results = module.main(["--quick", "--out", str(out)])
    printed = capsys.readouterr().out
    assert "| task | kind | mode | answer loss | exact match | token accuracy |" in printed
    assert "| mode | wall seconds per run (fine-tuning) | tokens trained |" in printed
    assert "| task | kind | answer loss per seed | mean | exact match, mean |" in printed
    assert re.search(r"Paper's direction: (not )?reproduced \(long-input tasks", printed)
    assert json.loads(out.read_text()) == json.loads(json.dumps(results))
    modes = list(module.MODES)
    assert [r["mode"] for r in results["runs"]] == [module.BASE, *modes] and results["seeds"] == [0]
    runs = {r["mode"]: r for r in results["runs"]}
    for mode in modes:
        assert set(runs[mode]["tasks"]) == set(module.TASKS)
        for metrics in runs[mode]["tasks"].values():
            assert (
                metrics["answer_loss"] > 0 and 0 <= metrics["exact_match"] <= 1 and 0 <= metrics["token_accuracy"] <= 1
            )
        # Each mode fine-tuned its own copy of the base model: its held-out losses moved away from the base's.
        assert all(
            runs[mode]["tasks"][t]["answer_loss"] != runs[module.BASE]["tasks"][t]["answer_loss"] for t in module.TASKS
        )
        assert len(runs[mode]["train_loss"]) == 3 and runs[mode]["tokens"] > 0
    # The two packed modes train on the very same packs.
    assert runs["pack + token"]["tokens"] == runs["pack + sequence"]["tokens"]
    # The verdict is the rule applied to these runs' own paired differences.
    differences = module.paired_differences(results, "pack + sequence", "pack + token")
    assert results["verdict"] == module.verdict(differences)[1]


def test_unknown_task_or_mode_is_refused(benchmark, capsys):
    with pytest.raises(SystemExit):
        benchmark("weighting_effect").main(["--quick", "--tasks", "majority,summarize"])
    assert "summarize" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown task"):
        benchmark("_weighting_tasks").make_sample(
            "summarize", random.Random(0), benchmark("_weighting_tasks").MixSizes()
        )
