"""The `longalign data` modules: their docstring examples run; they register commands without heavy imports."""

import doctest
import json
import subprocess
import sys
from pathlib import Path

import pytest

import longalign_hf.data.hub
import longalign_hf.data.longbench_chat.builder
import longalign_hf.data.longbench_chat.card
import longalign_hf.data.longbench_chat.hub_folder
import longalign_hf.data.longbench_chat.source
import longalign_hf.data.self_instruct.documents
import longalign_hf.data.self_instruct.generator
import longalign_hf.data.self_instruct.prompts
import longalign_hf.data.sft.build
import longalign_hf.data.sft.card
import longalign_hf.data.sft.conversations
import longalign_hf.data.sft.length_stats
import longalign_hf.data.sft.report
import longalign_hf.data.tokenizer

PACKAGE = Path(longalign_hf.data.hub.__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "datasets", "evaluate", "openai", "matplotlib", "numpy", "trl", "huggingface_hub")


@pytest.mark.parametrize(
    ("module", "examples"),
    [
        (longalign_hf.data.self_instruct.prompts, 2),
        (longalign_hf.data.self_instruct.documents, 0),
        (longalign_hf.data.self_instruct.generator, 0),
        (longalign_hf.data.sft.conversations, 1),
        (longalign_hf.data.sft.length_stats, 0),
        (longalign_hf.data.tokenizer, 0),
        (longalign_hf.data.sft.card, 0),
        (longalign_hf.data.sft.report, 0),
        (longalign_hf.data.sft.build, 0),
        (longalign_hf.data.longbench_chat.source, 1),
        (longalign_hf.data.longbench_chat.builder, 0),
        (longalign_hf.data.longbench_chat.card, 0),
        (longalign_hf.data.longbench_chat.hub_folder, 0),
        (longalign_hf.data.hub, 0),
    ],
    ids=lambda value: getattr(value, "__name__", str(value)),
)
def test_docstring_examples(module, examples):
    results = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert (results.attempted, results.failed) == (examples, 0)


# Run in a fresh interpreter. The `longalign_hf` and `longalign_hf.data` `__init__` files are stood in for by empty
# packages (the concerns' own `__init__` files are docstrings): this checks what the command modules themselves import,
# at their top and in `add_parser`.
_IMPORT_CHECK = """
import argparse, importlib, json, sys, types
from pathlib import Path

root = Path(sys.argv[1])
for name, folder in (("longalign_hf", root), ("longalign_hf.data", root / "data")):
    package = types.ModuleType(name)
    package.__path__ = [str(folder)]
    sys.modules[name] = package
sys.modules["longalign_hf.data"].build_subparsers = lambda subparsers: subparsers
subparsers = argparse.ArgumentParser().add_subparsers()
for module in ("self_instruct.command", "sft.command", "longbench_chat.command"):
    importlib.import_module(f"longalign_hf.data.{module}").add_parser(subparsers)
print(json.dumps({"commands": sorted(subparsers.choices), "heavy": sorted(set(sys.argv[2:]) & set(sys.modules))}))
"""


def test_commands_register_without_heavy_imports():
    result = subprocess.run(
        [sys.executable, "-c", _IMPORT_CHECK, str(PACKAGE), *HEAVY], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"commands": ["generate", "longbench-chat", "sft"], "heavy": []}
