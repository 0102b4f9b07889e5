"""benchmark/weighting_real.py: its task mix is right, its quick run reports what it says, its verdict follows its
rule; benchmark/smollm2_finetune.py's quick run."""

import json
import os
import re
from collections import Counter

import pytest

from longalign_hf.data.synthetic import documentation_paragraphs

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SIZES = {"context_chars": (600, 1500), "answer_chars": (200, 400), "train_per_task": 6, "heldout_per_task": 3}


@pytest.fixture
def tasks(benchmark):
    return benchmark("_real_weighting_tasks")


def _check_answer(task: str, prompt: str, answer: str, paragraphs: list[str]) -> None:
    """Solve `prompt` independently of the generator and compare with `answer`."""
    if task == "code":
        asked = re.search(r"What is the secret code of ([\w-]+)\? Answer with the number only\.$", prompt).group(1)
        facts = re.findall(r"The secret code of ([\w-]+) is (\d{7})\.", prompt)
        assert len(facts) == 3 and len(dict(facts)) == 3 and answer == dict(facts)[asked]
    elif task == "word":
        asked = re.search(r"What is the password of the ([\w-]+) room\? Answer with the word only\.$", prompt).group(1)
        facts = re.findall(r"The password of the ([\w-]+) room is (\w+)\.", prompt)
        assert len(facts) == 3 and len(dict(facts)) == 3 and len(set(dict(facts).values())) == 3
        assert answer == dict(facts)[asked] and "secret code" not in prompt
    elif task == "continue":
        first = prompt.removeprefix("Continue this passage of the Python documentation: ")
        assert any(paragraph.startswith(f"{first} {answer}") for paragraph in paragraphs)
        assert len(answer) >= 100
    else:
        start, end = map(int, re.fullmatch(r"Count from (\d+) to (\d+), separated by spaces\.", prompt).groups())
        assert answer == " ".join(str(n) for n in range(start, end + 1))


def test_every_answer_is_right_and_the_heldout_split_is_new(tasks):
    train, heldout = tasks.make_mix(tasks.MixSizes(**SIZES), seed=3)
    assert Counter(r["task"] for r in train) == {task: 6 for task in tasks.TASKS}
    assert Counter(r["task"] for r in heldout) == {task: 3 for task in tasks.TASKS}
    paragraphs = documentation_paragraphs()
    for record in train + heldout:
        user, assistant = record["messages"]
        assert (user["role"], assistant["role"]) == ("user", "assistant") and assistant["content"] == record["answer"]
        _check_answer(record["task"], user["content"], record["answer"], paragraphs)
    assert not {r["messages"][0]["content"] for r in heldout} & {r["messages"][0]["content"] for r in train}

    # A held-out passage is never one a training sample continues.
    def starts(records):
        return {r["messages"][0]["content"] for r in records if r["task"] == "continue"}

    assert not starts(train) & starts(heldout)


def test_long_input_tasks_hold_few_target_tokens(benchmark, tasks, tokenizer):
    train, _ = tasks.make_mix(tasks.MixSizes(**SIZES), seed=0)
    tokenized = benchmark("weighting_effect").tokenize(train, tokenizer, max_length=4096)
    targets = Counter()
    for record, row in zip(train, tokenized):
        labels = [token for token in row["labels"] if token != -100]
        assert tokenizer.decode(labels) == record["answer"] + "<|end|>"
        targets[record["task"]] += len(labels)
    assert (targets["code"] + targets["word"]) / sum(targets.values()) < 0.15


def test_verdict_follows_its_rule(benchmark):
    verdict = benchmark("weighting_real").verdict
    assert verdict({"code": [-0.2, -0.1], "word": [-0.3, -0.1], "continue": [0.02, -0.01]})[0] == "confirmed"
    outcome, text = verdict({"code": [-0.2, -0.1], "word": [-0.3, -0.1], "count": [0.01, 0.02]})
    assert outcome == "confirmed at a cost" and "worse in every seed: count" in text
    assert verdict({"code": [0.2, 0.1], "word": [0.3, 0.1], "count": [-0.01, 0.02]})[0] == "refuted"
    assert verdict({"code": [-0.2, 0.1], "word": [-0.3, -0.1], "count": [0.01, 0.02]})[0] == "no effect"
    assert verdict({"code": [-0.2, -0.1], "word": [0.3, 0.1], "count": [0.01, -0.02]})[0] == "no effect"


def test_weighting_real_quick(benchmark, capsys, tmp_path, library_log_level):
    module = benchmark("weighting_real")
    out = tmp_path / "results.json"
    results = module.main(["--quick", "--out", str(out)])
    printed = capsys.readouterr().out
    assert "| task | kind | mode | answer loss | exact match | token accuracy |" in printed
    assert "| task | kind | answer loss per seed | mean | exact match, mean |" in printed
    assert re.search(r"The paper's claim: (confirmed|confirmed at a cost|refuted|no effect) \(", printed)
    assert json.loads(out.read_text()) == json.loads(json.dumps(results))
    runs = {r["mode"]: r for r in results["runs"]}
    assert list(runs) == [module.BASE, "pack + token", "pack + sequence"]
    # Scoring from the frozen layers' cached output equals the full forward.
    assert results["cached_scoring_difference"] < 1e-4
    for mode in ("pack + token", "pack + sequence"):
        # Each mode fine-tuned its own copy of the base: its held-out losses moved away from the base's.
        assert all(
            runs[mode]["tasks"][t]["answer_loss"] != runs[module.BASE]["tasks"][t]["answer_loss"]
            for t in runs[mode]["tasks"]
        )
    assert runs["pack + token"]["tokens"] == runs["pack + sequence"]["tokens"] > 0
    differences = module.paired_differences(results, "pack + sequence", "pack + token")
    assert results["verdict"] == module.verdict(differences)[1]


def test_only_the_upper_layers_train(benchmark):
    model, _ = benchmark("weighting_real").load_model(None, 0, 2)
    trainable = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
    assert trainable and all(name.startswith(("model.layers.1.", "model.layers.2.")) for name in trainable)
    assert any(name.startswith("model.layers.1.") for name in trainable)


def test_smollm2_finetune_quick(benchmark, capsys):
    config = os.path.join(ROOT, "recipes", "configs", "smollm2-135m-cpu.yaml")
    results = benchmark("smollm2_finetune").main(["--quick", "--config", config])
    assert "| model | answer loss | exact match | code match | seconds |" in capsys.readouterr().out
    assert results["heldout"] == 2 and set(results["models"]) == {"base", "fine-tuned"}
