"""The README's snippets and commands, as written: Python blocks run (Hub ids swapped for local copies), every
`longalign` and `recipes/sft.py` command line parses with the flags it shows."""

import json
import re
import shlex
from pathlib import Path

import pytest

from longalign_hf import cli
from longalign_hf.tiny import build_byte_tokenizer, build_tiny_model

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
BLOCKS = re.findall(r"```(\w+)\n(.*?)```", README, flags=re.DOTALL)
PYTHON = [code for language, code in BLOCKS if language == "python"]
COMMANDS = [
    " ".join(command.split("#")[0].split())
    for language, code in BLOCKS
    if language == "bash"
    for line in code.splitlines()
    for command in line.split("&&")
    if command.strip()
]


def test_the_readme_has_the_snippets_this_file_checks():
    assert len(PYTHON) == 2 and any("LongAlignSFTTrainer" in code for code in PYTHON)
    assert sum(command.startswith("longalign ") for command in COMMANDS) >= 4
    assert sum("recipes/sft.py" in command for command in COMMANDS) >= 3


def test_the_python_api_example_trains(tmp_path, monkeypatch):
    code = next(code for code in PYTHON if "LongAlignSFTTrainer" in code)
    tokenizer = build_byte_tokenizer()
    model_dir, data_dir = tmp_path / "model", tmp_path / "data"
    build_tiny_model(tokenizer, max_position_embeddings=1024).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    data_dir.mkdir()
    rows = [
        {"messages": [{"role": "user", "content": f"question {i} " * 20}, {"role": "assistant", "content": "ok " * i}]}
        for i in range(1, 7)
    ]
    (data_dir / "train.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    hub_ids = {"THUDM/LongAlign-10k": str(data_dir), "meta-llama/Llama-3.1-8B-Instruct": str(model_dir)}
    for hub_id, local in hub_ids.items():
        assert f'"{hub_id}"' in code
        code = code.replace(f'"{hub_id}"', repr(local))
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    trainer = namespace["trainer"]
    assert trainer.state.global_step >= 1 and trainer.args.batching == "pack"
    assert sum(trainer.train_dataset["num_samples"]) == len(rows)


def test_the_metric_example_loads():
    code = next(code for code in PYTHON if "evaluate.load" in code)
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["metric"].name == "long_bench_chat"  # evaluate names it after the class


@pytest.mark.parametrize("command", [c for c in COMMANDS if c.startswith("longalign ")])
def test_longalign_commands_parse(command):
    args = cli.build_parser().parse_args(shlex.split(command)[1:])
    assert callable(args.func)


@pytest.mark.parametrize("command", [c for c in COMMANDS if "recipes/sft.py" in c])
def test_recipe_commands_parse(command, monkeypatch):
    from test_recipe import _recipe

    monkeypatch.chdir(ROOT)
    words = shlex.split(command)
    recipe_args = words[words.index("recipes/sft.py") + 1 :]
    script_args, training_args, model_args, mixture = _recipe().parse_args([*recipe_args, "--use_cpu", "true"])
    assert training_args.max_length and training_args.batching in ("naive", "sort", "pack")
