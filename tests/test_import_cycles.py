"""The package's layout: no import cycle among its modules."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import django_avaturn

PACKAGE = Path(django_avaturn.__file__).parent


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _top_level_imports(
    tree: ast.Module, *, in_functions: bool = False
) -> list[ast.Import | ast.ImportFrom]:
    """The imports that run when the module is imported (not type-only).

    ``in_functions`` adds those inside functions, which run when called.
    """
    found: list[ast.Import | ast.ImportFrom] = []
    pending: list[ast.stmt] = list(tree.body)
    while pending:
        node = pending.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        elif isinstance(node, ast.If) and not _is_type_checking(node):
            pending.extend(node.body + node.orelse)
        elif isinstance(node, ast.Try):
            pending.extend(node.body + node.orelse + node.finalbody)
            for handler in node.handlers:
                pending.extend(handler.body)
        elif isinstance(node, (ast.With, ast.ClassDef, ast.For, ast.While)) or (
            in_functions and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        ):
            pending.extend(node.body)
    return found


def import_graph(*, in_functions: bool = False) -> dict[str, set[str]]:
    """Each module of the package, and the package modules it imports (see above)."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in _top_level_imports(
            ast.parse(path.read_text(), str(path)), in_functions=in_functions
        ):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
                continue
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            targets.add(base)
            # ``from package import module`` imports that module too.
            targets.update(f"{base}.{alias.name}" for alias in node.names)
        # A module's own packages are initialised before it: not an edge.
        graph[name] = {t for t in targets if t in modules and not name.startswith(f"{t}.")}
        graph[name].discard(name)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path that ends where it began, or ``None``."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_among_the_package_modules() -> None:
    graph = import_graph()
    assert "django_avaturn.sessions.transitions" in graph  # the walk found the package
    assert find_cycle(graph) is None


# Imports kept inside a function for a reason other than a cycle: modules
# read by settings modules or imported before the app registry is ready
# (models cannot be imported then), and conf's own reading of TEST_MODE.
IMPORTED_LATE_ON_PURPOSE = {
    ("django_avaturn.signals", "django_avaturn.models"),
    ("django_avaturn.api.schema", "django_avaturn.api.serializers"),
    ("django_avaturn.conf", "django_avaturn.test_mode"),
}


def test_no_cycle_hides_in_a_function_level_import() -> None:
    graph = import_graph(in_functions=True)
    for importer, imported in IMPORTED_LATE_ON_PURPOSE:
        graph[importer].discard(imported)
    assert find_cycle(graph) is None


def test_every_module_imports_in_a_fresh_interpreter() -> None:
    # The graphs above read the source; this imports every module, in a new process.
    names = [name for name in _modules() if not name.endswith("__main__")]
    script = (
        "import django, importlib, sys\n"
        "django.setup()\n"
        "for name in sys.argv[1:]:\n"
        "    importlib.import_module(name)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, *names],
        capture_output=True,
        text=True,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings"},
        check=False,
    )
    assert done.returncode == 0, done.stderr
