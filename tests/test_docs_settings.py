"""The reference pages document exactly what exists.

docs/settings.md has one ``### `NAME` `` heading per key of the defaults
table (``conf.DEFAULTS``), each with a ``Default: `value` `` line that is the
real default; docs/checks.md has one ``## `django_avaturn.X000` `` heading per
system check id the package can emit. A new setting or check without its
entry fails here, and so does an entry for one that was renamed or removed.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from django_avaturn.conf import DEFAULTS
from django_avaturn.spend.limits import QUOTA_KEYS

REPO = Path(__file__).resolve().parent.parent
SETTINGS_PAGE = REPO / "docs" / "settings.md"
CHECKS_PAGE = REPO / "docs" / "checks.md"
PACKAGE = REPO / "django_avaturn"

_HEADING = re.compile(r"^(#{1,6}) (.+?)\s*$", re.MULTILINE)
_SETTING = re.compile(r"`([A-Z][A-Z0-9_]*)`")
_CHECK_ID = re.compile(r"django_avaturn\.[A-Z]\d{3}")
# An id as the code writes it: a string literal (``id="django_avaturn.E003"``).
_CHECK_ID_LITERAL = re.compile(r"[\"'](django_avaturn\.[A-Z]\d{3})[\"']")


def sections(page: Path, level: int) -> dict[str, str]:
    """Each heading of ``level`` on ``page``, mapped to the text up to the next heading."""
    text = page.read_text(encoding="utf-8")
    headings = list(_HEADING.finditer(text))
    found: dict[str, str] = {}
    for index, heading in enumerate(headings):
        if len(heading.group(1)) != level:
            continue
        end = headings[index + 1].start() if index + 1 < len(headings) else len(text)
        title = heading.group(2)
        assert title not in found, f"{page.name} has two headings {title!r}"
        found[title] = text[heading.end() : end]
    return found


def documented_settings() -> dict[str, str]:
    entries = {}
    for title, body in sections(SETTINGS_PAGE, 3).items():
        named = _SETTING.fullmatch(title)
        assert named, f"settings.md: a level-3 heading that names no setting: {title!r}"
        entries[named.group(1)] = body
    return entries


def as_documented(value: Any) -> str:
    """A default as the settings page writes it: Python literals, strings in double quotes."""
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(as_documented(item) for item in value) + "]"
    if isinstance(value, dict):
        items = (f"{json.dumps(key)}: {as_documented(item)}" for key, item in value.items())
        return "{" + ", ".join(items) + "}"
    return repr(value)


def emitted_check_ids() -> set[str]:
    return {
        check_id
        for path in PACKAGE.rglob("*.py")
        for check_id in _CHECK_ID_LITERAL.findall(path.read_text(encoding="utf-8"))
    }


def test_every_setting_has_an_entry_and_no_entry_names_a_setting_that_does_not_exist() -> None:
    documented = set(documented_settings())
    assert sorted(set(DEFAULTS) - documented) == [], "settings missing from docs/settings.md"
    assert sorted(documented - set(DEFAULTS)) == [], "docs/settings.md names unknown settings"


@pytest.mark.parametrize("name", sorted(DEFAULTS))
def test_each_entry_states_the_real_default(name: str) -> None:
    body = documented_settings().get(name, "")
    defaults = re.findall(r"^Default: `(.*)`\s*$", body, re.MULTILINE)
    assert defaults == [as_documented(DEFAULTS[name])]


def test_the_quotas_entry_documents_every_quota_key() -> None:
    body = documented_settings()["QUOTAS"]
    assert sorted(key for key in QUOTA_KEYS if f"`{key}`" not in body) == []
    # ...and no key the parser would refuse.
    named = set(re.findall(r"`([a-z]+_per_[a-z]+)`", body))
    assert named == set(QUOTA_KEYS)


def test_every_check_id_has_an_entry_and_no_entry_names_one_that_does_not_exist() -> None:
    emitted = emitted_check_ids()
    assert {"django_avaturn.E001", "django_avaturn.W001"} <= emitted  # the scan finds them
    documented = set()
    for title in sections(CHECKS_PAGE, 2):
        named = re.fullmatch(rf"`({_CHECK_ID.pattern})`", title)
        assert named, f"checks.md: a level-2 heading that names no check: {title!r}"
        documented.add(named.group(1))
    assert sorted(emitted - documented) == [], "checks missing from docs/checks.md"
    assert sorted(documented - emitted) == [], "docs/checks.md names checks that do not exist"


def test_the_docs_name_no_check_id_that_does_not_exist() -> None:
    emitted = emitted_check_ids()
    pages = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    unknown = {
        f"{page.name}: {check_id}"
        for page in pages
        for check_id in _CHECK_ID.findall(page.read_text(encoding="utf-8"))
        if check_id not in emitted
    }
    assert sorted(unknown) == []


def test_as_documented_writes_python_literals_with_double_quoted_strings() -> None:
    assert as_documented(None) == "None"
    assert as_documented(True) == "True"
    assert as_documented(0.25) == "0.25"
    assert as_documented("10/minute") == '"10/minute"'
    assert as_documented(["a.B"]) == '["a.B"]'
    assert as_documented({}) == "{}"
    assert as_documented({"x": None}) == '{"x": None}'
