"""The layout keeps the architecture visible: stage packages with one public face each, no private names
across packages, no import circles (read from the source with `ast`, nothing imported)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# pyproject's package-dir: the import name's folders
FOLDERS = {"activessf_engine": ROOT / "engine", "activessf_engine.kernels": ROOT / "kernels"}
TOP_MODULES_AT_MOST = 5


def modules() -> dict[str, Path]:
    """Every module of the engine by its dotted name (a package by its own name, for its __init__)."""
    found = {}
    for prefix, folder in FOLDERS.items():
        for path in folder.rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join((prefix, *parts))] = path
    return found


def package_of(name: str, all_modules: dict[str, Path]) -> str:
    """The stage package a module belongs to (`activessf_engine.store.layout`), or the name of a top module."""
    parts = name.split(".")
    if len(parts) < 2:
        return name
    candidate = ".".join(parts[:2])
    return candidate if all_modules[candidate].name == "__init__.py" else name


def imports(path: Path, name: str, all_modules: dict[str, Path]) -> list[tuple[str, str, int]]:
    """(module imported, name imported or "", line) of every engine import in a module, lazy ones included."""
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, "", node.lineno) for a in node.names if a.name.startswith("activessf_engine")]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                anchor = name.split(".")[: len(name.split(".")) - node.level + (path.name == "__init__.py")]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            if not base.startswith("activessf_engine"):
                continue
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                found.append(
                    (submodule, "", node.lineno) if submodule in all_modules else (base, alias.name, node.lineno)
                )
    return found


def import_graph() -> dict[str, set[str]]:
    all_modules = modules()
    return {
        name: {target for target, _, _ in imports(path, name, all_modules) if target in all_modules and target != name}
        for name, path in all_modules.items()
    }


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each an import circle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_engine_top_holds_few_modules_and_the_stage_packages():
    top = sorted(p.stem for p in (ROOT / "engine").glob("*.py") if p.name != "__init__.py")
    assert len(top) <= TOP_MODULES_AT_MOST, top
    packages = sorted(p.parent.name for p in (ROOT / "engine").glob("*/__init__.py"))
    assert packages == ["cli", "feed", "filter", "inspect", "select", "store"]


@pytest.mark.parametrize("name", sorted(n for n, p in modules().items() if p.name == "__init__.py"))
def test_every_package_says_its_job(name):
    doc = ast.get_docstring(ast.parse(modules()[name].read_text()))
    assert doc and len(doc.splitlines()[0]) > 20, f"{name} has no one-line docstring"


def test_no_private_name_crosses_a_package_and_other_packages_are_used_through_their_face():
    all_modules = modules()
    wrong = []
    for name, path in all_modules.items():
        own = package_of(name, all_modules)
        for target, imported, line in imports(path, name, all_modules):
            theirs = package_of(target, all_modules) if target in all_modules else target
            if theirs == own or theirs not in all_modules or all_modules[theirs].name != "__init__.py":
                continue  # within a package, or a top module (config, device, progress, distributed)
            where = f"{path.relative_to(ROOT)}:{line}"
            if any(n.startswith("_") and not n.startswith("__") for n in (imported, target.rsplit(".", 1)[-1])):
                wrong.append(f"{where} imports the private {target}.{imported} from another package")
            if target != theirs:
                wrong.append(f"{where} reaches into {target} instead of {theirs}")
    assert not wrong, "\n".join(wrong)


def test_every_name_a_package_offers_exists():
    """A package's face lists in __all__ what it imports, and nothing it does not have."""
    for name, path in modules().items():
        if path.name != "__init__.py" or name == "activessf_engine":
            continue
        tree = ast.parse(path.read_text())
        offered = {a.asname or a.name for node in tree.body if isinstance(node, ast.ImportFrom) for a in node.names}
        listed = next(
            (ast.literal_eval(node.value) for node in tree.body if isinstance(node, ast.Assign)),
            [],
        )
        assert set(listed) == offered, f"{name}: __all__ and the imports differ: {set(listed) ^ offered}"


def test_no_import_circles():
    assert cycles(import_graph()) == []


def test_the_circle_finder_finds_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
