"""Griffe extension for the API reference: the project's docstrings head their doctests `Example:`, which Google
style reads as an admonition (the `>>>` lines then render as Markdown); `Examples:` makes them code."""

from __future__ import annotations

import re
from typing import Any

import griffe


class DoctestExamples(griffe.Extension):
    """Read a docstring's `Example:` section as Google style's `Examples:` section."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None and isinstance(obj.docstring.value, str):
            obj.docstring.value = re.sub(r"^(\s*)Example:$", r"\1Examples:", obj.docstring.value, flags=re.MULTILINE)
