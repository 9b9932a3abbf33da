"""The import rules of docs/architecture.md, checked on the AST of every module of fisherx/ (no import needed).

Every ``import``/``from ... import`` counts, at module level or inside a function, except those under
``if TYPE_CHECKING:`` (they never run). The graph is between modules; a package's ``__init__`` re-exporting its
children is the package's own business, so edges into a package's ``__init__`` from its own children are kept but
a module importing ``fisherx.x`` is read as importing ``fisherx.x`` (its ``__init__``) only.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "fisherx"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


MODULES = _modules()
EXTENSIONS = {"fisherx._C"}  # compiled (csrc/bindings.cpp): imports nothing of fisherx


def _resolve(name: str) -> str | None:
    """The fisherx module ``name`` refers to (``fisherx.a.b.c`` → the longest prefix that is a module)."""
    parts = name.split(".")
    while parts:
        cand = ".".join(parts)
        if cand in MODULES:
            return cand
        parts.pop()
    return None


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _from_targets(node: ast.ImportFrom, package: str) -> list[str]:
    """The modules ``from base import a, b`` imports: base.a where that is a module, else base itself."""
    base = node.module or ""
    if node.level:
        anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
        base = ".".join(anchor + ([base] if base else []))
    full = [f"{base}.{a.name}" for a in node.names]
    return [f if f in MODULES else base for f in full if f not in EXTENSIONS]


def _imports(mod: str, path: Path) -> dict[str, bool]:
    """{imported fisherx module: at module level?} for the module ``mod``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    found: dict[str, bool] = {}

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                for sub in child.orelse:
                    visit(sub, top)
                continue
            if isinstance(child, ast.Import):
                for a in child.names:
                    _add(a.name, top)
            elif isinstance(child, ast.ImportFrom):
                for name in _from_targets(child, package):
                    _add(name, top)
            inner = top and not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            visit(child, inner)

    def _add(name: str, top: bool) -> None:
        target = _resolve(name) if name.startswith("fisherx") else None
        if target and target != mod:
            found[target] = found.get(target, False) or top

    visit(tree, True)
    return found


GRAPH = {m: _imports(m, p) for m, p in MODULES.items()}


def _part(mod: str) -> str:
    """The part of the architecture a module belongs to: fisherx.<part>[.…]."""
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 else "fisherx"


def _cycle(graph: dict[str, set]) -> list | None:
    color: dict[str, int] = {}
    stack: list[str] = []

    def dfs(u: str) -> list | None:
        color[u] = 1
        stack.append(u)
        for v in sorted(graph.get(u, ())):
            if color.get(v) == 1:
                return stack[stack.index(v) :] + [v]
            if not color.get(v):
                found = dfs(v)
                if found:
                    return found
        stack.pop()
        color[u] = 2
        return None

    for u in sorted(graph):
        if not color.get(u):
            found = dfs(u)
            if found:
                return found
    return None


def _without_package_inits(edges: dict[str, set]) -> dict[str, set]:
    # A package's __init__ importing its children (to re-export them) and a child importing a sibling through
    # the package are one package, not a cycle between parts.
    return {u: {v for v in vs if not (u.startswith(v + ".") or v.startswith(u + "."))} for u, vs in edges.items()}


def test_the_graph_sees_the_package():
    assert "fisherx._ops" in MODULES and "fisherx.experiments.distances" in MODULES
    assert "fisherx.experiments.result" in GRAPH["fisherx.experiments.distances"]


def test_no_module_level_import_cycle():
    edges = {u: {v for v, top in vs.items() if top} for u, vs in GRAPH.items()}
    cycle = _cycle(_without_package_inits(edges))
    assert cycle is None, "import cycle: " + " → ".join(cycle)


def test_no_cycle_between_parts():
    """Between the parts (fisherx.<part>), counting function-level imports too: the layers form a DAG."""
    parts: dict[str, set] = {}
    for u, vs in GRAPH.items():
        for v in vs:
            if _part(u) != _part(v) and _part(u) != "fisherx":  # the top-level __init__ re-exports everything
                parts.setdefault(_part(u), set()).add(_part(v))
    cycle = _cycle(parts)
    assert cycle is None, "parts import each other: " + " → ".join(cycle)


# (importer part, imported part) pairs that must never occur; docs/architecture.md explains each.
FORBIDDEN = (
    [("_ops", p) for p in ("fisher", "distance", "experiments", "nas", "cli", "tasks", "models", "io", "distributed")]
    + [("fisher", p) for p in ("experiments", "nas", "cli", "tasks")]
    # The shared leaf utilities (the registry idiom, progress reporting) depend on nothing of fisherx.
    + [
        (leaf, p)
        for leaf in ("_registry", "_progress")
        for p in ("_ops", "fisher", "distance", "experiments", "nas", "cli", "tasks", "models", "io", "data")
    ]
    + [("distance", p) for p in ("experiments", "nas", "cli", "tasks", "models")]
    + [
        ("nas", "experiments"),
        ("experiments", "cli"),
        ("nas", "cli"),
        ("io", "cli"),
        ("tasks", "cli"),
        ("models", "cli"),
        ("models", "experiments"),
        ("models", "nas"),
    ]
)


@pytest.mark.parametrize("importer,imported", FORBIDDEN, ids=[f"{a}-x-{b}" for a, b in FORBIDDEN])
def test_layer_rule(importer, imported):
    bad = sorted(
        f"{u} imports {v}" for u, vs in GRAPH.items() for v in vs if _part(u) == importer and _part(v) == imported
    )
    assert not bad, "; ".join(bad)


def test_ops_imports_nothing_of_fisherx_but_reference():
    assert set(GRAPH["fisherx._ops"]) <= {"fisherx._reference"}


def test_nothing_imports_cli_but_main():
    bad = sorted(
        u for u, vs in GRAPH.items() for v in vs if _part(v) == "cli" and _part(u) != "cli" and u != "fisherx.__main__"
    )
    assert not bad, f"only fisherx.__main__ may import fisherx.cli; also: {bad}"


def test_the_checker_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def _private_imports(mod: str, path: Path) -> list[str]:
    """``from fisherx.x import _name`` where ``_name`` is not a module: a private name used outside its module."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.ImportFrom):
            continue
        base = node.module or ""
        if node.level:
            anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
            base = ".".join(anchor + ([base] if base else []))
        if not base.startswith("fisherx"):
            continue
        for a in node.names:
            full = f"{base}.{a.name}"
            private = a.name.startswith("_") and not a.name.startswith("__")
            if private and full not in MODULES and full not in EXTENSIONS:
                found.append(f"{mod} imports {full}")
    return found


def test_no_module_imports_another_modules_private_names():
    # A name with a leading underscore is its module's own; a second user means it is shared API and gets a
    # public name (a module named with an underscore, such as fisherx._ops, is a private part, not a private name).
    found = [line for m, p in MODULES.items() for line in _private_imports(m, p)]
    assert not found, "\n".join(found)
