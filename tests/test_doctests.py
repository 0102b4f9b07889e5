"""Every runnable example in the package's docstrings (the collator's layout table among them) runs and holds."""

import doctest
import importlib
import pkgutil

import pytest

import longalign_hf

MODULES = sorted(
    name
    for _, name, _ in pkgutil.walk_packages(longalign_hf.__path__, "longalign_hf.")
    # The `evaluate` metric script is loaded by `evaluate.load`, not imported as a package module.
    if not name.startswith("longalign_hf.metrics.longbench_chat")
)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    results = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert results.failed == 0


def test_the_examples_are_found():
    # A module whose examples stopped being collected (e.g. moved into a fence) would pass silently above.
    attempted = {
        name: doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS).attempted
        for name in MODULES
    }
    expected = ["training.collator", "training.packed_dataset", "training.packing", "training.sampler", "errors"]
    expected += ["public_names"]
    expected += ["data.chat", "data.self_instruct.prompts", "data.sft.conversations", "data.longbench_chat.source"]
    expected += ["evaluation.longbench_chat.scoring"]
    expected += ["evaluation.needle.probes", "evaluation.needle.command", "evaluation.generation"]
    for name in expected:
        assert attempted[f"longalign_hf.{name}"] > 0, name
