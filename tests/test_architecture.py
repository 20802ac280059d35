"""The shape of the code, checked: layers import only downwards, nothing imports in a circle,
node-side code needs nothing but the standard library, and only the store speaks SQL.

The layers, lowest first (docs/architecture.md draws them):
  0 foundation: exceptions, fsutil, states, spec, config, logsetup, render
  1 pricing, checkpoint
  2 recovery, providers, node
  3 controller
  4 the user's side: cli, catalog_cli, client, demo, submission, simulate_cli, __main__
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

from tests.conftest import ROOT

PACKAGE = ROOT / "skyjobs"
LAYERS = {
    "skyjobs.exceptions": 0, "skyjobs.fsutil": 0, "skyjobs.states": 0, "skyjobs.spec": 0,
    "skyjobs.config": 0, "skyjobs.logsetup": 0, "skyjobs.render": 0, "skyjobs": 0,
    "skyjobs.pricing": 1, "skyjobs.checkpoint": 1,
    "skyjobs.recovery": 2, "skyjobs.providers": 2, "skyjobs.node": 2,
    "skyjobs.controller": 3,
    "skyjobs.cli": 4, "skyjobs.client": 4, "skyjobs.demo": 4, "skyjobs.submission": 4,
    "skyjobs.simulate_cli": 4, "skyjobs.__main__": 4, "skyjobs.catalog_cli": 4,
    "skyjobs.models": 0, "skyjobs.openapi": 0, "skyjobs.sdk": 4, "skyjobs.aio": 4,
}
# Node code runs on every instance before anything is installed.
NODE_MAY_IMPORT = ("skyjobs.node", "skyjobs.checkpoint", "skyjobs.fsutil", "skyjobs.exceptions")
NODE_THIRD_PARTY_OK = {"skyjobs.node.s3"}  # imported only for s3:// buckets, with boto3


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> int:
    best = max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len)
    return LAYERS[best]


def imports(path: Path) -> list[tuple[str, bool]]:
    """(module, at module level) for every import outside ``if TYPE_CHECKING:``."""
    tree = ast.parse(path.read_text(), str(path))
    out: list[tuple[str, bool]] = []

    def visit(node: ast.AST, top: bool) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return
        if isinstance(node, ast.Import):
            out.extend((a.name, top) for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.extend((f"{node.module}.{a.name}" if _is_module(f"{node.module}.{a.name}")
                        else node.module, top) for a in node.names)
        inner_top = top and not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        for child in ast.iter_child_nodes(node):
            visit(child, inner_top)

    visit(tree, True)
    return out


def _is_module(name: str) -> bool:
    rel = Path(*name.split("."))
    return (ROOT / rel).with_suffix(".py").exists() or (ROOT / rel / "__init__.py").exists()


def graph() -> dict[str, set[str]]:
    return {module_name(p): {m for m, _ in imports(p) if m.startswith("skyjobs")}
            for p in PACKAGE.rglob("*.py")}


def test_layers_import_only_downwards() -> None:
    wrong = [f"{mod} (layer {layer(mod)}) imports {dep} (layer {layer(dep)})"
             for mod, deps in graph().items() for dep in deps if layer(dep) > layer(mod)]
    assert not wrong, "\n".join(sorted(wrong))


def test_no_import_circles() -> None:
    g = graph()
    # Imports of a package's submodule run the package's __init__: treat it as a dependency.
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[str] = []

    def visit(mod: str) -> None:
        state[mod] = 1
        stack.append(mod)
        for dep in sorted(g.get(mod, ())):
            if dep not in g:
                continue
            if state.get(dep) == 1:
                cycles.append(" -> ".join([*stack[stack.index(dep):], dep]))
            elif dep not in state:
                visit(dep)
        stack.pop()
        state[mod] = 2

    for mod in sorted(g):
        if mod not in state:
            visit(mod)
    assert not cycles, "\n".join(cycles)


def test_node_code_needs_only_the_standard_library() -> None:
    stdlib = sys.stdlib_module_names
    wrong = []
    for path in (PACKAGE / "node").rglob("*.py"):
        mod = module_name(path)
        for dep, top in imports(path):
            root = dep.split(".")[0]
            if dep.startswith("skyjobs"):
                if not dep.startswith(NODE_MAY_IMPORT):
                    wrong.append(f"{mod} imports {dep}")
            elif root not in stdlib and top and mod not in NODE_THIRD_PARTY_OK:
                wrong.append(f"{mod} imports {dep} (not the standard library)")
    assert not wrong, "\n".join(wrong)


def test_only_the_store_speaks_sql() -> None:
    keywords = ("SELECT ", "INSERT INTO", "UPDATE ", "DELETE FROM", "CREATE TABLE")
    wrong = []
    store = PACKAGE / "controller" / "store"
    for path in PACKAGE.rglob("*.py"):
        if path.is_relative_to(store):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and any(
                    node.value.lstrip().upper().startswith(k) for k in keywords):
                wrong.append(f"{module_name(path)}: {node.value[:60]!r}")
    assert not wrong, "\n".join(wrong)
