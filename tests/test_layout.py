"""The package's layers: each folder imports only from itself and the layers below it (function-level imports too)."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "longalign_hf"

# Layer of each part, lowest first: a module may import from its own part and from lower layers only.
LAYERS = {
    "errors": 0, "tiny": 0, "command_args": 0, "llm_client": 0, "public_names": 0,
    "data": 1,
    "training": 2,
    "evaluation": 3,
    "metrics": 4,
    "cli": 5,
}  # fmt: skip
MAX_LINES = 420  # the ~400-line guideline, with a little room for a docstring


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE.parent).with_suffix("")
        yield ".".join(part for part in relative.parts if part != "__init__") or "longalign_hf", path


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if name.startswith("longalign_hf.")}


@pytest.mark.parametrize(("module", "path"), list(_modules()), ids=lambda value: str(value))
def test_no_module_imports_a_layer_above_its_own(module, path):
    part = _part(module)
    if part == "__init__":
        return  # the public API names everything, on first use
    assert part in LAYERS, f"{module}: add its part to LAYERS"
    upward = sorted(
        name for name in _imports(path)
        if _part(name) in LAYERS and _part(name) != part and LAYERS[_part(name)] > LAYERS[part]
    )  # fmt: skip
    assert not upward, f"{module} imports {upward}"


@pytest.mark.parametrize(("module", "path"), list(_modules()), ids=lambda value: str(value))
def test_modules_stay_readable_in_one_sitting(module, path):
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{module} has {lines} lines"
