"""`recipes/sft.py`: the embedded default end to end, real loading code on local paths, configs, bad input."""

import glob
import importlib.util
import json
import os
import re
import subprocess
import sys

import pytest
import torch
import yaml
from launch import accelerate_launch
from transformers import AutoModelForCausalLM, AutoTokenizer

from longalign_hf.tiny import build_byte_tokenizer, build_tiny_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHORT = ["--default_num_short", "24", "--default_num_long", "4", "--max_length", "1024", "--logging_steps", "1"]


def _recipe():
    spec = importlib.util.spec_from_file_location("sft_recipe", os.path.join(ROOT, "recipes", "sft.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules["sft_recipe"] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def recipe():
    return _recipe()


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-model")
    tokenizer = build_byte_tokenizer()
    build_tiny_model(tokenizer, max_position_embeddings=1024).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def test_embedded_default_trains_and_saves_a_loadable_model(recipe, tmp_path):
    output_dir = str(tmp_path / "out")
    trainer = recipe.main(*recipe.parse_args([*SHORT, "--output_dir", output_dir]))
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert logs and all({"loss", "learning_rate", "tokens_per_second"} <= set(entry) for entry in logs)
    assert trainer.args.batching == "pack" and trainer.args.loss_weighting == "sequence"
    model = AutoModelForCausalLM.from_pretrained(output_dir)
    tokenizer = AutoTokenizer.from_pretrained(output_dir)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    generated = model.generate(**prompt, max_new_tokens=4, do_sample=False)
    assert generated.shape[1] == prompt["input_ids"].shape[1] + 4
    trained = trainer.model.state_dict()
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, trained[name])


def test_local_model_and_data_file(recipe, tiny_dir, tmp_path):
    rows = [
        {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a" * i}]}
        for i in range(1, 9)
    ]
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    args = recipe.parse_args(["--model_name_or_path", tiny_dir, "--dataset_name", str(data), "--max_length", "128",
                              "--max_steps", "2", "--output_dir", str(tmp_path / "out"), "--batching", "sort",
                              "--report_to", "none", "--activation_checkpointing", "true"])  # fmt: skip
    trainer = recipe.main(*args)
    assert trainer.state.global_step == 2 and trainer.args.batching == "sort"
    assert os.path.exists(tmp_path / "out" / "model.safetensors")


@pytest.mark.parametrize(
    ("rows", "match"),
    [
        (None, "does not exist"),
        ([{"text": "plain"}], "no `messages` column"),
        (
            [{"messages": [{"role": "user", "content": "q"}]}],
            r"data.jsonl, row 0 \(rows count from 0\): the conversation has no assistant turn",
        ),
    ],
)
def test_bad_data_fails_fast(recipe, tiny_dir, tmp_path, rows, match):
    data = tmp_path / "data.jsonl"
    if rows is not None:
        data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    args = recipe.parse_args(["--model_name_or_path", tiny_dir, "--dataset_name", str(data), "--max_length", "64",
                              "--output_dir", str(tmp_path / "out"), "--report_to", "none"])  # fmt: skip
    with pytest.raises((FileNotFoundError, ValueError), match=match):
        recipe.main(*args)


def test_unknown_options_are_refused(recipe, tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("max_length: 128\nnot_an_option: 3\n")
    with pytest.raises(ValueError, match="not_an_option"):
        recipe.parse_args(["--config", str(config)])
    with pytest.raises(ValueError, match="not_an_option"):
        recipe.parse_args(["--not_an_option", "3"])


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "recipes", "configs", "*.yaml"))))
def test_every_recipe_parses(recipe, path):
    # A renamed TRL/transformers field fails here rather than on a user's cluster.
    script_args, training_args, model_args, mixture = recipe.parse_args(["--config", path, "--use_cpu", "true"])
    assert training_args.batching in ("naive", "sort", "pack") and training_args.loss_weighting == "sequence"
    if path.endswith("-cpu.yaml"):  # sized for a CPU, on generated data; the others are the paper's settings
        assert script_args.generated_data or not model_args.model_name_or_path
    else:
        assert model_args.model_name_or_path and training_args.max_length >= 32768 and mixture.datasets
        assert (
            training_args.learning_rate == 2e-5
            and training_args.adam_beta2 == 0.95
            and training_args.num_train_epochs == 2
        )


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "recipes", "accelerate", "*.yaml"))))
def test_every_accelerate_config_parses(path):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(path)
    assert config.num_processes == 8 and config.mixed_precision == "bf16"


@pytest.mark.multiprocess
def test_recipe_starts_under_ddp_with_two_processes(tmp_path):
    completed = accelerate_launch(
        os.path.join(ROOT, "recipes", "sft.py"),
        [*SHORT, "--max_steps", "2", "--output_dir", str(tmp_path / "out")],
        config_file=os.path.join(ROOT, "recipes", "accelerate", "ddp.yaml"),
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "Model saved to" in completed.stdout and os.path.exists(tmp_path / "out" / "model.safetensors")
    # One card, written by the main process, that counts both processes.
    card = (tmp_path / "out" / "README.md").read_text(encoding="utf-8")
    assert "| devices | 2 x CPU (" in card and "x 2 data-parallel replica(s)) |" in card
    assert "| engine | DDP over 2 processes (gloo) |" in card


def test_a_mixture_and_a_dataset_name_together_are_refused(recipe):
    config = os.path.join(ROOT, "recipes", "configs", "qwen2.5-7b-32k.yaml")
    script_args, _, _, mixture = recipe.parse_args(["--config", config, "--use_cpu", "true", "--dataset_name", "x"])
    with pytest.raises(ValueError, match="use one"):
        recipe.load_data(script_args, mixture, embedded=False, seed=0, check_rows=True)


def test_generated_data_and_a_dataset_name_together_are_refused(recipe):
    config = os.path.join(ROOT, "recipes", "configs", "smollm2-135m-cpu.yaml")
    script_args, _, _, mixture = recipe.parse_args(["--config", config, "--dataset_name", "x"])
    with pytest.raises(ValueError, match="--generated_data and .* --dataset_name are both set; use one"):
        recipe.load_data(script_args, mixture, embedded=False, seed=0, check_rows=True)


def test_the_smollm2_recipe_adapts_the_upper_10_of_30_layers():
    with open(os.path.join(ROOT, "recipes", "configs", "smollm2-135m-cpu.yaml")) as handle:
        (pattern,) = yaml.safe_load(handle)["lora_target_modules"]
    projections = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
                   "mlp.up_proj", "mlp.down_proj"]  # fmt: skip
    names = [f"model.layers.{i}.{p}" for i in range(30) for p in projections] + ["model.embed_tokens", "lm_head"]
    # peft matches a string target_modules with re.fullmatch against each module's name.
    assert [name for name in names if re.fullmatch(pattern, name)] == names[20 * 7 : 30 * 7]


def test_the_smollm2_recipe_trains_a_local_model_on_generated_retrievals(recipe, tiny_dir, tmp_path):
    config = os.path.join(ROOT, "recipes", "configs", "smollm2-135m-cpu.yaml")
    output_dir = tmp_path / "out"
    # The config's path on the tiny model: its two layers take LoRA on q/v, its retrievals are short.
    args = recipe.parse_args(["--config", config, "--model_name_or_path", tiny_dir, "--lora_target_modules", "q_proj",
                              "v_proj", "--max_length", "1024", "--max_steps", "2", "--default_num_short", "4",
                              "--default_num_long", "3", "--default_min_long_chars", "400",
                              "--default_max_long_chars", "800", "--output_dir", str(output_dir)])  # fmt: skip
    trainer = recipe.main(*args)
    assert trainer.state.global_step == 2 and trainer.args.loss_weighting == "sequence"
    # One document of the data holds three facts and asks one.
    prompts = [row["messages"][1]["content"] for row in recipe.load_data(args[0], args[3], False, 0, True)]
    long_prompts = [prompt for prompt in prompts if "What is the secret code of" in prompt]
    assert len(prompts) == 7 and len(long_prompts) == 3
    assert all(prompt.count("The secret code of") == 3 for prompt in long_prompts)
    assert (output_dir / "adapter_model.safetensors").exists()
    card = (output_dir / "README.md").read_text()
    assert "generated long-tailed chat data (4 short + 3 long samples, longalign_hf.data.synthetic)" in card


def test_a_mixture_is_shuffled_with_the_run_seed(recipe, tmp_path):
    files = []
    for name in ("long", "short"):
        path = tmp_path / f"{name}.jsonl"
        rows = [
            {"messages": [{"role": "user", "content": f"{name} {i}"}, {"role": "assistant", "content": "a"}]}
            for i in range(40)
        ]
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
        files.append(str(path))
    config = tmp_path / "mix.yaml"
    config.write_text("datasets:\n" + "".join(f"  - path: {path}\n" for path in files))

    def order(seed):
        script_args, _, _, mixture = recipe.parse_args(["--config", str(config), "--seed", str(seed)])
        return [row["messages"][0]["content"] for row in recipe.load_data(script_args, mixture, False, seed, True)]

    from longalign_hf.data.sft_data import load_chat_dataset, mix_datasets

    expected = mix_datasets([load_chat_dataset(path) for path in files], seed=7)
    assert order(7) == [row["messages"][0]["content"] for row in expected]
    assert order(7) != order(8) and sorted(order(7)) == sorted(order(8))


def _chat_file(path, rows=None):
    rows = rows or [
        {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a" * i}]}
        for i in range(1, 9)
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def test_checkpointing_through_its_deprecated_name_reaches_the_embedded_default(recipe):
    _, training_args, _, _ = recipe.parse_args(["--gradient_checkpointing", "true"])
    assert training_args.activation_checkpointing is True
    _, training_args, _, _ = recipe.parse_args([])
    assert training_args.activation_checkpointing is False  # the embedded default's own setting


def test_quantization_is_applied_or_refused_never_ignored(recipe, tiny_dir):
    from longalign_hf.errors import UserInputError

    script_args, training_args, model_args, _ = recipe.parse_args(["--load_in_4bit", "true"])
    with pytest.raises(UserInputError, match="quantize a pretrained model"):
        recipe.load_tokenizer_and_model(model_args, training_args)
    script_args, training_args, model_args, _ = recipe.parse_args(
        ["--model_name_or_path", tiny_dir, "--load_in_4bit", "true", "--use_cpu", "true"]
    )
    # bitsandbytes is not installed here: transformers must be asked to quantize, and say what it lacks.
    with pytest.raises((ImportError, ValueError, RuntimeError), match="(?i)bitsandbytes"):
        recipe.load_tokenizer_and_model(model_args, training_args)


def test_streaming_is_refused(recipe, tmp_path):
    from longalign_hf.errors import UserInputError

    data = _chat_file(tmp_path / "chat.jsonl")
    script_args, training_args, _, mixture = recipe.parse_args(["--dataset_name", data, "--dataset_streaming", "true"])
    with pytest.raises(UserInputError, match="streaming is not supported"):
        recipe.load_data(script_args, mixture, False, 0, True)


def test_evaluation_uses_the_test_split(recipe, tiny_dir, tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    _chat_file(folder / "train.jsonl")
    _chat_file(folder / "test.jsonl")
    args = recipe.parse_args(["--model_name_or_path", tiny_dir, "--dataset_name", str(folder), "--max_length", "128",
                              "--max_steps", "1", "--eval_strategy", "steps", "--eval_steps", "1",
                              "--output_dir", str(tmp_path / "out"), "--report_to", "none"])  # fmt: skip
    trainer = recipe.main(*args)
    assert any("eval_loss" in entry for entry in trainer.state.log_history)
    args[0].dataset_test_split = "validation"
    with pytest.raises(ValueError, match="validation"):
        recipe.load_eval_data(args[0], args[3], True)


def test_a_bad_row_names_its_file_and_the_command_line_exits_2(recipe, tiny_dir, tmp_path, monkeypatch, capsys):
    rows = [{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}] * 3
    data = _chat_file(tmp_path / "bad.jsonl", [*rows, {"messages": [{"role": "user", "content": "q"}]}])
    argv = ["sft.py", "--model_name_or_path", tiny_dir, "--dataset_name", data, "--max_length", "64",
            "--output_dir", str(tmp_path / "out"), "--report_to", "none"]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exit_info:
        recipe.run_from_command_line()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"error: {data}, row 3 (rows count from 0): the conversation has no assistant turn")


def _checkpoint(folder):
    folder.mkdir(parents=True)
    (folder / "trainer_state.json").write_text("{}")
    return folder


# Each bad input, with the start of the one line it must end in. A --dataset_name that does not exist comes with
# each: an input checked after the data started loading would end in the data set's error instead.
MISTYPED_INPUTS = {
    "unknown option": (
        ["--leraning_rate", "1e-4"],
        "error: Some specified arguments are not used by the HfArgumentParser",
    ),
    "output_dir is a file": (
        ["--output_dir", "{tmp}/a-file"],
        "error: --output_dir {tmp}/a-file is a file: pass a folder",
    ),
    "resume from nowhere": (
        ["--resume_from_checkpoint", "{tmp}/out/checkpoint-9"],
        "error: --resume_from_checkpoint {tmp}/out/checkpoint-9: no such folder, so it is not a checkpoint of a run. "
        "Pass a checkpoint-N folder that a run saved (`--save_strategy steps`); the last one in --output_dir is "
        "{tmp}/out/checkpoint-4",
    ),
    "missing chat template": (
        ["--chat_template_path", "{tmp}/templates/chat.jinja"],
        "error: --chat_template_path {tmp}/templates/chat.jinja: no such file; pass a Jinja template file",
    ),
    "missing chat template folder": (
        ["--chat_template_path", "{tmp}/templates/tokenizer"],
        "error: --chat_template_path {tmp}/templates/tokenizer: no such folder",
    ),
    "flash_attention_2 without flash-attn or GPU": (
        ["--attn_implementation", "flash_attention_2"],
        "error: attn_implementation='flash_attention_2' cannot run here: flash-attn is not installed",
    ),
    "sp_size that does not split the heads": (
        [],  # sp_size 3 from the accelerate launcher's environment; the tiny model has 4 heads (2 key/value heads)
        "error: sp_size 3 cannot split the model's 4 attention heads (2 key/value heads) over the ranks of a "
        "sequence-parallel group: Ulysses gives each rank heads / sp_size of them. Set `parallelism_config_sp_size` "
        "in the accelerate config to one of 2, 4",
    ),
}


@pytest.mark.parametrize("case", list(MISTYPED_INPUTS))
def test_a_mistyped_input_ends_in_one_line_and_status_2_before_any_data_work(
    recipe, tiny_dir, tmp_path, monkeypatch, capsys, case
):
    from longalign_hf.training.attention import flash_attn_available

    if case.startswith("flash_attention_2") and flash_attn_available():
        pytest.skip("flash-attn and a GPU are here: flash_attention_2 is a valid choice")
    (tmp_path / "a-file").write_text("")
    _checkpoint(tmp_path / "out" / "checkpoint-4")
    if case.startswith("sp_size"):
        monkeypatch.setenv("ACCELERATE_USE_PARALLELISM_CONFIG", "true")
        monkeypatch.setenv("PARALLELISM_CONFIG_SP_SIZE", "3")
    options, expected = MISTYPED_INPUTS[case]
    argv = ["sft.py", "--model_name_or_path", tiny_dir, "--dataset_name", str(tmp_path / "missing.jsonl"),
            "--output_dir", str(tmp_path / "out"), "--report_to", "none"]  # fmt: skip
    monkeypatch.setattr(sys, "argv", [*argv, *(option.format(tmp=tmp_path) for option in options)])
    with pytest.raises(SystemExit) as exit_info:
        recipe.run_from_command_line()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and [line for line in err.splitlines() if line.startswith("error:")] == [
        err.strip().splitlines()[-1]
    ]
    assert err.strip().splitlines()[-1].startswith(expected.format(tmp=tmp_path))


def test_a_setting_the_trainer_refuses_ends_in_one_line_and_status_2(recipe, tmp_path, monkeypatch, capsys):
    # Known only once the trainer sees the model: an attention backend that would let packed samples see each other.
    argv = ["sft.py", "--output_dir", str(tmp_path / "out"), "--attn_implementation", "flex_attention",
            "--default_num_short", "8", "--default_num_long", "2"]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exit_info:
        recipe.run_from_command_line()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert (
        err.strip()
        .splitlines()[-1]
        .startswith("error: attention backend 'flex_attention' cannot keep packed samples apart")
    )


def test_an_unknown_model_id_offline_ends_in_one_line_and_status_2(tmp_path):
    # A subprocess, as a user runs it: offline mode is read when huggingface_hub is imported, and what the interpreter
    # prints for an exception that escapes (four chained tracebacks before) is part of what is checked.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    argv = ["--model_name_or_path", "nobody/no-such-model", "--dataset_name", str(tmp_path / "missing.jsonl"),
            "--output_dir", str(tmp_path / "out")]  # fmt: skip
    completed = subprocess.run([sys.executable, os.path.join(ROOT, "recipes", "sft.py"), *argv], capture_output=True,
                               text=True, env=env, timeout=300)  # fmt: skip
    assert completed.returncode == 2, completed.stderr[-3000:]
    assert "Traceback" not in completed.stderr
    [line] = [line for line in completed.stderr.splitlines() if line.startswith("error:")]
    assert completed.stderr.strip().splitlines()[-1] == line
    assert line.startswith(
        "error: --model_name_or_path nobody/no-such-model: cannot load a model config (We couldn't connect to "
        "'https://huggingface.co' to load the files, and couldn't find them in the cached files.); check the Hub id "
        "(and --model_revision), your network connection and login (for a gated model), or pass a local model folder"
    )


@pytest.mark.multiprocess
def test_bad_input_under_a_two_process_launch_is_printed_once_with_status_2_in_the_summary(tmp_path):
    (tmp_path / "a-file").write_text("")
    completed = accelerate_launch(
        os.path.join(ROOT, "recipes", "sft.py"), ["--output_dir", str(tmp_path / "a-file")], timeout=180
    )
    line = f"error: --output_dir {tmp_path / 'a-file'} is a file: pass a folder (it is created if missing)"
    assert completed.stderr.splitlines().count(line) == 1, completed.stderr[-3000:]
    # The launcher's failure summary: each process's exit status and reason (their error files), no pointer to a
    # traceback; no frame of the recipe or the package in what the launcher prints.
    assert completed.stderr.count("exitcode  : 2 (pid: ") == 2
    assert completed.stderr.count(f"traceback : {line}") == 2 and "To enable traceback" not in completed.stderr
    frames = [text for text in completed.stderr.splitlines() if text.lstrip().startswith('File "')]
    assert frames and not [frame for frame in frames if "sft.py" in frame or "longalign_hf" in frame]
    assert completed.returncode == 1  # accelerate launch ends with 1 whatever its workers' status


@pytest.mark.multiprocess
@pytest.mark.slow
def test_recipe_trains_with_sequence_parallelism_from_the_accelerate_config(tmp_path):
    # recipes/accelerate/sp4_zero3.yaml, cut to this CPU: 2 processes, sp_size 2, ZeRO-2, no bf16.
    pytest.importorskip("deepspeed")
    import yaml

    with open(os.path.join(ROOT, "recipes", "accelerate", "sp4_zero3.yaml")) as handle:
        config = yaml.safe_load(handle)
    config.update(num_processes=2, mixed_precision="no")
    config["deepspeed_config"].update(zero_stage=2, zero3_init_flag=False)
    config["parallelism_config"].update(parallelism_config_sp_size=2, parallelism_config_dp_shard_size=1)
    config_path = tmp_path / "sp2.yaml"
    config_path.write_text(yaml.safe_dump(config))
    completed = accelerate_launch(
        os.path.join(ROOT, "recipes", "sft.py"),
        [*SHORT, "--max_steps", "2", "--output_dir", str(tmp_path / "out")],
        config_file=str(config_path), env={"DS_ACCELERATOR": "cpu"}, timeout=300,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-3000:]
    log = completed.stdout + completed.stderr
    assert "sp_size=2 x data parallel 1" in log and "512 tokens per rank" in log
    assert "'loss'" in log and os.path.exists(tmp_path / "out" / "model.safetensors")
    card = (tmp_path / "out" / "README.md").read_text()
    assert (
        "| sequence parallelism | DeepSpeed Ulysses, sp_size 2: each row is split into 512 tokens per rank |" in card
    )
    assert "x 1 data-parallel replica(s)) |" in card
    engine = "DeepSpeed ZeRO-2 with Ulysses sequence parallelism (sp_size 2, 1 data-parallel replica(s))"
    assert f"| engine | {engine} over 2 processes (gloo) |" in card and f"Engine: {engine}" in log


def test_the_model_card_names_local_sources_by_name_never_by_path(recipe, tmp_path, monkeypatch):
    # `--push_to_hub` publishes the card: a local base model, data set, evaluated model or judge must not bring the
    # folders above it (`/home/<user>/...`) into it, only its own folder or file name.
    import datasets
    from longbench_chat_source import write_source
    from loopback_server import LoopbackServer

    from longalign_hf import cli
    from longalign_hf.evaluation.needle import runner

    private = tmp_path / "home-ada-7f3e" / "projects-91c2"
    base = private / "checkpoints-5b0d" / "base-model"
    tokenizer = build_byte_tokenizer()
    build_tiny_model(tokenizer, max_position_embeddings=1024).save_pretrained(base)
    tokenizer.save_pretrained(base)
    (private / "data-c4a1").mkdir()
    data = _chat_file(private / "data-c4a1" / "chat-v2.jsonl")
    out = private / "runs-e8b2" / "tiny-run"
    recipe.main(*recipe.parse_args(["--model_name_or_path", str(base), "--dataset_name", data, "--max_length", "128",
                                    "--max_steps", "1", "--output_dir", str(out), "--report_to", "none"]))  # fmt: skip

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")
    longbench = private / "data-c4a1" / "longbench_chat"
    source = write_source(private / "source-3a7c")
    assert cli.main(["data", "build", "longbench-chat", "--source", str(source), "--out", str(longbench)]) == 0
    titles = []
    plot_heatmap = runner.plot_heatmap
    monkeypatch.setattr(runner, "plot_heatmap", lambda records, path, title, *rest, **options: (
        titles.append(title), plot_heatmap(records, path, title, *rest, **options)))  # fmt: skip
    with LoopbackServer(lambda request: "Rating: [[7]]") as server:  # the judge, and the generation server
        judge = ["--judge-model", str(private / "judges-0d9e" / "judge-7b"), "--judge-base-url", server.base_url]
        needle = ["eval", "needle", "--model", str(out), "--lengths", "700", "--max-new-tokens", "2"]
        assert cli.main([*needle, "--depths", "0,100", "--output-dir", str(private / "evals" / "needle"), *judge]) == 0
        assert cli.main(["eval", "longbench-chat", "--model", str(out), "--dataset", str(longbench), "--tokenizer",
                         str(out), "--generation-base-url", server.base_url, *judge,
                         "--output-dir", str(private / "evals" / "longbench-chat")]) == 0  # fmt: skip

    card = (out / "README.md").read_text(encoding="utf-8")  # the YAML metadata included
    assert "fine-tune of the local checkpoint `base-model`" in card and "Data sets: `chat-v2.jsonl`." in card
    assert "model: tiny-run; depths: 0, 100" in card and "the judge `judge-7b` also rated the single needle" in card
    assert "cases of `longbench_chat`" in card and "| tiny-run | 7.00 |" in card and "judge judge-7b" in card
    assert titles == ["tiny-run: single needle (score 0-1)", "tiny-run: single needle (judge-7b rating 1-10)"]
    folders = [*tmp_path.parts[1:], *private.relative_to(tmp_path).parts, "checkpoints-5b0d", "data-c4a1", "runs-e8b2",
               "judges-0d9e", "source-3a7c", "evals"]  # fmt: skip
    assert [folder for folder in folders if folder in card or any(folder in title for title in titles)] == []
