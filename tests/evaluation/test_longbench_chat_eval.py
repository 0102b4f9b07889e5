"""`longalign eval longbench-chat` end to end (tiny model, built fixture dataset, loopback judge) and its parts."""

import argparse
import errno
import importlib.util
import json
import logging
import os
import re
import socket
import threading
from pathlib import Path

import datasets
import evaluate
import pytest
import torch
from longbench_chat_source import CASES, ENGLISH_ONLY, FEW_SHOTS, write_source
from loopback_server import LoopbackServer, Reply

from longalign_hf import cli
from longalign_hf.errors import UserInputError
from longalign_hf.evaluation import generate_chat_answers, middle_truncate, truncate_prompts
from longalign_hf.evaluation.longbench_chat import command as longbench_chat
from longalign_hf.evaluation.longbench_chat.scoring import JUDGE_SYSTEM_PROMPT
from longalign_hf.metrics import LONGBENCH_CHAT
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


@pytest.mark.parametrize(
    "text",
    [
        "你好世界，这是一个很长的上下文。" * 4,
        "Emoji 😀🎉 and accents é, ü, ñ: " * 4,
        "混合 text with 😀, 中文 and 𝔘𝔫𝔦𝔠𝔬𝔡𝔢. " * 3,
    ],
    ids=["chinese", "emoji-and-accents", "mixed-4-byte"],
)
def test_truncation_never_cuts_a_character_in_two(tokenizer, text):
    # One token per UTF-8 byte: most cuts fall inside a character of 2 to 4 bytes.
    size = len(text.encode())
    for max_length in range(1, size):
        [cut] = truncate_prompts(tokenizer, [text], max_length)
        assert "\ufffd" not in cut, max_length
        assert len(cut.encode()) <= max_length
        # The result is a head of the text and a tail of it, each short of its half by less than one character.
        splits = [k for k in range(len(cut) + 1) if text.startswith(cut[:k]) and text.endswith(cut[k:])]
        assert any(
            len(cut[:k].encode()) > max_length // 2 - 4 and len(cut[k:].encode()) > max_length - max_length // 2 - 4
            for k in splits
        ), (max_length, cut)


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


def run_command(argv):
    """`longalign eval longbench-chat ARGV` through the command's own parser: a user error raises as it is."""
    parser = argparse.ArgumentParser()
    longbench_chat.add_parser(parser.add_subparsers())
    args = parser.parse_args(["longbench-chat", *argv])
    return args.func(args)


def _argv(model, dataset_dir, server, output_dir, *extra):
    argv = ["--model", str(model), "--dataset", str(dataset_dir), "--limit", "2", "--max-new-tokens", "8"]
    argv += ["--judge-model", "loopback-judge", "--judge-base-url", server.base_url]
    return [*argv, "--output-dir", str(output_dir), *extra]


def _eval(model, dataset_dir, server, output_dir, *extra):
    return run_command(_argv(model, dataset_dir, server, output_dir, *extra))


def _served(server, model_dir):
    """Options that read the answers from the loopback server (fast: no model runs)."""
    return ["--generation-base-url", server.base_url, "--tokenizer", str(model_dir)]


def _judged_answers(requests):
    answers = [re.search(r"\[Answer\]\n(.*)\nRating: $", r.user_content, re.S) for r in requests]
    return [answer.group(1) for answer in answers if answer]


def test_eval_end_to_end_with_the_tiny_model(model_dir, dataset_dir, tmp_path, capsys):
    out = tmp_path / "eval"
    with LoopbackServer(judge_or_answer) as server:
        assert cli.main(["eval", "longbench-chat", *_argv(model_dir, dataset_dir, server, out)]) == 0
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
    }
    assert results["judge_settings"] == {
        "base_url": server.base_url,
        "temperature": 0.0,
        "n_runs": 2,
        "flatten_newlines": True,
    }
    assert (results["num_unscored"], results["num_partly_scored"]) == (0, 0)
    assert [case["idx"] for case in results["cases"]] == [1, 2]
    assert results["cases"][0]["ratings"] == [6.0, 6.0]
    saved = [json.loads(line) for line in (out / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [line["idx"] for line in saved] == [1, 2]
    assert [line["prediction"] for line in saved] == [case["prediction"] for case in results["cases"]]
    summary = (out / "summary.md").read_text(encoding="utf-8")
    assert summary.startswith("| model | score (1-10) | en (1-10) | zh (1-10) | cases scored |")
    assert "| 6.00 |" in summary and "| 2/2 |" in summary and "loopback-judge x2" in summary
    assert "means of the judge's 1-10 ratings" in summary and "Incomplete" not in summary
    assert summary.strip() in capsys.readouterr().out
    assert json.loads((out / "run.json").read_text(encoding="utf-8")) == {
        "model": str(model_dir),
        "tokenizer": None,
        "dataset": str(dataset_dir.resolve()),
        "generation": "transformers",
        "max_length": 64000,
        "max_new_tokens": 8,
        "temperature": 1.0,
        "seed": 42,
    }


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
        pytest.raises(UserInputError, match="line 1 holds an answer of 'other'"),
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
    argv = ["--model", str(model_dir), "--dataset", str(dataset_dir)]
    with pytest.raises(UserInputError, match="OPENAI_API_KEY"):
        run_command([*argv, "--output-dir", str(out)])
    assert not out.exists()


def test_benchmark_tables_several_models_without_keys(model_dir, dataset_dir, tmp_path):
    path = Path(__file__).resolve().parents[2] / "benchmark" / "longbench_chat.py"
    spec = importlib.util.spec_from_file_location("benchmark_longbench_chat", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with LoopbackServer(judge_or_answer) as server:
        argv = ["--models", "served-a", "served-b", "--dataset", str(dataset_dir), "--limit", "1"]
        argv += ["--generation-base-url", server.base_url, "--tokenizer", str(model_dir)]
        argv += ["--judge-base-url", server.base_url, "--judge-api-key", "sk-do-not-write"]
        assert module.main([*argv, "--output-dir", str(tmp_path / "runs")]) == 0
    summary = (tmp_path / "runs" / "summary.md").read_text(encoding="utf-8")
    rows = [line for line in summary.splitlines() if line.startswith("| served-")]
    assert [row.split(" | ")[:2] for row in rows] == [["| served-a", "6.00"], ["| served-b", "6.00"]]
    assert "--judge-api-key '***'" in summary and "sk-do-not-write" not in summary
    assert (tmp_path / "runs" / "served-b" / "results.json").exists()


def _closed_port_url():
    """The URL of a port nothing listens on: every request to it is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def test_an_unreachable_judge_is_warned_about_counted_and_fails_the_command(
    model_dir, dataset_dir, tmp_path, capsys, caplog
):
    out = tmp_path / "eval"
    with LoopbackServer(judge_or_answer) as server:
        argv = _argv(model_dir, dataset_dir, server, out, *_served(server, model_dir))
        argv[argv.index("--judge-base-url") + 1] = _closed_port_url()
        with caplog.at_level(logging.INFO):
            assert run_command([*argv, "--judge-max-retries", "0"]) == 1

    failed_calls = [
        record
        for record in caplog.records
        if record.levelno == logging.WARNING
        and re.search(r"judging with loopback-judge: call \d of 4 failed", record.getMessage())
    ]
    assert len(failed_calls) == 4  # 2 cases x 2 judge runs, each a warning
    assert "APIConnectionError" in failed_calls[0].getMessage()
    assert any(
        record.levelno == logging.ERROR and "2 of 2 cases have no score" in record.getMessage()
        for record in caplog.records
    )
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert results["score"] is None and results["num_failed"] == 4
    assert (results["num_scored"], results["num_unscored"], results["num_partly_scored"]) == (0, 2, 0)
    summary = (out / "summary.md").read_text(encoding="utf-8")
    assert "**Incomplete:** " + str(model_dir) + ": 2 of 2 cases have no score (4 judge calls failed" in summary
    assert summary.strip() in capsys.readouterr().out

    # The answers are kept; with --allow-incomplete the same result exits 0.
    with LoopbackServer(judge_or_answer) as server:
        argv = _argv(model_dir, dataset_dir, server, out, *_served(server, model_dir))
        argv[argv.index("--judge-base-url") + 1] = _closed_port_url()
        assert run_command([*argv, "--judge-max-retries", "0", "--allow-incomplete"]) == 0
        assert not [r for r in server.requests if r.body["model"] == str(model_dir)]  # nothing generated again


def test_a_case_rated_in_fewer_judge_runs_makes_the_run_incomplete(model_dir, dataset_dir, tmp_path):
    rated, lock = set(), threading.Lock()

    def first_run_only(request):
        """Rates the first request for each question and refuses to rate any other."""
        if request.messages[0]["content"] != JUDGE_SYSTEM_PROMPT:
            return "An answer."
        question = re.search(r"\[Question\]\n(.*)\n", request.user_content).group(1)
        with lock:
            first = question not in rated
            rated.add(question)
        return "[[8]]" if first else "No rating from me."

    out = tmp_path / "eval"
    with LoopbackServer(first_run_only) as server:
        argv = _argv(model_dir, dataset_dir, server, out, *_served(server, model_dir), "--judge-max-retries", "0")
        assert run_command(argv) == 1
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert [case["score"] for case in results["cases"]] == [8.0, 8.0]
    assert (results["num_unscored"], results["num_partly_scored"], results["num_failed"]) == (0, 2, 2)
    assert all("invalid reply: no rating [[n]] in it" in failure["error"] for failure in results["failures"])
    assert "2 were rated in fewer than 2 judge runs" in (out / "summary.md").read_text(encoding="utf-8")


def test_a_rerun_with_other_generation_settings_is_refused(model_dir, dataset_dir, tmp_path):
    out = tmp_path / "eval"
    with LoopbackServer(judge_or_answer) as server:
        argv = _argv(model_dir, dataset_dir, server, out, *_served(server, model_dir))
        assert run_command(argv) == 0
        answers = (out / "predictions.jsonl").read_text(encoding="utf-8")
        count = len(server.requests)
        shorter = argv[:]
        shorter[shorter.index("--max-new-tokens") + 1] = "4"
        with pytest.raises(UserInputError, match=r"other settings \(max_new_tokens: 8 -> 4\).*another --output-dir"):
            run_command(shorter)
        with pytest.raises(UserInputError, match=r"generation: 'server' -> 'transformers'"):
            run_command(_argv(model_dir, dataset_dir, server, out))
        assert len(server.requests) == count  # refused before any request
        assert (out / "predictions.jsonl").read_text(encoding="utf-8") == answers
        # The same settings resume; another folder takes the new ones.
        assert run_command(argv) == 0
        shorter[shorter.index("--output-dir") + 1] = str(tmp_path / "short")
        assert run_command(shorter) == 0
    assert json.loads((out / "results.json").read_text(encoding="utf-8"))["generation"]["max_new_tokens"] == 8
    assert json.loads((tmp_path / "short" / "run.json").read_text(encoding="utf-8"))["max_new_tokens"] == 4


def _write_parquet(folder, columns):
    folder.mkdir(parents=True)
    datasets.Dataset.from_dict(columns).to_parquet(str(folder / "train-00000-of-00001.parquet"))


def test_a_data_set_that_is_not_longbench_chat_is_refused_with_what_it_has(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")
    sft = tmp_path / "sft"  # the layout of `longalign data build sft --out DIR`
    _write_parquet(sft / "data", {"messages": [[{"role": "user", "content": "hi"}]], "source": ["short"]})
    out = tmp_path / "eval"
    argv = ["--model", "m", "--judge-model", "j", "--judge-base-url", _closed_port_url(), "--output-dir", str(out)]
    with pytest.raises(UserInputError) as error:
        run_command([*argv, "--dataset", str(sft)])
    assert str(error.value) == (
        f"--dataset {sft} is not a LongBench-Chat data set: it has configs ['default']; config 'default' has splits "
        "['train'] and columns ['messages', 'source'], but LongBench-Chat has configs all, en and zh with a test "
        "split; build one with `longalign data build longbench-chat --out DIR` and pass --dataset DIR (or the Hub id "
        "it was pushed to)"
    )

    columns = tmp_path / "columns"  # the right config and split, the wrong columns
    _write_parquet(columns / "all", {"idx": [1], "query": ["q"], "prompt": ["p"]})
    (columns / "README.md").write_text(
        "---\nconfigs:\n- config_name: all\n  data_files:\n  - split: test\n    path: all/*.parquet\n---\n"
    )
    with pytest.raises(
        UserInputError, match=r"has columns \['idx', 'prompt', 'query'\].*missing \['answer', 'few_shots'"
    ):
        run_command([*argv, "--dataset", str(columns)])

    (tmp_path / "empty").mkdir()
    (tmp_path / "file.json").write_text("{}")
    for dataset, message in [
        (tmp_path / "empty", "holds no data set"),
        (tmp_path / "file.json", "is a file, not a data set folder"),
        (tmp_path / "missing", "no such folder"),
        ("./missing", "no such folder"),
    ]:
        with pytest.raises(UserInputError, match=message) as error:
            run_command([*argv, "--dataset", str(dataset)])
        assert "longalign data build longbench-chat --out DIR" in str(error.value)
    assert not out.exists()  # nothing is written before the inputs are checked


def test_bad_saved_predictions_name_the_file_and_line(model_dir, dataset_dir, tmp_path):
    out = tmp_path / "eval"
    out.mkdir()
    path = out / "predictions.jsonl"
    good = json.dumps({"idx": 1, "model": str(model_dir), "prediction": "x"})
    with LoopbackServer(judge_or_answer) as server:
        path.write_text(good + "\n{not json\n" + good + "\n", encoding="utf-8")
        with pytest.raises(UserInputError, match=rf"^{re.escape(str(path))}, line 2: not valid JSON"):
            _eval(model_dir, dataset_dir, server, out)
        path.write_text(json.dumps({"idx": 1, "answer": "x"}) + "\n", encoding="utf-8")
        with pytest.raises(UserInputError, match=r"line 1: not a saved answer .*fix or delete that line"):
            _eval(model_dir, dataset_dir, server, out)
        assert not server.requests


def test_the_metric_and_the_command_send_identical_judge_requests(model_dir, dataset_dir, tmp_path):
    """One code path decides what the judge sees: the same answers give byte-identical requests from both."""

    def is_judge(request):
        return request.messages[0]["content"] == JUDGE_SYSTEM_PROMPT

    with LoopbackServer(judge_or_answer) as server:
        run_command(_argv("served-model", dataset_dir, server, tmp_path / "eval", *_served(server, model_dir)))
        from_command = sorted(request.raw for request in server.requests if is_judge(request))
    results = json.loads((tmp_path / "eval" / "results.json").read_text(encoding="utf-8"))
    answers = [case["prediction"] for case in results["cases"]]
    assert answers == ["A served answer\nover two lines."] * 2  # saved as given, line break and all

    cases = datasets.load_dataset(str(dataset_dir), "all", split="test").select(range(2))
    metric = evaluate.load(LONGBENCH_CHAT, keep_in_memory=True)
    with LoopbackServer(judge_or_answer) as server:
        scores = metric.compute(
            predictions=answers,
            references=cases["answer"],
            questions=cases["query"],
            few_shots=cases["few_shots"],
            judge_template=cases[0]["judge_template"],
            languages=cases["language"],
            judge={"model": "loopback-judge", "base_url": server.base_url},
        )
        from_metric = sorted(request.raw for request in server.requests)

    assert len(from_command) == 4 and from_metric == from_command
    assert all(b"A served answer over two lines." in raw for raw in from_metric)  # flattened, as the paper's judge saw
    assert scores["score"] == results["score"] == 6.0


def test_a_model_folder_that_does_not_exist_is_a_user_error_that_writes_nothing(dataset_dir, tmp_path):
    out = tmp_path / "eval"
    with LoopbackServer(judge_or_answer) as server:
        with pytest.raises(UserInputError) as error:
            run_command(_argv(tmp_path / "no-model", dataset_dir, server, out))
        assert not server.requests
    assert str(error.value) == (
        f"Cannot load a tokenizer from '{tmp_path / 'no-model'}' (no such folder): pass a model folder or a Hub id "
        "that has one, with --model (or --tokenizer)"
    )
    assert not out.exists()


def test_bad_dtype_attention_and_model_folders_write_nothing(model_dir, dataset_dir, tmp_path, capsys):
    out = tmp_path / "eval"
    tokenizer_only = tmp_path / "tokenizer-only"
    build_byte_tokenizer().save_pretrained(tokenizer_only)
    no_tokenizer = tmp_path / "no-tokenizer"
    build_tiny_model(build_byte_tokenizer(), max_position_embeddings=1024).save_pretrained(no_tokenizer)
    with LoopbackServer(judge_or_answer) as server:
        with pytest.raises(SystemExit) as exit_info:
            _eval(model_dir, dataset_dir, server, out, "--dtype", "float99")
        assert exit_info.value.code == 2 and "argument --dtype: invalid choice: 'float99'" in capsys.readouterr().err
        for model, extra, message in [
            (model_dir, ["--attn-implementation", "foo"], r"--attn-implementation 'foo' is not an attention backend"),
            (tokenizer_only, [], r"tokenizer-only' \(the folder has no config.json, so it holds no model\)"),
            (no_tokenizer, [], r"no-tokenizer' \(the folder holds no tokenizer file"),
            (model_dir, ["--tokenizer", str(no_tokenizer)], r"no-tokenizer' \(the folder holds no tokenizer file"),
        ]:
            with pytest.raises(UserInputError, match=message):
                _eval(model, dataset_dir, server, out, *extra)
            assert not out.exists(), extra  # neither run.json nor an empty predictions.jsonl
        assert not server.requests


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--judge-timeout", "0"], "argument --judge-timeout: '0' is not a number above 0"),
        (["--judge-timeout", "-5"], "argument --judge-timeout: '-5' is not a number above 0"),
        (["--temperature", "-1"], "argument --temperature: '-1' is not a number of at least 0"),
        (["--judge-max-retries", "-1"], "argument --judge-max-retries: '-1' is not a whole number of at least 0"),
        (["--seed", "-1"], "argument --seed: '-1' is not a seed"),
        (["--generation-concurrency", "0"], "argument --generation-concurrency: '0' is not a whole number of at"),
    ],
)
def test_bad_numbers_are_argument_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_command(["--model", "m", *argv])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_a_generation_server_that_is_down_leaves_cases_unanswered_like_a_judge_that_is_down(
    model_dir, dataset_dir, tmp_path, monkeypatch, caplog, capsys
):
    from longalign_hf.llm_client import ChatClient

    monkeypatch.setattr(ChatClient, "_backoff_delay", lambda self, attempt, retry_after: 0.0)
    out = tmp_path / "eval"
    with LoopbackServer(judge_or_answer) as server:
        argv = _argv("served-model", dataset_dir, server, out, *_served(server, model_dir))
        argv[argv.index("--generation-base-url") + 1] = _closed_port_url()
        with caplog.at_level(logging.INFO):
            assert run_command(argv) == 1
        assert not server.requests  # no answer, so nothing to judge
        failed = [r for r in caplog.records if r.levelno == logging.WARNING and "APIConnectionError" in r.getMessage()]
        assert len(failed) == 2  # one warning per case the server did not answer
        summary = (out / "summary.md").read_text(encoding="utf-8")
        assert "**Incomplete:** served-model: 2 of 2 cases have no answer (the generation failed)." in summary
        assert summary.strip() in capsys.readouterr().out
        # With --allow-incomplete the same result exits 0; the cases count as unscored.
        assert run_command([*argv, "--allow-incomplete"]) == 0

    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert (results["num_unanswered"], results["num_unscored"], results["num_scored"]) == (2, 2, 0)
    assert [case["prediction"] for case in results["cases"]] == [None, None]


def test_a_case_the_server_did_not_answer_is_unscored_and_the_others_are_judged(
    model_dir, dataset_dir, tmp_path, monkeypatch
):
    def refuse_the_chinese_case(request):
        if request.messages[0]["content"] != JUDGE_SYSTEM_PROMPT and "请" in request.user_content:
            return Reply(status=400)  # not retried
        return judge_or_answer(request)

    out = tmp_path / "eval"
    with LoopbackServer(refuse_the_chinese_case) as server:
        assert run_command(_argv("served-model", dataset_dir, server, out, *_served(server, model_dir))) == 1
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert [case["score"] for case in results["cases"]] == [6.0, None]
    assert [case["ratings"] for case in results["cases"]] == [[6.0, 6.0], [None, None]]
    assert (results["num_unanswered"], results["num_unscored"], results["num_failed"]) == (1, 1, 0)
    assert results["language_scores"] == {"en": 6.0, "zh": None}
    assert "1 of 2 cases have no answer" in (out / "summary.md").read_text(encoding="utf-8")


def test_a_missing_language_config_says_which_configs_the_set_has(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")
    out = tmp_path / "longbench_chat_en"
    source = write_source(tmp_path / "source", cases=ENGLISH_ONLY, few_shots=FEW_SHOTS[: len(ENGLISH_ONLY)])
    cli.main(["data", "build", "longbench-chat", "--source", str(source), "--out", str(out)])
    argv = ["--model", "m", "--judge-model", "j", "--judge-base-url", _closed_port_url()]
    with pytest.raises(UserInputError) as error:
        run_command([*argv, "--dataset", str(out), "--config", "zh", "--output-dir", str(tmp_path / "eval")])
    assert str(error.value).startswith(
        f"--dataset {out} has no 'zh' config (it has: all, en): the source it was built from has no Chinese case. "
        "Pass --config all or en, or build a set with 'zh' cases from the full benchmark"
    )
    assert not (tmp_path / "eval").exists()


def test_output_and_cache_folders_that_cannot_be_written_name_their_flag(
    model_dir, dataset_dir, tmp_path, monkeypatch
):
    out = tmp_path / "eval"
    (tmp_path / "a-file").write_text("x")
    real_mkdir = Path.mkdir

    def mkdir(self, *args, **kwargs):  # a folder the permissions allow but the file system refuses (e.g. /proc/x)
        if self.name == "read-only":
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    with LoopbackServer(judge_or_answer) as server:
        for extra, message in [
            (["--output-dir", str(tmp_path / "a-file")], r"^--output-dir \S+a-file is a file: pass a folder"),
            (["--judge-cache-dir", str(tmp_path / "a-file" / "c")], r"^--judge-cache-dir \S+c: \S+a-file is a file"),
            (["--judge-cache-dir", str(tmp_path / ("x" * 300))], r"^--judge-cache-dir \S+: File name too long; pass"),
            (
                ["--judge-cache-dir", str(tmp_path / "read-only")],
                r"^--judge-cache-dir \S+read-only: cannot create this folder \(Read-only file system\); pass a",
            ),
        ]:
            with pytest.raises(UserInputError, match=message):
                _eval(model_dir, dataset_dir, server, out, *_served(server, model_dir), *extra)
            assert not out.exists(), extra
        assert not server.requests
