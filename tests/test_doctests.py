"""The runnable examples in the docstrings of the data-side modules (the collator's layout table among them)."""

import doctest

import pytest

import longalign_hf.chat
import longalign_hf.collator
import longalign_hf.packed_dataset
import longalign_hf.packing


@pytest.mark.parametrize(
    "module", [longalign_hf.chat, longalign_hf.collator, longalign_hf.packed_dataset, longalign_hf.packing]
)
def test_docstring_examples(module):
    results = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert results.attempted > 0 and results.failed == 0
