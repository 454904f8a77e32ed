"""The package's import graph: every import, lazy ones included (only `if TYPE_CHECKING:` blocks, never
run, are left out), has no circle through the modules listed here, and each imports alone."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "hf_ifbeta"
# Modules whose imports were untangled; the check grows to the whole package as the rest follow.
UNTANGLED = [
    "cli", "data", "decoded", "distributed", "feature_cache", "features", "files", "hub", "images", "logit_cache",
    "pruner", "report", "report_figures", "report_html", "result", "trainer", "transforms",
]  # fmt: skip


def _imports(tree):
    def visit(node):
        if isinstance(node, ast.If) and getattr(node.test, "id", getattr(node.test, "attr", None)) == "TYPE_CHECKING":
            for child in node.orelse:
                yield from visit(child)
            return
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        for child in ast.iter_child_nodes(node):
            yield from visit(child)

    return list(visit(tree))


def import_graph():
    """{module: modules of the package it imports}, names relative to the package (`models.cifar_resnet`)."""
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        deps = set()
        for node in _imports(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                parts = package.split(".") if package else []
                base = parts[: len(parts) - node.level + 1]  # `from . import x` in a/b.py: a; `from .. import`: ''
                target = ".".join(base + ([node.module] if node.module else []))
                candidates = [target] + [f"{target}.{a.name}".strip(".") for a in node.names]
            else:
                continue  # absolute imports of other packages
            for candidate in candidates:
                while candidate not in modules and "." in candidate:
                    candidate = candidate.rpartition(".")[0]
                if candidate in modules and candidate and candidate != name and not name.startswith(candidate + "."):
                    deps.add(candidate)
        graph[name] = deps
    return graph


def circles(graph):
    """The strongly connected components of more than one module."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_the_graph_sees_lazy_imports_and_a_planted_circle():
    graph = import_graph()
    assert "files" in graph["feature_cache"] and "hub" in graph["result"]
    assert "hub" in graph["trainer"]  # imported inside a method
    assert "models.cifar_resnet" in graph["models"]
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_circle_through_the_untangled_modules():
    bad = [c for c in circles(import_graph()) if set(c) & set(UNTANGLED)]
    assert bad == []


@pytest.mark.parametrize("module", UNTANGLED)
def test_each_module_imports_alone(module):
    run = subprocess.run(
        [sys.executable, "-c", f"import hf_ifbeta.{module}"], cwd=PACKAGE.parent, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr[-2000:]
