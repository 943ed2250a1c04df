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


def face_table(tree: ast.Module) -> dict[str, str]:
    """A package face's `_WHERE` table: each name it offers -> the module of the package that holds it
    (imported on first use by `lazy_face`); empty for any other module."""
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "_WHERE" for t in node.targets):
            return ast.literal_eval(node.value)
    return {}


def imports(path: Path, name: str, all_modules: dict[str, Path]) -> list[tuple[str, str, int]]:
    """(module imported, name imported or "", line) of every engine import in a module, lazy ones included:
    a package face imports each module of its `_WHERE` table."""
    tree = ast.parse(path.read_text())
    found = [(f"{name}.{module}", offered, 0) for offered, module in face_table(tree).items()]
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


def defined_names(tree: ast.Module) -> set[str]:
    """The names a module defines or imports at its top level."""
    found = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.ClassDef):
            found.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            found |= {t.id for t in targets if isinstance(t, ast.Name)}
        elif isinstance(node, ast.Import | ast.ImportFrom):
            found |= {(a.asname or a.name).split(".")[0] for a in node.names}
    return found


def test_every_name_a_package_offers_exists():
    """A stage package's face offers its names through its `_WHERE` table (`__all__` is the table's names),
    and the module it names defines each of them."""
    all_modules = modules()
    for name, path in all_modules.items():
        if path.name != "__init__.py" or name in FOLDERS:
            continue
        tree = ast.parse(path.read_text())
        table = face_table(tree)
        if name == "activessf_engine.cli":  # the CLI's face imports its one entry module plainly
            table = {a.name: node.module for node in tree.body if isinstance(node, ast.ImportFrom) for a in node.names}
            assert all(n in table for n in ast.literal_eval(tree.body[-1].value)), name
            continue
        assert table, f"{name} has no _WHERE table of the names it offers"
        for offered, module in table.items():
            held = defined_names(ast.parse(all_modules[f"{name}.{module}"].read_text()))
            assert offered in held, f"{name} offers {offered} from {module}, which does not define it"


def test_a_name_offered_by_a_face_is_found_by_the_layout_checks():
    table = face_table(ast.parse((ROOT / "engine" / "store" / "__init__.py").read_text()))
    assert table["RoiStore"] == "reader"
    graph = import_graph()
    assert "activessf_engine.store.reader" in graph["activessf_engine.store"]


def test_no_import_circles():
    assert cycles(import_graph()) == []


def test_the_circle_finder_finds_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
