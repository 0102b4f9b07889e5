"""`longalign eval needle --generation-base-url`: the answers come from an OpenAI-compatible server (a loopback one)."""

import argparse
import json
import logging

import pytest
from loopback_server import LoopbackServer, Reply

from longalign_hf.errors import UserInputError
from longalign_hf.evaluation.generation import chat_text
from longalign_hf.evaluation.longbench_chat import command as longbench_chat
from longalign_hf.evaluation.needle import answering, command
from longalign_hf.evaluation.needle.probes import PAPER_NEEDLE
from longalign_hf.llm_client import ChatClient
from longalign_hf.tiny import build_tiny_model

GRID = ["--lengths", "700,900", "--depths", "0,100", "--max-new-tokens", "5"]


@pytest.fixture(scope="module")
def model_dir(tokenizer, tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-needle-model")
    tokenizer.save_pretrained(path)
    build_tiny_model(tokenizer, seed=0, max_position_embeddings=4096).save_pretrained(path)
    return path


def run_command(module, name, argv):
    """`longalign eval NAME ARGV` through the command's own parser: a user error raises as it is."""
    parser = argparse.ArgumentParser()
    module.add_parser(parser.add_subparsers())
    args = parser.parse_args([name, *argv])
    return args.func(args)


def _served_argv(model_dir, server_url, out, *extra):
    argv = ["--model", "served-model", "--tokenizer", str(model_dir), "--generation-base-url", server_url, *GRID]
    return [*argv, "--output-dir", str(out), *extra]


def _needle_answer(request):
    return f"The best thing to do in San Francisco: {PAPER_NEEDLE}"


def test_answers_come_from_the_server_for_the_prompts_a_local_run_would_answer(
    model_dir, tokenizer, tmp_path, monkeypatch
):
    # The prompts a local run answers: its generation is recorded (and answers nothing useful).
    local_prompts = []

    def recording(model, tok, prompts, on_answer, **kwargs):
        local_prompts.extend(prompts)
        for index in range(len(prompts)):
            on_answer(index, "no idea")

    monkeypatch.setattr(answering, "generate_chat_answers", recording)
    local_argv = ["--model", str(model_dir), *GRID, "--output-dir", str(tmp_path / "local")]
    assert run_command(command, "needle", [*local_argv, "--no-model-card"]) == 0

    out = tmp_path / "served"
    with LoopbackServer(_needle_answer) as server:
        argv = _served_argv(model_dir, server.base_url, out, "--generation-concurrency", "3")
        assert run_command(command, "needle", argv) == 0
        requests = list(server.requests)
        assert 1 <= server.max_in_flight <= 3

    assert sorted(request.user_content for request in requests) == sorted(local_prompts) and len(requests) == 4
    for request in requests:
        body = request.body
        assert (body["model"], body["max_tokens"], body["temperature"], body["seed"]) == ("served-model", 5, 0.0, 42)
        assert request.messages == [{"role": "user", "content": request.user_content}]
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    # Each prompt, under the tokenizer's chat template, is as long as its cell asks (within the placement's slack).
    lengths = sorted(len(tokenizer(chat_text(tokenizer, r.user_content), add_special_tokens=False).input_ids)
                     for r in requests)  # fmt: skip
    assert all(abs(got - want) <= 3 for got, want in zip(lengths, [700, 700, 900, 900])), lengths
    assert results["scores"]["single"]["mean"] == 1.0 and len(results["records"]) == 4
    assert (results["num_cells"], results["num_unanswered"], results["heatmaps"]) == (4, 0, ["heatmap_single.png"])
    assert json.loads((out / "run.json").read_text(encoding="utf-8"))["generation"] == "server"
    assert "generation" not in json.loads((tmp_path / "local" / "run.json").read_text(encoding="utf-8"))


def test_cells_the_server_did_not_answer_are_counted_and_a_rerun_asks_only_for_them(
    model_dir, tmp_path, monkeypatch, caplog
):
    monkeypatch.setattr(ChatClient, "_backoff_delay", lambda self, attempt, retry_after: 0.0)
    out = tmp_path / "served"

    def refuse_900_tokens(request):
        return Reply(status=400) if len(request.user_content) > 850 else _needle_answer(request)  # bytes = tokens

    with LoopbackServer(refuse_900_tokens) as server:
        with caplog.at_level(logging.WARNING):
            assert run_command(command, "needle", _served_argv(model_dir, server.base_url, out)) == 1
    assert any("No answer for 2 of 4 cells" in record.getMessage() for record in caplog.records)
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert (results["num_unanswered"], [r["length"] for r in results["records"]]) == (2, [700, 700])
    assert results["scores"]["single"]["by_length"] == {"700": 1.0}
    summary = (out / "summary.md").read_text(encoding="utf-8")
    assert (
        "**Incomplete:** served-model: 2 of 4 cells have no answer (the generation server failed for them)." in summary
    )
    # --allow-incomplete accepts the same result; a rerun against a server that answers asks for the two missing cells.
    with LoopbackServer(refuse_900_tokens) as server:
        argv = _served_argv(model_dir, server.base_url, out, "--allow-incomplete")
        assert run_command(command, "needle", argv) == 0
    with LoopbackServer(_needle_answer) as server:
        assert run_command(command, "needle", _served_argv(model_dir, server.base_url, out)) == 0
        assert sorted(len(request.user_content) > 850 for request in server.requests) == [True, True]
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert (results["num_unanswered"], results["scores"]["single"]["mean"]) == (0, 1.0)
    # The served answers are not mixed with local ones: a local rerun into the folder is refused.
    with pytest.raises(UserInputError, match=r"other settings \(generation: 'server' -> None\)"):
        run_command(command, "needle", ["--model", "served-model", "--tokenizer", str(model_dir), *GRID,
                                        "--output-dir", str(out)])  # fmt: skip


@pytest.mark.parametrize("extra", [["--dtype", "bfloat16"], ["--attn-implementation", "eager"], ["--batch-size", "2"]])
def test_options_of_a_local_model_are_refused_with_a_server(model_dir, tmp_path, extra):
    # The server loads and batches its own model: these would do nothing, so they are refused before anything is written.
    flag = extra[0]
    out = tmp_path / "needle"
    with pytest.raises(UserInputError, match=f"{flag} shape a model loaded here, but --generation-base-url"):
        run_command(command, "needle", _served_argv(model_dir, "http://127.0.0.1:9/v1", out, *extra))
    assert not out.exists()
    out = tmp_path / "longbench-chat"
    argv = ["--model", "served-model", "--tokenizer", str(model_dir), "--generation-base-url", "http://127.0.0.1:9/v1"]
    argv += ["--judge-model", "judge", "--judge-api-key", "key", "--output-dir", str(out), *extra]
    with pytest.raises(UserInputError, match=f"{flag} shape a model loaded here"):
        run_command(longbench_chat, "longbench-chat", argv)
    assert not out.exists()
