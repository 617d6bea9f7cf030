"""The suite's own layout and helpers.

Shared code lives in helper modules, never in a test module.

A test module that imports another runs (and collects) that module's setup
under a second name, and ties the two together so neither can be moved or
deleted alone; a ``conftest.py`` is pytest's to load, not a module to import.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

from django.conf import settings as django_settings
from pytest_django.fixtures import Settings

from django_avaturn.conf import avaturn_settings
from tests import settings as test_settings
from tests.helpers import AvaturnOverrides, live_skip_reason

TESTS_DIR = Path(__file__).resolve().parent


def _imports(path: Path, root: Path) -> list[tuple[int, list[str]]]:
    """Each import statement of a file, anywhere in it (inside functions too), with the
    dotted names it may bring in: ``from a import b`` may be module ``a.b``.
    """
    found: list[tuple[int, list[str]]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found.append((node.lineno, [alias.name for alias in node.names]))
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:  # relative: resolve against the file's package
                package = path.parent.relative_to(root.parent).parts
                base = ".".join(package[: len(package) - node.level + 1])
                module = f"{base}.{module}" if module else base
            found.append((node.lineno, [module, *(f"{module}.{a.name}" for a in node.names)]))
    return found


def _forbidden(module: str) -> bool:
    parts = module.split(".")
    return parts[0] == "tests" and any(
        part.startswith("test_") or part == "conftest" for part in parts[1:]
    )


def offending_imports(root: Path = TESTS_DIR) -> list[str]:
    """``file:line: module`` for each import of a test module or a conftest under ``root``."""
    found = []
    for path in sorted(root.rglob("*.py")):
        if ".sdk" in path.parts:
            continue
        for lineno, modules in _imports(path, root):
            bad = [module for module in modules if _forbidden(module)]
            if bad:
                found.append(f"{path.relative_to(root)}:{lineno}: {bad[0]}")
    return found


def test_no_module_imports_a_test_module_or_a_conftest() -> None:
    assert offending_imports() == []


def test_the_check_finds_each_way_of_importing_a_test_module(tmp_path: Path) -> None:
    root = tmp_path / "tests"
    (root / "e2e").mkdir(parents=True)
    (root / "test_a.py").write_text(
        "from tests.test_b import x\n"
        "import tests.test_c\n"
        "def f():\n    from tests.e2e.conftest import y\n"
        "from tests import test_d\n"
        "from tests.helpers import LIST_URL\n"
    )
    (root / "e2e" / "test_e.py").write_text("from .test_f import z\nfrom .browser import w\n")
    found = offending_imports(root)
    assert found == [
        "e2e/test_e.py:1: tests.e2e.test_f",
        "test_a.py:1: tests.test_b",
        "test_a.py:2: tests.test_c",
        "test_a.py:5: tests.test_d",
        "test_a.py:4: tests.e2e.conftest",
    ]


# ------------------------------------------------------------ the avaturn fixture


def test_avaturn_merges_its_keys_over_the_current_settings_and_drops_the_cache(
    avaturn: AvaturnOverrides,
) -> None:
    assert avaturn_settings.MAX_DURATION == 3600  # read, so the value is cached
    avaturn(MAX_DURATION=61)
    assert avaturn_settings.MAX_DURATION == 61
    avaturn.update(HEARTBEAT_INTERVAL=17)
    assert avaturn_settings.MAX_DURATION == 61  # an earlier override stays
    assert avaturn_settings.HEARTBEAT_INTERVAL == 17
    assert avaturn["API_KEY"] == test_settings.AVATURN["API_KEY"]  # the rest is kept
    expected = {**test_settings.AVATURN, "MAX_DURATION": 61, "HEARTBEAT_INTERVAL": 17}
    assert expected == django_settings.AVATURN


def test_avaturn_overrides_are_undone_when_the_test_ends() -> None:
    # What the ``settings`` fixture under ``avaturn`` does at teardown.
    wrapper: Any = Settings(_is_pytest_django=True)
    AvaturnOverrides(wrapper)(MAX_DURATION=62)
    assert avaturn_settings.MAX_DURATION == 62
    wrapper._finalize()
    assert django_settings.AVATURN == test_settings.AVATURN
    assert avaturn_settings.MAX_DURATION == 3600


# ------------------------------------------------------------------ live tests

LIVE = {"AVATURN_LIVE_TESTS": "1", "AVATURN_API_KEY": "av-real", "OPENAI_API_KEY": "sk-real"}


def test_live_tests_run_only_when_asked_and_given_both_keys() -> None:
    assert live_skip_reason(LIVE) is None
    assert "AVATURN_LIVE_TESTS" in str(live_skip_reason({**LIVE, "AVATURN_LIVE_TESTS": "0"}))
    for key in ("AVATURN_LIVE_TESTS", "AVATURN_API_KEY", "OPENAI_API_KEY"):
        reason = live_skip_reason({name: v for name, v in LIVE.items() if name != key})
        assert reason is not None and f"missing: {key}" in reason
    reason = live_skip_reason({})
    assert reason is not None
    assert "missing: AVATURN_LIVE_TESTS, AVATURN_API_KEY, OPENAI_API_KEY" in reason
