"""Every string a visitor or an admin reads is marked for translation.

A static check (no gettext needed): in the app's own modules, the texts that
reach people (error details, model and field labels, help texts, admin
descriptions and messages) must be gettext calls, not bare literals.
``makemessages`` then finds them all; the catalog itself is generated per
language by whoever translates.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

APP = Path(__file__).resolve().parent.parent / "django_avaturn"
MODULES = sorted(
    path
    for path in APP.rglob("*.py")
    if "migrations" not in path.parts and "testing" not in path.parts
)
TRANSLATORS = {"_", "gettext", "gettext_lazy", "ngettext", "ngettext_lazy", "pgettext_lazy"}
# Keyword arguments and class attributes whose text a person reads.
READ_BY_PEOPLE = {"verbose_name", "verbose_name_plural", "help_text", "description", "label"}
ATTRIBUTES_READ_BY_PEOPLE = {"default_detail", "verbose_name", "verbose_name_plural"}


def _is_bare_text(node: ast.expr) -> bool:
    """A literal with words in it (not an identifier-like value such as a code)."""
    if isinstance(node, ast.JoinedStr):
        return True
    return isinstance(node, ast.Constant) and isinstance(node.value, str) and " " in node.value


def unmarked(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call):
            name = getattr(node.func, "id", getattr(node.func, "attr", ""))
            if name in TRANSLATORS:
                continue
            found += [
                f"{path.name}:{kw.lineno} {kw.arg}="
                for kw in node.keywords
                if kw.arg in READ_BY_PEOPLE and _is_bare_text(kw.value)
            ]
            if name == "message_user" and len(node.args) > 1 and _is_bare_text(node.args[1]):
                found.append(f"{path.name}:{node.lineno} message_user")
        elif isinstance(node, ast.Assign) and _is_bare_text(node.value):
            found += [
                f"{path.name}:{node.lineno} {target.id}"
                for target in node.targets
                if isinstance(target, ast.Name) and target.id in ATTRIBUTES_READ_BY_PEOPLE
            ]
    return found


@pytest.mark.parametrize("path", MODULES, ids=lambda path: path.relative_to(APP).as_posix())
def test_texts_for_people_are_marked_for_translation(path: Path) -> None:
    assert unmarked(path) == []


def test_the_check_finds_a_bare_text(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "class E:\n"
        "    default_detail = 'Something failed.'\n"
        "    ok = _('Marked text.')\n"
        "field = Field(help_text='Not marked.', verbose_name=_('marked'))\n"
        "admin.message_user(request, f'{n} done')\n"
    )
    assert unmarked(sample) == [
        "sample.py:2 default_detail",
        "sample.py:4 help_text=",
        "sample.py:5 message_user",
    ]
