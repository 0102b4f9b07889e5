"""`longalign eval longbench-chat` end to end (tiny model, built fixture dataset, loopback judge) and its parts."""

import importlib.util
import json
import re
from pathlib import Path

import datasets
import pytest
import torch
from loopback_server import LoopbackServer
from test_longbench_chat_builder import CASES, write_source

from longalign_hf import cli
from longalign_hf.evaluation import generate_chat_answers, middle_truncate, truncate_prompts
from longalign_hf.longbench_chat import JUDGE_SYSTEM_PROMPT
from longalign_hf.tiny import build_byte_tokenizer, build_tiny_model


@pytest.mark.parametrize(
    ("length", "max_length", "expected"),
    [
        (7, 4, [0, 1, 5, 6]),
        (7, 3, [0, 5, 6]),
        (7, 7, [0, 1, 2, 3, 4, 5, 6]),
        (3, 10, [0, 1, 2]),
        (5, 1, [4]),
        (5, 0, []),
    ],
)
def test_middle_truncate_keeps_both_ends(length, max_length, expected):
    assert middle_truncate(list(range(length)), max_length) == expected


def test_truncate_prompts_counts_tokens_not_characters(tokenizer):
    # The byte tokenizer has one token per UTF-8 byte: "é" is two.
    prompts = ["abcdefghij", "four", "ééé"]
    assert truncate_prompts(tokenizer, prompts, 4) == ["abij", "four", "éé"]
    assert truncate_prompts(tokenizer, prompts, None) == prompts


def test_answers_go_through_the_chat_template(tokenizer):
    model = build_tiny_model(tokenizer, seed=1, max_position_embeddings=1024).eval()
    prompts = ["The sky is blue. What colour is the sky?", "Two plus two?"]
    saved = {}
    answers = generate_chat_answers(
        model, tokenizer, prompts, max_new_tokens=6, temperature=0.0, batch_size=2, on_answer=saved.__setitem__
    )
    expected = []
    for prompt in prompts:  # reference: the chat-formatted prompt decoded greedily on its own
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
        ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            output = model.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        expected.append(tokenizer.decode(output[0, ids.shape[1] :], skip_special_tokens=True).strip())
    assert answers == expected
    assert saved == dict(enumerate(expected))


def test_sampling_is_seeded(tokenizer):
    model = build_tiny_model(tokenizer, seed=1, max_position_embeddings=1024).eval()
    prompts = ["Tell me a story.", "Another one."]

    def sample(seed):
        return generate_chat_answers(model, tokenizer, prompts, max_new_tokens=8, temperature=1.0, seed=seed)

    assert sample(42) == sample(42)
    assert sample(42) != sample(7)


def test_a_tokenizer_without_chat_template_is_refused(tokenizer, tiny_model):
    bare = build_byte_tokenizer()
    bare.chat_template = None
    with pytest.raises(ValueError, match="no chat template"):
        generate_chat_answers(tiny_model, bare, ["hi"], max_new_tokens=2)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-chat-model")
    tokenizer = build_byte_tokenizer()
    tokenizer.save_pretrained(path)
    build_tiny_model(tokenizer, max_position_embeddings=1024).save_pretrained(path)
    return path


@pytest.fixture
def dataset_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")
    out = tmp_path / "longbench_chat"
    cli.main(
        ["data", "build", "longbench-chat", "--source", str(write_source(tmp_path / "source")), "--out", str(out)]
    )
    return out


def judge_or_answer(request):
    """Rates 6 when asked as a judge; otherwise answers as a generation server."""
    if request.messages[0] == {"role": "system", "content": JUDGE_SYSTEM_PROMPT}:
        return "Mostly right. Rating: [[6]]"
    return "A served answer\nover two lines."


def _eval(model, dataset_dir, server, output_dir, *extra):
    argv = ["eval", "longbench-chat", "--model", str(model), "--dataset", str(dataset_dir), "--limit", "2"]
    argv += ["--max-new-tokens", "8", "--judge-model", "loopback-judge", "--judge-base-url", server.base_url]
    return cli.main([*argv, "--output-dir", str(output_dir), *extra])


def _judged_answers(requests):
    answers = [re.search(r"\[Answer\]\n(.*)\nRating: $", r.user_content, re.S) for r in requests]
    return [answer.group(1) for answer in answers if answer]


def test_eval_end_to_end_with_the_tiny_model(model_dir, dataset_dir, tmp_path, capsys):
    out = tmp_path / "eval"
    with LoopbackServer(judge_or_answer) as server:
        assert _eval(model_dir, dataset_dir, server, out) == 0
        assert len(server.requests) == 4  # 2 cases x 2 judge runs

    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert results["judge_model"] == "loopback-judge" and results["model"] == str(model_dir)
    assert results["score"] == 6.0 and results["num_cases"] == 2 and results["num_failed"] == 0
    assert results["language_scores"] == {"en": 6.0, "zh": 6.0}
    assert results["generation"] == {
        "via": "transformers",
        "max_length": 64000,
        "max_new_tokens": 8,
        "temperature": 1.0,
        "seed": 42,
        "flatten_newlines": True,
    }
    assert [case["idx"] for case in results["cases"]] == [1, 2]
    assert results["cases"][0]["ratings"] == [6.0, 6.0]
    saved = [json.loads(line) for line in (out / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [line["idx"] for line in saved] == [1, 2]
    assert [line["prediction"] for line in saved] == [case["prediction"] for case in results["cases"]]
    summary = (out / "summary.md").read_text(encoding="utf-8")
    assert "| 6.00 |" in summary and "loopback-judge x2" in summary
    assert summary.strip() in capsys.readouterr().out


def test_eval_resumes_from_saved_predictions_and_cached_judgements(model_dir, dataset_dir, tmp_path):
    out = tmp_path / "eval"
    out.mkdir()
    preset = json.dumps({"idx": 1, "model": str(model_dir), "prediction": "PRESET ANSWER"})
    (out / "predictions.jsonl").write_text(preset + '\n{"idx": 2, "mod', encoding="utf-8")  # a crash mid-line
    with LoopbackServer(judge_or_answer) as server:
        _eval(model_dir, dataset_dir, server, out)
        assert _judged_answers(server.requests).count("PRESET ANSWER") == 2  # idx 1 was not generated again
        saved = (out / "predictions.jsonl").read_text(encoding="utf-8")
        assert json.loads(saved.splitlines()[-1])["idx"] == 2  # only idx 2 was generated
        count = len(server.requests)
        _eval(model_dir, dataset_dir, server, out)
        assert len(server.requests) == count  # every judgement came from the cache
    assert (out / "predictions.jsonl").read_text(encoding="utf-8") == saved


def test_eval_refuses_predictions_of_another_model(model_dir, dataset_dir, tmp_path):
    out = tmp_path / "eval"
    out.mkdir()
    (out / "predictions.jsonl").write_text(json.dumps({"idx": 1, "model": "other", "prediction": "x"}) + "\n")
    with (
        LoopbackServer(judge_or_answer) as server,
        pytest.raises(ValueError, match="line 1 holds an answer of 'other'"),
    ):
        _eval(model_dir, dataset_dir, server, out)


def test_eval_reads_answers_from_a_generation_server(model_dir, dataset_dir, tmp_path):
    out = tmp_path / "eval"
    with LoopbackServer(judge_or_answer) as server:
        extra = ["--generation-base-url", server.base_url, "--tokenizer", str(model_dir), "--max-length", "20"]
        _eval("served-model", dataset_dir, server, out, *extra)
        generation = [r for r in server.requests if r.body["model"] == "served-model"]
        judged = _judged_answers(server.requests)

    assert len(generation) == 2
    body = generation[0].body
    assert (body["max_tokens"], body["seed"], body["temperature"]) == (8, 42, 1.0)
    # Prompts over 20 tokens (bytes here) are cut in the middle, keeping the question at the end.
    sent = sorted((r.user_content for r in generation), key=len)
    assert sent[-1] == CASES[0]["prompt"][:10] + CASES[0]["prompt"][-10:]
    saved = [json.loads(line) for line in (out / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    assert {line["prediction"] for line in saved} == {"A served answer\nover two lines."}
    assert judged == ["A served answer over two lines."] * 4  # newlines flattened for the judge, as the paper


def test_eval_without_judge_key_fails_before_generating(model_dir, dataset_dir, tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    out = tmp_path / "eval"
    argv = ["eval", "longbench-chat", "--model", str(model_dir), "--dataset", str(dataset_dir)]
    with pytest.raises(ValueError, match="OPENAI_API_KEY"):
        cli.main([*argv, "--output-dir", str(out)])
    assert not out.exists()


def test_benchmark_tables_several_models_without_keys(model_dir, dataset_dir, tmp_path):
    path = Path(__file__).resolve().parents[1] / "benchmark" / "longbench_chat.py"
    spec = importlib.util.spec_from_file_location("benchmark_longbench_chat", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with LoopbackServer(judge_or_answer) as server:
        argv = ["--models", "served-a", "served-b", "--dataset", str(dataset_dir), "--limit", "1"]
        argv += ["--generation-base-url", server.base_url, "--tokenizer", str(model_dir)]
        argv += ["--judge-base-url", server.base_url, "--judge-api-key", "sk-do-not-write"]
        module.main([*argv, "--output-dir", str(tmp_path / "runs")])
    summary = (tmp_path / "runs" / "summary.md").read_text(encoding="utf-8")
    rows = [line for line in summary.splitlines() if line.startswith("| served-")]
    assert [row.split(" | ")[:2] for row in rows] == [["| served-a", "6.00"], ["| served-b", "6.00"]]
    assert "--judge-api-key '***'" in summary and "sk-do-not-write" not in summary
    assert (tmp_path / "runs" / "served-b" / "results.json").exists()
