"""MkDocs hook: the guide's sections that are read from the code at build time, so they cannot drift from it.

- `<!-- refusals -->` (troubleshooting.md) becomes every message that `longalign_hf/` and `recipes/` raise as
  `UserInputError`, `ValueError`, `TypeError` or a subclass of them, found by walking their syntax trees (nothing is imported), with the module and
  function that raise it; a raise in a loop over a literal table of options and reasons gives one message per row.
- `<!-- collator-layout -->` (concepts.md) becomes the packed-layout table of `LongAlignDataCollator`'s docstring.
- The pictures BENCHMARKS.md shows (benchmarks.md includes it) join the site at the same paths, so they show there too.
"""

from __future__ import annotations

import ast
import html
import re
from dataclasses import dataclass
from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("longalign_hf", "recipes")
# What a user can meet: bad input (`UserInputError`) and the values and types the public API refuses; the package's
# own subclasses of these (`ConversationError`, a bad data row's reason) are found in the source. `RuntimeError`s
# guard internal invariants and are not listed.
BASE_REFUSAL_TYPES = ("UserInputError", "ValueError", "TypeError")
INCLUDED_WITH_PICTURES = ("BENCHMARKS.md",)  # at the repository root, included by docs/benchmarks.md (at docs/'s root)
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


def _is_text(node: ast.AST) -> bool:
    """Whether a node builds a string the reader can see: a literal, an f-string or a concatenation of them."""
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return _is_text(node.left) and _is_text(node.right)
    return isinstance(node, ast.JoinedStr) or (isinstance(node, ast.Constant) and isinstance(node.value, str))


def _is_bound_text(node: ast.AST, bound: dict[str, ast.AST]) -> bool:
    return isinstance(node, ast.Name) and node.id in bound and _is_text(bound[node.id])


def _render(node: ast.AST, bound: dict[str, ast.AST]) -> str:
    """The message a node builds: names bound to text are filled in, the rest shown as `{expression}`."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(_render(part, bound) for part in node.values)
    if isinstance(node, ast.FormattedValue):
        return _render(node.value, bound) if _is_bound_text(node.value, bound) else "{" + ast.unparse(node.value) + "}"
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return _render(node.left, bound) + _render(node.right, bound)
    if _is_bound_text(node, bound):
        return _render(bound[node.id], {name: value for name, value in bound.items() if name != node.id})
    return "{" + ast.unparse(node) + "}"


def _bind(target: ast.AST, value: ast.AST, into: dict[str, ast.AST]) -> None:
    """`for a, (b, c) in ...` over a literal row: each name to its part of the row (what cannot be split is left out)."""
    if isinstance(target, ast.Name):
        into[target.id] = value
    elif isinstance(target, ast.Tuple) and isinstance(value, ast.Tuple) and len(target.elts) == len(value.elts):
        for part, part_value in zip(target.elts, value.elts):
            _bind(part, part_value, into)


def _loop_rows(loop: ast.For, bound: dict[str, ast.AST]) -> list[ast.AST] | None:
    """The rows of a loop over a literal table (`for k, v in TABLE.items()`, `for row in [...]`), else None."""
    table, items = loop.iter, False
    if isinstance(table, ast.Call) and isinstance(table.func, ast.Attribute) and table.func.attr == "items":
        table, items = table.func.value, True
    if isinstance(table, ast.Name):
        table = bound.get(table.id)
    if items and isinstance(table, ast.Dict) and None not in table.keys:
        return [ast.Tuple(elts=[key, value]) for key, value in zip(table.keys, table.values)]
    if not items and isinstance(table, (ast.List, ast.Tuple)):
        return list(table.elts)
    return None


def refusal_types(trees: list[ast.Module]) -> set[str]:
    """The base refusal types and every class the sources derive from them (directly or not)."""
    types, bases = set(BASE_REFUSAL_TYPES), {}
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                bases[node.name] = {getattr(base, "id", getattr(base, "attr", None)) for base in node.bases}
    while new := {name for name, parents in bases.items() if parents & types} - types:
        types |= new
    return types


def _raised_type(node: ast.Raise, types: set[str]) -> str | None:
    call = node.exc
    if not isinstance(call, ast.Call):
        return None
    name = call.func.attr if isinstance(call.func, ast.Attribute) else getattr(call.func, "id", None)
    return name if name in types else None


def _refusals_in(tree: ast.Module, module: str, types: set[str]) -> list[Refusal]:
    """A raise inside a loop over a literal table (one reason per option, say) is listed once per row."""
    module_names = {
        node.targets[0].id: node.value
        for node in tree.body
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
    }
    found = []

    def visit(node: ast.AST, function: str, bound: dict[str, ast.AST]) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            function = node.name if function == "" else f"{function}.{node.name}"
            bound = dict(module_names)
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            bound[node.targets[0].id] = node.value
        if isinstance(node, ast.For) and (rows := _loop_rows(node, bound)) is not None:
            for row in rows:
                row_bound = dict(bound)
                _bind(node.target, row, row_bound)
                for child in node.body:
                    visit(child, function, row_bound)
            return
        if isinstance(node, ast.Raise) and (error := _raised_type(node, types)):
            arguments = node.exc.args
            message = _render(arguments[0], bound) if arguments else ""
            found.append(Refusal(module, function or "(module)", node.lineno, error, " ".join(message.split())))
        for child in ast.iter_child_nodes(node):
            visit(child, function, bound)

    visit(tree, "", dict(module_names))
    return found


def collect_refusals(root: Path = ROOT) -> list[Refusal]:
    """Every refusal raised in `longalign_hf/` and `recipes/`, in file and line order."""
    paths = sorted(path for source in SOURCES for path in (root / source).rglob("*.py"))
    trees = {path.relative_to(root).as_posix(): ast.parse(path.read_text(encoding="utf-8")) for path in paths}
    types = refusal_types(list(trees.values()))
    found = [refusal for module, tree in trees.items() for refusal in _refusals_in(tree, module, types)]
    return list(dict.fromkeys(found))  # rows of a table that give the same message: once


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
        raises = len({(r.module, r.line) for r in refusals})
        modules = len({r.module for r in refusals})
        summary = f"{len(refusals)} messages from {raises} raise statements in {modules} modules.\n\n"
        markdown = markdown.replace(REFUSALS_MARKER, summary + refusals_markdown(refusals))
    if LAYOUT_MARKER in markdown:
        markdown = markdown.replace(LAYOUT_MARKER, collator_layout())
    return markdown


def local_pictures(markdown: str) -> list[str]:
    """The repository-relative paths of the pictures a Markdown file shows (`![...](path)`), web addresses left out."""
    found = re.findall(r"!\[[^\]]*\]\(\s*(?:<([^>]+)>|([^)\s]+))", markdown)
    targets = [bracketed or plain for bracketed, plain in found]
    return [target for target in targets if not re.match(r"[a-z]+:|/|#", target)]


def on_files(files, config):
    """Add the pictures of the included files to the site at their repository paths, where the included text points."""
    for included in INCLUDED_WITH_PICTURES:
        for picture in local_pictures((ROOT / included).read_text(encoding="utf-8")):
            if (ROOT / picture).is_file() and files.get_file_from_path(picture) is None:
                files.append(File.generated(config, picture, abs_src_path=str(ROOT / picture)))
    return files
