"""Every shell and Python block of README.md and the guide (docs/*.md), as written: Python blocks run (Hub ids swapped
for local tiny copies), every `longalign` and `recipes/sft.py` command line parses with the flags it shows, benchmark
command lines name flags their script has, `pip install` names extras setup.py has. A block that cannot run here says
so in a comment the tests recognise (`# needs a GPU`, `# needs the Hub`) and is only checked to say it."""

import json
import re
import shlex
from pathlib import Path

import pytest

from longalign_hf import cli
from longalign_hf.tiny import build_byte_tokenizer, build_tiny_model

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
README = (ROOT / "README.md").read_text(encoding="utf-8")
NEEDS_MARKS = ("# needs a GPU", "# needs the Hub")


def _blocks(path: Path) -> list[tuple[str, str]]:
    """(language, code) of every fenced block; a language-less block counts as shell."""
    text = path.read_text(encoding="utf-8")
    return [(language or "bash", code) for language, code in re.findall(r"^```(\w*)\n(.*?)^```", text, re.M | re.S)]


BLOCKS = [(path.relative_to(ROOT).as_posix(), *block) for path in DOCUMENTS for block in _blocks(path)]
MARKED = [(name, code) for name, _, code in BLOCKS if any(mark in code for mark in NEEDS_MARKS)]
RUNNABLE = [(name, language, code) for name, language, code in BLOCKS if not any(m in code for m in NEEDS_MARKS)]
# One Python block may appear in several documents (the README's example is also the guide's): run it once.
PYTHON = {code: name for name, language, code in reversed(RUNNABLE) if language == "python"}


def _commands(code: str) -> list[str]:
    """Each command of a shell block: continuation lines joined, comments cut, `&&` chains split."""
    lines = code.replace("\\\n", " ").splitlines()
    return [" ".join(part.split()) for line in lines for part in line.split("#")[0].split("&&") if part.strip()]


COMMANDS = [
    (name, command) for name, language, code in RUNNABLE if language in ("bash", "sh") for command in _commands(code)
]
README_COMMANDS = [c for name, c in COMMANDS if name == "README.md"]


def test_the_documents_have_the_snippets_this_file_checks():
    assert [language for name, language, _ in BLOCKS if name == "README.md"] == ["bash", "bash", "python"]
    assert {language for _, language, _ in BLOCKS} <= {"bash", "python"}, "a block in a language nothing checks"
    assert any("LongAlignSFTTrainer" in code for code in PYTHON) and any("evaluate.load" in code for code in PYTHON)
    assert sum(command.startswith("longalign ") for _, command in COMMANDS) >= 4
    assert sum("recipes/sft.py" in command for _, command in COMMANDS) >= 3


def test_every_command_is_checked_by_a_test_here():
    set_up = ("python3 -m venv .venv", ". .venv/bin/activate", "pytest")  # the CI test below runs these
    checked = ("longalign ", "pip install", *set_up)
    unchecked = [
        (name, command)
        for name, command in COMMANDS
        if not command.startswith(checked)
        and not (command.startswith("accelerate launch") and "recipes/sft.py" in command)
        and not re.search(r"\bbenchmark/\w+\.py", command)
    ]
    assert not unchecked, f"add a check to tests/test_readme.py or mark the block {NEEDS_MARKS}: {unchecked}"


def test_marked_blocks_say_what_they_need_in_a_comment():
    for name, code in MARKED:
        assert any(line.lstrip().startswith(NEEDS_MARKS) for line in code.splitlines()), name


def test_ci_installs_and_tests_as_the_readme_says():
    """`.ci/run` is the README's test command: the same installs, then `pytest -q`."""
    test_command = next(code for _, language, code in RUNNABLE if "pytest -q" in code and language == "bash")
    steps = [step for step in _commands(test_command) if step.startswith(("pip install", "pytest"))]
    ci_steps = [" ".join(line.split()) for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    positions = [ci_steps.index(step) for step in steps]
    assert steps == ["pip install torch==2.13.0", 'pip install -e ".[dev]"', "pytest -q"]
    assert positions == sorted(positions)


@pytest.fixture()
def hub_copies(tmp_path):
    """Local stand-ins for the Hub ids the documents use: a tiny model and six chat rows."""
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
    return {"THUDM/LongAlign-10k": str(data_dir), "meta-llama/Llama-3.1-8B-Instruct": str(model_dir)}, len(rows)


@pytest.mark.parametrize("code", list(PYTHON), ids=lambda code: f"{PYTHON[code]}:{code.splitlines()[0][:40]}")
def test_python_blocks_run(code, hub_copies, tmp_path, monkeypatch):
    hub_ids, num_rows = hub_copies
    document = PYTHON[code]
    for hub_id, local in hub_ids.items():
        code = code.replace(f'"{hub_id}"', repr(local))
    assert not re.search(r'"[\w.-]+/[\w.-]+"', code), "a Hub id without a local copy: add one, or mark the block"
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(code, document, "exec"), namespace)
    if "trainer" in namespace:  # the Python API example trained, packed, every sample once
        trainer = namespace["trainer"]
        assert trainer.state.global_step >= 1 and trainer.args.batching == "pack"
        assert sum(trainer.train_dataset["num_samples"]) == num_rows
    if "metric" in namespace:  # evaluate names the LongBench-Chat metric after its class
        assert namespace["metric"].name == "long_bench_chat"


@pytest.mark.parametrize("command", [c for _, c in COMMANDS if c.startswith("longalign ")])
def test_longalign_commands_parse(command):
    args = cli.build_parser().parse_args(shlex.split(command)[1:])
    assert callable(args.func)


@pytest.mark.parametrize("command", [c for _, c in COMMANDS if "recipes/sft.py" in c])
def test_recipe_commands_parse(command, monkeypatch):
    from test_recipe import _recipe

    monkeypatch.chdir(ROOT)
    words = shlex.split(command)
    if "--config_file" in words:
        assert (ROOT / words[words.index("--config_file") + 1]).is_file()
    recipe_args = words[words.index("recipes/sft.py") + 1 :]
    script_args, training_args, model_args, mixture = _recipe().parse_args([*recipe_args, "--use_cpu", "true"])
    assert training_args.max_length and training_args.batching in ("naive", "sort", "pack")


@pytest.mark.parametrize("command", [c for _, c in COMMANDS if re.search(r"\bbenchmark/\w+\.py", c)])
def test_benchmark_commands_name_flags_their_script_has(command):
    words = shlex.split(command)
    script = next(word for word in words if re.fullmatch(r"benchmark/\w+\.py", word))
    source = (ROOT / script).read_text(encoding="utf-8")
    flags = [word.split("=")[0] for word in words[words.index(script) + 1 :] if word.startswith("--")]
    assert all(f'"{flag}"' in source for flag in flags), (script, flags)


@pytest.mark.parametrize("command", [c for _, c in COMMANDS if c.startswith("pip install")])
def test_pip_installs_name_extras_setup_py_has(command):
    setup = (ROOT / "setup.py").read_text(encoding="utf-8")
    for extras in re.findall(r"\.\[([\w,-]+)\]", command):
        assert all(f'"{extra}":' in setup for extra in extras.split(",")), command
