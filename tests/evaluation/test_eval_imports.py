"""The evaluation commands' modules import light: `longalign --help` and argument errors must answer at once."""

import json
import subprocess
import sys
from pathlib import Path

HEAVY = ("torch", "transformers", "datasets", "evaluate", "openai", "matplotlib", "numpy", "trl")

# The package's `__init__` files are left out (stand-in packages), so this checks what the command modules themselves
# import, whatever the package re-exports.
_SCRIPT = """
import argparse, json, sys, types
from pathlib import Path

root = Path({root!r})
for name, path in (("longalign_hf", root), ("longalign_hf.evaluation", root / "evaluation")):
    package = types.ModuleType(name)
    package.__path__ = [str(path)]
    sys.modules[name] = package
import longalign_hf.evaluation.longbench_chat.command as longbench_chat
import longalign_hf.evaluation.needle.command as needle

parser = argparse.ArgumentParser()
subparsers = parser.add_subparsers()
longbench_chat.add_parser(subparsers)
needle.add_parser(subparsers)
parser.parse_args(["needle", "--model", "m", "--lengths", "1k,4k", "--depths", "5", "--allow-incomplete"])
parser.parse_args(["needle", "--model", "m", "--dtype", "bfloat16", "--attn-implementation", "sdpa_packed"])
parser.parse_args(["longbench-chat", "--model", "m", "--max-new-tokens", "4", "--allow-incomplete"])
parser.parse_args(["longbench-chat", "--model", "m", "--judge-timeout", "30", "--seed", "7", "--dtype", "float16"])
for argv in (["needle", "--model", "m", "--depths", "0"], ["longbench-chat", "--model", "m", "--judge-timeout", "0"]):
    try:
        parser.parse_args(argv)
    except SystemExit:
        pass
print(json.dumps(sorted(name for name in {heavy!r} if name in sys.modules)))
"""


def test_the_command_modules_import_no_heavy_library():
    root = Path(__file__).resolve().parents[2] / "longalign_hf"
    script = _SCRIPT.format(root=str(root), heavy=HEAVY)
    output = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert json.loads(output) == []
