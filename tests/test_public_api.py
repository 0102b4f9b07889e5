"""The public names: importable from `longalign_hf`, loaded on first use, and the README's `longalign_hf.metrics` form."""

import os
import subprocess
import sys

import pytest

import longalign_hf


def test_every_public_name_resolves_to_its_defining_module():
    for name in longalign_hf.__all__:
        value = getattr(longalign_hf, name)
        assert value is not None and name in dir(longalign_hf)
    assert sorted(longalign_hf.__all__) == sorted(longalign_hf._PUBLIC)
    namespace = {}
    exec("from longalign_hf import *", namespace)
    assert set(longalign_hf.__all__) <= set(namespace)


def test_the_chat_client_has_its_name_and_the_old_judge_name_still_works_with_a_warning():
    from longalign_hf.llm_client import ChatClient

    assert longalign_hf.ChatClient is ChatClient and "ChatClient" in longalign_hf.__all__
    assert "JudgeClient" not in longalign_hf.__all__  # `import *` stays quiet
    for _ in range(2):  # every use warns, not only the first
        with pytest.warns(FutureWarning, match="`longalign_hf.JudgeClient` is now `longalign_hf.ChatClient`"):
            from longalign_hf import JudgeClient
        assert JudgeClient is ChatClient


def test_subpackages_are_attributes_as_the_readme_uses_them():
    # README: `import evaluate, longalign_hf; evaluate.load(longalign_hf.metrics.LONGBENCH_CHAT)`
    assert os.path.isfile(os.path.join(longalign_hf.metrics.LONGBENCH_CHAT, "longbench_chat.py"))
    assert longalign_hf.data.LongBenchChatBuilder is longalign_hf.LongBenchChatBuilder


def test_importing_the_package_loads_no_heavy_library():
    probe = (
        "import sys, longalign_hf; print(sorted(m for m in ('torch', 'transformers', 'datasets') if m in sys.modules))"
    )
    completed = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert completed.stdout.strip() == "[]", completed.stderr


def test_names_documented_in_subpackages_resolve():
    import longalign_hf.evaluation as evaluation

    for name in evaluation.__all__:
        assert getattr(evaluation, name) is not None, name
    from longalign_hf.data import LongBenchChatBuilder, build_subparsers  # noqa: F401
    from longalign_hf.metrics import LONGBENCH_CHAT  # noqa: F401


def test_the_commands_and_their_flags_are_the_documented_ones():
    from longalign_hf.cli import build_parser

    parser = build_parser()
    commands = {
        ("data", "generate"): ["--docs", "--out", "--model", "--tokenizer", "--num-docs", "--allow-incomplete"],
        ("data", "build", "sft"): ["--long", "--short", "--short-ratio", "--out", "--tokenizer", "--push-to-hub"],
        ("data", "build", "longbench-chat"): ["--source", "--out", "--push-to-hub"],
        ("eval", "longbench-chat"): [
            "--model",
            "--dataset",
            "--judge-model",
            "--judge-base-url",
            "--allow-incomplete",
        ],
        ("eval", "needle"): ["--model", "--lengths", "--depths", "--probes", "--haystack-dir", "--allow-incomplete"],
    }
    for path, flags in commands.items():
        action_parser = parser
        for word in path:
            subparsers = next(a for a in action_parser._actions if a.__class__.__name__ == "_SubParsersAction")
            action_parser = subparsers.choices[word]
        options = {option for action in action_parser._actions for option in action.option_strings}
        assert set(flags) <= options, (path, set(flags) - options)
