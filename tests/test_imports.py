"""The package's import graph has no circle: every `import` of one package module by another, at module level or
inside a function (a lazy import is still a dependency), outside `if TYPE_CHECKING:` blocks."""

import ast
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Set

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "hf_ifbeta"

def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts) or "__init__"


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(path: Path, modules: Set[str]) -> Set[str]:
    """Package modules that `path` imports, resolved from relative and absolute `hf_ifbeta` imports."""
    here = module_name(path)
    package = here.split(".") if path.name == "__init__.py" and here != "__init__" else here.split(".")[:-1]
    found: Set[str] = set()

    def resolve(base: List[str], names: List[str]) -> None:
        for name in names:
            candidate = ".".join(base + [name]) if name else ".".join(base)
            if candidate in modules:
                found.add(candidate)
            elif ".".join(base) in modules:
                found.add(".".join(base))
            elif not base or not ".".join(base):
                found.add("__init__")  # a name of the package itself, e.g. `from . import __version__`

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for stmt in child.orelse:
                    visit(stmt)
                continue
            if isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package[: len(package) - (child.level - 1)] if child.level > 1 else list(package)
                elif child.module and child.module.split(".")[0] == "hf_ifbeta":
                    base = []
                    child = ast.ImportFrom(module=child.module.partition(".")[2], names=child.names, level=1)
                else:
                    continue
                module = (child.module or "").split(".") if child.module else []
                resolve(base + module, [alias.name for alias in child.names])
            elif isinstance(child, ast.Import):
                for alias in child.names:
                    if alias.name.split(".")[0] == "hf_ifbeta":
                        resolve(alias.name.split(".")[1:-1], [alias.name.split(".")[-1]])
            visit(child)

    visit(ast.parse(path.read_text(), filename=str(path)))
    found.discard(here)
    return found


def import_graph() -> Dict[str, Set[str]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(p) for p in paths}
    return {module_name(p): imports_of(p, modules) for p in paths}


def find_circle(graph: Dict[str, Set[str]]) -> List[str]:
    """One circle of the graph as [a, b, ..., a], or [] when it has none (depth-first search)."""
    state: Dict[str, int] = {}  # 1: on the current path, 2: done
    path: List[str] = []

    def visit(node: str) -> List[str]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state:
                circle = visit(nxt)
                if circle:
                    return circle
        path.pop()
        state[node] = 2
        return []

    for node in sorted(graph):
        if node not in state:
            circle = visit(node)
            if circle:
                return circle
    return []


def test_the_graph_reader_sees_lazy_imports_and_skips_type_checking():
    graph = import_graph()
    assert "influence" in graph["pruner"]  # a lazy import inside DatasetPruner._influence
    assert "features" not in graph["scorers"]  # only under TYPE_CHECKING
    assert find_circle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_circle({"a": {"b"}, "b": set()}) == []


def test_no_import_circle_in_the_package():
    circle = find_circle(import_graph())
    assert not circle, "import circle: " + " -> ".join(circle)


@pytest.mark.slow
@pytest.mark.parametrize("module", sorted(m for m in import_graph() if m != "__init__"))
def test_each_module_imports_alone(module):
    result = subprocess.run(
        [sys.executable, "-c", f"import hf_ifbeta.{module}"], cwd=PACKAGE.parent, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-2000:]
