"""The package's layers: each folder imports only from itself and the layers below it (function-level imports too),
no two modules import each other, and every module reads in one sitting."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "longalign_hf"

# Layer of each part, lowest first: a module may import from its own part and from lower layers only.
LAYERS = {
    "errors": 0, "tiny": 0, "command_args": 0, "llm_client": 0, "public_names": 0, "models": 0,
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


def _import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports (function-level and `TYPE_CHECKING` imports too).

    `from package import name` points at the module `package.name` when there is one, else at `package`; a module's
    parent packages, which Python runs first, are not counted: a package that names its own modules is no loop. The
    public API (`longalign_hf/__init__.py`) names every layer on first use, as in the layer test, so its own imports are
    left out (`from longalign_hf import __version__` is no loop).
    """
    paths = dict(_modules())

    def known(name: str) -> str | None:
        while name and name not in paths:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for module, path in paths.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets.update(known(alias.name) for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets.update(known(f"{node.module}.{alias.name}") for alias in node.names)
        graph[module] = targets - {None, module} if module != "longalign_hf" else set()
    return graph


def test_no_modules_import_each_other():
    # Tarjan's strongly connected components: a component of two or more modules is an import loop.
    graph = _import_graph()
    index, low, stack, on_stack, loops = {}, {}, [], set(), []

    def visit(module):
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for target in graph[module]:
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in on_stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = set()
            while module not in component:
                component.add(stack.pop())
            on_stack.difference_update(component)
            if len(component) > 1:
                loops.append(sorted(f"{a} -> {b}" for a in component for b in graph[a] & component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    assert not loops, f"modules that import each other (move what both need into a module of its own): {loops}"


@pytest.mark.parametrize(("module", "path"), list(_modules()), ids=lambda value: str(value))
def test_modules_stay_readable_in_one_sitting(module, path):
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{module} has {lines} lines"
