"""MkDocs hook: the guide's sections that are read from the code at build time, so they cannot drift from it.

- `<!-- refusals -->` (troubleshooting.md) becomes every message that `longalign_hf/` and `recipes/` raise as
  `UserInputError` or `ValueError`, found by walking their syntax trees (nothing is imported), with the module and
  function that raise it.
- `<!-- collator-layout -->` (concepts.md) becomes the packed-layout table of `LongAlignDataCollator`'s docstring.
"""

from __future__ import annotations

import ast
import html
import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("longalign_hf", "recipes")
REFUSAL_TYPES = ("UserInputError", "ValueError")
REFUSALS_MARKER = "<!-- refusals -->"
LAYOUT_MARKER = "<!-- collator-layout -->"


@dataclass(frozen=True)
class Refusal:
    """One `raise UserInputError(...)` / `raise ValueError(...)`: where it is and its message as written."""

    module: str
    function: str
    line: int
    error: str
    message: str


def _render(node: ast.AST, assignments: dict[str, ast.AST]) -> str:
    """The message a node builds, with what is known only at run time shown as `{expression}`."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(_render(part, assignments) for part in node.values)
    if isinstance(node, ast.FormattedValue):
        return "{" + ast.unparse(node.value) + "}"
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return _render(node.left, assignments) + _render(node.right, assignments)
    if isinstance(node, ast.Name) and node.id in assignments:
        return _render(assignments[node.id], {})  # one level: a message put in a variable first
    return "{" + ast.unparse(node) + "}"


def _raised_type(node: ast.Raise) -> str | None:
    call = node.exc
    if not isinstance(call, ast.Call):
        return None
    name = call.func.attr if isinstance(call.func, ast.Attribute) else getattr(call.func, "id", None)
    return name if name in REFUSAL_TYPES else None


def _refusals_in(path: Path) -> list[Refusal]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    module = path.relative_to(ROOT).as_posix()
    found = []

    def visit(node: ast.AST, function: str, assignments: dict[str, ast.AST]) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            function = node.name if function == "" else f"{function}.{node.name}"
            assignments = {}
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            assignments[node.targets[0].id] = node.value
        if isinstance(node, ast.Raise) and (error := _raised_type(node)):
            arguments = node.exc.args
            message = _render(arguments[0], assignments) if arguments else ""
            found.append(Refusal(module, function or "(module)", node.lineno, error, " ".join(message.split())))
        for child in ast.iter_child_nodes(node):
            visit(child, function, assignments)

    visit(tree, "", {})
    return found


def collect_refusals(root: Path = ROOT) -> list[Refusal]:
    """Every refusal raised in `longalign_hf/` and `recipes/`, in file and line order."""
    paths = sorted(path for source in SOURCES for path in (root / source).rglob("*.py"))
    return [refusal for path in paths for refusal in _refusals_in(path)]


def _markdown_text(message: str) -> str:
    """The message as Markdown: code spans kept, everything else shown literally."""
    pieces = message.split("`")
    if len(pieces) % 2 == 0:  # unbalanced backticks: no code spans at all
        pieces = [message]
    out = []
    for index, piece in enumerate(pieces):
        if index % 2:
            out.append(f"`{piece}`")
        else:
            out.append(re.sub(r"([\\*_\[\]#|])", r"\\\1", html.escape(piece, quote=False)))
    return "".join(out)


def refusals_markdown(refusals: list[Refusal]) -> str:
    """One section per module, one list item per message, each naming the function that raises it."""
    lines = []
    for module in dict.fromkeys(refusal.module for refusal in refusals):
        lines += [f"### `{module}`", ""]
        for refusal in (r for r in refusals if r.module == module):
            text = _markdown_text(refusal.message) or "(no message)"
            lines.append(f"- {text} <small>({refusal.error} in `{refusal.function}`, line {refusal.line})</small>")
        lines.append("")
    return "\n".join(lines)


def collator_layout() -> str:
    """The fenced packed-layout table of `LongAlignDataCollator`'s docstring, as the code has it."""
    tree = ast.parse((ROOT / "longalign_hf" / "training" / "collator.py").read_text(encoding="utf-8"))
    docstring = next(
        ast.get_docstring(node)
        for node in tree.body
        if isinstance(node, ast.ClassDef) and node.name == "LongAlignDataCollator"
    )
    match = re.search(r"```\n.*?```", docstring, flags=re.DOTALL)
    if match is None:
        raise ValueError("LongAlignDataCollator's docstring has no fenced packed-layout table for the guide")
    return match.group(0)


def on_page_markdown(markdown: str, page, config, files) -> str:
    """Replace the guide's markers with what the code says now."""
    if REFUSALS_MARKER in markdown:
        refusals = collect_refusals()
        summary = f"{len(refusals)} messages in {len({r.module for r in refusals})} modules, read from the code.\n\n"
        markdown = markdown.replace(REFUSALS_MARKER, summary + refusals_markdown(refusals))
    if LAYOUT_MARKER in markdown:
        markdown = markdown.replace(LAYOUT_MARKER, collator_layout())
    return markdown
