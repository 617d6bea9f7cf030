"""The widget's ES modules as a site serves them, ``collectstatic`` included.

The template loads one entry module (``avaturn-widget.js``); the browser
fetches the rest through its relative ``import`` statements. Each import has
to reach an existing file in the source tree, and again after
``collectstatic`` with ``ManifestStaticFilesStorage``: by default that
storage leaves JavaScript alone, so the hashed entry imports the modules'
plain names (which it also collects); with
``support_js_module_import_aggregation`` it rewrites the imports to hashed
names.
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path
from typing import Any

import pytest
from django.contrib.staticfiles.storage import ManifestStaticFilesStorage
from django.core.management import call_command
from django.templatetags.static import static

from django_avaturn.widget import WIDGET_SCRIPT

STATIC = Path(__file__).resolve().parent.parent / "django_avaturn" / "static"

# Static imports and re-exports (`import {a} from "./x.js";`, `import "./x.js";`),
# one statement possibly over several lines.
IMPORT = re.compile(
    r"""^(?:import|export)\b[^;"']*?\bfrom\s*["']([^"']+)["']\s*;"""
    r"""|^import\s*["']([^"']+)["']\s*;""",
    re.MULTILINE,
)


class ModuleImportsStorage(ManifestStaticFilesStorage):
    """The manifest storage with its rewriting of JavaScript module imports on."""

    support_js_module_import_aggregation = True


def imports_of(source: str) -> list[str]:
    return [first or second for first, second in IMPORT.findall(source)]


def module_graph(root: Path, entry: str) -> dict[str, list[str]]:
    """Every module reachable from ``entry`` (a path under ``root``) and what it imports.

    Fails on an import that is not relative (the widget has no bare
    specifiers: there is no import map) or whose file is not there.
    """
    graph: dict[str, list[str]] = {}
    pending = [entry]
    while pending:
        name = pending.pop()
        if name in graph:
            continue
        targets = []
        for specifier in imports_of((root / name).read_text()):
            assert specifier.startswith(("./", "../")), f"{name} imports {specifier!r}"
            target = posixpath.normpath(posixpath.join(posixpath.dirname(name), specifier))
            assert (root / target).is_file(), f"{name} imports {specifier!r}: no {target}"
            targets.append(target)
        graph[name] = targets
        pending.extend(targets)
    return graph


def test_the_import_pattern_reads_single_and_multi_line_imports() -> None:
    source = (
        'import { a } from "./a.js";\n'
        "import {\n  b,\n  c,\n} from './b.js';\n"
        'export { d } from "../d.js";\n'
        'import "./e.js";\n'
        "// import what from where, in a comment\n"
        "const f = await import(url);\n"
    )
    assert imports_of(source) == ["./a.js", "./b.js", "../d.js", "./e.js"]


def test_every_module_is_reached_from_the_entry_and_every_import_resolves() -> None:
    graph = module_graph(STATIC, WIDGET_SCRIPT)
    shipped = {
        path.relative_to(STATIC).as_posix() for path in (STATIC / "django_avaturn").rglob("*.js")
    }
    assert set(graph) == shipped
    assert graph[WIDGET_SCRIPT] == ["django_avaturn/widget/widget.js"]


@pytest.mark.parametrize(
    ("backend", "imports_hashed"),
    [
        ("django.contrib.staticfiles.storage.ManifestStaticFilesStorage", False),
        (f"{__name__}.ModuleImportsStorage", True),
    ],
    ids=["manifest", "manifest-with-module-imports"],
)
def test_after_collectstatic_the_hashed_entrys_imports_resolve(
    settings: Any, tmp_path: Path, backend: str, imports_hashed: bool
) -> None:
    settings.STATIC_ROOT = str(tmp_path)
    settings.STORAGES = {**settings.STORAGES, "staticfiles": {"BACKEND": backend}}
    call_command("collectstatic", interactive=False, verbosity=0)

    url = static(WIDGET_SCRIPT)
    # What {% avaturn_head %} puts in the page: the entry under its hashed name.
    assert re.fullmatch(r"/static/django_avaturn/avaturn-widget\.[0-9a-f]{12}\.js", url)
    entry = url.removeprefix(settings.STATIC_URL)
    graph = module_graph(tmp_path, entry)

    sources = module_graph(STATIC, WIDGET_SCRIPT)
    assert len(graph) == len(sources)
    hashed = re.compile(r"\.[0-9a-f]{12}\.js\b")
    for name, targets in graph.items():
        assert all(bool(hashed.search(target)) == imports_hashed for target in targets), name
        original = hashed.sub(".js", name)
        assert [hashed.sub(".js", target) for target in targets] == sources[original]
        # Only the import paths may change: the rest of each module is its source.
        collected = (tmp_path / name).read_text()
        assert hashed.sub(".js", collected) == (STATIC / original).read_text(), name
