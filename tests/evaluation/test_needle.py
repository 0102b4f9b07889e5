"""`longalign eval needle`: the run over a model (resume, settings, judge score, heatmaps) and the command end to end."""

import argparse
import json
import logging
import re
import shutil

import matplotlib.image
import pytest
from loopback_server import LoopbackServer

from longalign_hf import cli
from longalign_hf.errors import UserInputError
from longalign_hf.evaluation.needle import answering, command
from longalign_hf.evaluation.needle.probes import DEPTH_TOLERANCE, PAPER_NEEDLE
from longalign_hf.evaluation.needle.runner import judge_needle_answers, run_needle
from longalign_hf.llm_client import ChatClient
from longalign_hf.tiny import build_tiny_model


class CountingGenerator:
    """Wraps `generate_chat_answers` and counts the prompts it is asked to answer."""

    def __init__(self, monkeypatch):
        self.prompts = 0
        original = answering.generate_chat_answers

        def counting(model, tokenizer, prompts, **kwargs):
            self.prompts += len(prompts)
            return original(model, tokenizer, prompts, **kwargs)

        monkeypatch.setattr(answering, "generate_chat_answers", counting)


@pytest.fixture(scope="module")
def tiny_chat_model(tokenizer):
    return build_tiny_model(tokenizer, seed=0, max_position_embeddings=4096).eval()


def _run(model, tokenizer, output_dir, **options):
    settings = {"lengths": [700], "depths": [0, 100], "max_new_tokens": 2, "batch_size": 2}
    return run_needle(model, tokenizer, output_dir=output_dir, **{**settings, **options})


@pytest.fixture(scope="module")
def finished_run(tiny_chat_model, tokenizer, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("needle-run")
    return output_dir, _run(tiny_chat_model, tokenizer, output_dir)


def test_a_rerun_generates_nothing_new(finished_run, tiny_chat_model, tokenizer, tmp_path, monkeypatch):
    output_dir = tmp_path / "run"
    shutil.copytree(finished_run[0], output_dir)
    generator = CountingGenerator(monkeypatch)
    again = _run(tiny_chat_model, tokenizer, output_dir)
    assert generator.prompts == 0
    assert again["records"] == finished_run[1]["records"]

    # A crash cut the last record short: only it is redone; a new depth adds only its own record.
    lines = (output_dir / "needle.jsonl").read_text(encoding="utf-8").splitlines()
    (output_dir / "needle.jsonl").write_text("\n".join(lines[:-1] + [lines[-1][:30]]), encoding="utf-8")
    _run(tiny_chat_model, tokenizer, output_dir)
    assert generator.prompts == 1
    results = _run(tiny_chat_model, tokenizer, output_dir, depths=[0, 50, 100])
    assert generator.prompts == 2
    assert [record["depth"] for record in results["records"]] == [0, 50, 100]


def test_a_rerun_with_other_settings_is_refused(finished_run, tiny_chat_model, tokenizer, tmp_path):
    output_dir = tmp_path / "run"
    shutil.copytree(finished_run[0], output_dir)
    with pytest.raises(ValueError, match=r"other settings \(seed: 42 -> 1\)"):
        _run(tiny_chat_model, tokenizer, output_dir, seed=1)


def test_lengths_over_the_model_window_are_skipped(tiny_chat_model, tokenizer, tmp_path):
    with pytest.raises(ValueError, match="Every length is over the model's 4096-token window"):
        _run(tiny_chat_model, tokenizer, tmp_path, lengths=[4095, 8000])


def test_the_judge_rates_answers_against_the_needle():
    def responder(request):
        return "Right. Rating: [[10]]" if "Dolores Park" in request.user_content.split("Answer]")[1] else "[[1]]"

    answers = ["Eat a sandwich in Dolores Park.", "No idea."]
    with LoopbackServer(responder) as server:
        ratings, usage = judge_needle_answers(ChatClient("loopback-judge", base_url=server.base_url), answers)
    assert ratings == [10.0, 1.0]
    assert usage["requests"] == 2
    ground_truth = server.requests[0].user_content.split("[Ground truth]\n")[1].split("\n")[0]
    assert ground_truth == PAPER_NEEDLE


def test_a_run_with_a_judge_adds_its_score_and_heatmap(finished_run, tiny_chat_model, tokenizer, tmp_path):
    output_dir = tmp_path / "run"
    shutil.copytree(finished_run[0], output_dir)
    with LoopbackServer(lambda request: "Rating: [[4]]") as server:
        results = _run(
            tiny_chat_model, tokenizer, output_dir, judge_model="loopback-judge", judge_base_url=server.base_url
        )
    assert len(server.requests) == 2
    assert [record["judge_rating"] for record in results["records"]] == [4.0, 4.0]
    assert results["judge_scores"]["single"]["mean"] == 4.0
    assert results["judge_model"] == "loopback-judge"
    assert matplotlib.image.imread(output_dir / "heatmap_single_judge.png").ndim == 3


@pytest.fixture(scope="module")
def model_dir(tokenizer, tiny_chat_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-needle-model")
    tokenizer.save_pretrained(path)
    tiny_chat_model.save_pretrained(path)
    return path


def test_the_command_writes_results_heatmaps_and_summary(model_dir, tmp_path, capsys):
    out = tmp_path / "needle"
    argv = ["eval", "needle", "--model", str(model_dir), "--lengths", "800,1000,5000", "--depths", "2"]
    argv += ["--probes", "single,multivalue", "--max-new-tokens", "2", "--batch-size", "2", "--output-dir", str(out)]
    assert cli.main(argv) == 0

    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    cells = {(r["probe"], r["length"], r["depth"]) for r in results["records"]}
    assert cells == {(p, n, d) for p in ("single", "multivalue") for n in (800, 1000) for d in (0, 100)}
    for record in results["records"]:
        assert abs(record["prompt_tokens"] - record["length"]) <= 3
        assert 0 <= record["score"] <= 1 and isinstance(record["answer"], str)
    assert results["skipped"] == [
        {"length": 5000, "reason": "5000 prompt + 2 new tokens exceed the model's 4096-token window"}
    ]
    assert set(results["scores"]) == {"single", "multivalue"}
    assert (results["num_unscored"], results["heatmaps_skipped"], results["depth_tolerance"]) == (0, [], 2.0)
    assert results["num_off_depth"] == sum(abs(r["needle_depths"][0] - r["depth"]) > 2.0 for r in results["records"])
    assert len((out / "needle.jsonl").read_text(encoding="utf-8").splitlines()) == 8
    for probe in ("single", "multivalue"):
        image = matplotlib.image.imread(out / f"heatmap_{probe}.png")
        assert image.ndim == 3 and image.shape[0] >= 300 and image.shape[1] >= 500
    summary = capsys.readouterr().out
    assert "| probe | mean | 800 | 1000 |" in summary and "| single |" in summary and "| multivalue |" in summary
    assert (out / "summary.md").read_text(encoding="utf-8").startswith("| probe | mean | 800 | 1000 |")


def run_command(argv):
    """`longalign eval needle ARGV` through the command's own parser: a user error raises as it is."""
    parser = argparse.ArgumentParser()
    command.add_parser(parser.add_subparsers())
    args = parser.parse_args(["needle", *argv])
    return args.func(args)


def _needle_argv(model_dir, out, *extra):
    argv = ["--model", str(model_dir), "--lengths", "700", "--depths", "0,100", "--max-new-tokens", "2"]
    return [*argv, "--output-dir", str(out), *extra]


def test_a_judge_that_never_rates_costs_only_its_own_heatmap_and_fails_the_command(model_dir, tmp_path, caplog):
    out = tmp_path / "needle"
    with LoopbackServer(lambda request: "I would rather not rate this.") as server:
        argv = _needle_argv(model_dir, out, "--judge-model", "loopback-judge", "--judge-base-url", server.base_url)
        with caplog.at_level(logging.INFO):
            assert run_command(argv) == 1
        assert len(server.requests) == 2 * 6  # each answer asked 1 + 5 times
        failed = [
            r for r in caplog.records if r.levelno == logging.WARNING and "judging needles with" in r.getMessage()
        ]
        results = json.loads((out / "results.json").read_text(encoding="utf-8"))
        assert run_command([*argv, "--allow-incomplete"]) == 0

    assert results["num_unscored"] == 2 and results["judge_scores"]["single"]["mean"] is None
    assert [record["judge_rating"] for record in results["records"]] == [None, None]
    assert results["heatmaps_skipped"] == ["heatmap_single_judge.png"]
    assert matplotlib.image.imread(out / "heatmap_single.png").ndim == 3
    assert not (out / "heatmap_single_judge.png").exists()
    summary = (out / "summary.md").read_text(encoding="utf-8")
    assert (
        f"**Incomplete:** {model_dir}: 2 of 2 single-needle answers have no rating from the judge loopback-judge"
        in (summary)
    )
    assert "heatmap_single_judge.png not drawn" in summary
    assert len(failed) == 3  # one per failed call, then the tally
    assert "invalid reply: no rating [[n]] in it (gave up after 6 attempts)" in failed[0].getMessage()


def test_a_run_that_fails_validation_writes_nothing_and_the_corrected_rerun_runs(model_dir, tmp_path):
    out = tmp_path / "needle"
    with pytest.raises(
        UserInputError, match=r"^--haystack-dir \S+missing does not exist: pass a folder of .txt files"
    ):
        run_command(_needle_argv(model_dir, out, "--haystack-dir", str(tmp_path / "missing")))
    assert not out.exists()
    with pytest.raises(UserInputError, match=r"ask for --lengths over \d+"):
        run_command(_needle_argv(model_dir, out, "--lengths", "200"))  # one token per byte: the template is longer
    assert not out.exists()
    with pytest.raises(UserInputError, match="Every length is over the model's 4096-token window"):
        run_command(_needle_argv(model_dir, out, "--lengths", "5000"))
    assert not out.exists()
    assert run_command(_needle_argv(model_dir, out)) == 0
    assert json.loads((out / "run.json").read_text(encoding="utf-8"))["haystack"] == "pydoc_data.topics"


def test_bad_saved_records_name_the_file_and_line(finished_run, tiny_chat_model, tokenizer, tmp_path):
    output_dir = tmp_path / "run"
    shutil.copytree(finished_run[0], output_dir)
    path = output_dir / "needle.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines()
    path.write_text("\n".join([lines[0], '{"probe": "single"}', *lines[1:]]) + "\n", encoding="utf-8")
    with pytest.raises(UserInputError, match=rf"^{re.escape(str(path))}, line 2: not a needle record"):
        _run(tiny_chat_model, tokenizer, output_dir)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--max-new-tokens", "0"], "argument --max-new-tokens: '0' is not a whole number of at least 1"),
        (["--lengths", "1k,x"], "is not a list of lengths"),
        (["--probes", "single,nope"], "Unknown probes"),
    ],
)
def test_bad_flag_values_are_argument_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_command(["--model", "m", *argv])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_the_heatmap_shows_where_a_needle_went_when_it_is_off_its_row(tmp_path, monkeypatch):
    import matplotlib.axes

    from longalign_hf.evaluation.needle.heatmap import plot_heatmap

    records = [
        {"length": 1000, "depth": 50.0, "needle_depths": [50.5], "score": 1.0},
        {"length": 512, "depth": 75.0, "needle_depths": [57.7], "score": 0.0},
    ]
    texts = []
    original = matplotlib.axes.Axes.text

    def recording_text(self, x, y, text, *args, **kwargs):
        texts.append(text)
        return original(self, x, y, text, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "text", recording_text)
    plot_heatmap(records, tmp_path / "map.png", depth_tolerance=DEPTH_TOLERANCE)
    assert sorted(texts) == ["0 @58%", "1"]  # 50.5 is within the tolerance of 50; 57.7 is not of 75
    assert matplotlib.image.imread(tmp_path / "map.png").ndim == 3


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--depths", "0"], "argument --depths: '0' is not a number of depths from 1 to 101"),
        (["--depths", "-3"], "argument --depths: '-3' is not a number of depths from 1 to 101"),
        (["--depths", "150"], "'150' is not a number of depths from 1 to 101 (more would repeat depths"),
        (["--depths", "0,50,50"], "repeats [50.0]"),
        (["--depths", "0,120"], "depths outside 0-100: [120.0]"),
        (["--lengths", "1,000"], "under 100 tokens (1, 0): did you mean 1000? lengths are comma-separated"),
        (["--lengths", "8k,50"], "under 100 tokens (50): lengths are comma-separated"),
        (["--dtype", "float99"], "argument --dtype: invalid choice: 'float99'"),
        (["--temperature", "-1"], "argument --temperature: '-1' is not a number of at least 0"),
        (["--seed", "-1"], "argument --seed: '-1' is not a seed"),
    ],
)
def test_bad_depths_lengths_and_numbers_are_argument_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_command(["--model", "m", *argv])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def _folder_with(tmp_path, source, name, patterns):
    """A copy of the files of `source` that match `patterns` (e.g. a model saved without its tokenizer)."""
    folder = tmp_path / name
    folder.mkdir()
    for pattern in patterns:
        for path in source.glob(pattern):
            shutil.copy(path, folder / path.name)
    return folder


def test_bad_model_tokenizer_and_output_folders_name_the_folder_and_write_nothing(model_dir, tmp_path):
    out = tmp_path / "needle"
    no_tokenizer = _folder_with(tmp_path, model_dir, "no-tokenizer", ["config.json", "*.safetensors"])
    tokenizer_only = _folder_with(tmp_path, model_dir, "tokenizer-only", ["tokenizer*", "*.jinja"])
    no_weights = _folder_with(tmp_path, model_dir, "no-weights", ["config.json", "tokenizer*", "*.jinja"])
    (tmp_path / "empty").mkdir()
    (tmp_path / "records.jsonl").write_text("{}\n")
    for argv, message in [
        (["--model", str(no_tokenizer)], rf"'{no_tokenizer}' \(the folder holds no tokenizer file: none of tokenizer"),
        (["--tokenizer", str(tmp_path / "empty")], r"empty' \(the folder holds no tokenizer file"),
        (["--model", str(tokenizer_only)], rf"'{tokenizer_only}' \(the folder has no config.json, so it holds no"),
        (["--model", str(no_weights)], r"no-weights' \(the folder has config.json but no weights"),
        (["--attn-implementation", "foo"], r"--attn-implementation 'foo' is not an attention backend: .*sdpa_packed"),
        (["--output-dir", str(tmp_path / "records.jsonl")], r"--output-dir \S+records.jsonl is a file: pass a folder"),
    ]:
        with pytest.raises(UserInputError, match=message):
            run_command([*_needle_argv(model_dir, out), *argv])
        assert not out.exists(), argv
    assert (tmp_path / "records.jsonl").read_text() == "{}\n"


def test_our_attention_backends_load_for_generation(model_dir, tmp_path):
    out = tmp_path / "needle"
    assert run_command(_needle_argv(model_dir, out, "--attn-implementation", "sdpa_packed", "--dtype", "float32")) == 0
    assert len((out / "needle.jsonl").read_text(encoding="utf-8").splitlines()) == 2


@pytest.mark.parametrize(
    "name",
    [None, "eager", "sdpa", "sdpa_packed", "varlen_packed", "flash_attention_2", "flex_attention",
     "kernels-community/flash-attn2", "kernels-community/flash-attn3@v1:flash_attention"],
)  # fmt: skip
def test_attention_names_of_transformers_ours_and_hub_kernels_pass_the_check(name):
    import torch

    from longalign_hf.evaluation.generation import check_model_options

    check_model_options("auto", name)
    check_model_options(torch.bfloat16, name)


@pytest.mark.parametrize(
    ("dtype", "name"), [("auto", "foo"), ("auto", "sdpa_packd"), ("auto", "a/b/c"), ("int8", None)]
)
def test_other_attention_names_and_dtypes_are_refused(dtype, name):
    from longalign_hf.evaluation.generation import check_model_options

    with pytest.raises(UserInputError, match="--dtype 'int8'" if name is None else f"--attn-implementation '{name}'"):
        check_model_options(dtype, name)
