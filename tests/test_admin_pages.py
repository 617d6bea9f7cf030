"""The admin pages of our own (usage, the kill switch's confirmation) as the admin's own look.

Each page must match the markup of the Django it runs on: the matrix runs
these on 5.2, 6.0 and 6.1, whose admins mark breadcrumbs up differently.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser
from typing import Any

import pytest
from django.test import Client

from tests.test_admin import CHANGELIST, logged_in

pytestmark = pytest.mark.django_db

USAGE = f"{CHANGELIST}usage/"


class Breadcrumbs(HTMLParser):
    """The tag of a page's breadcrumbs element, and its text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tag = ""
        self.depth = 0
        self.parts: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if not self.tag and "breadcrumbs" in (dict(attrs).get("class") or "").split():
            self.tag, self.depth = tag, 1
        elif self.depth and tag == self.tag:
            self.depth += 1

    def handle_endtag(self, tag: str) -> None:
        if self.depth and tag == self.tag:
            self.depth -= 1

    def handle_data(self, data: str) -> None:
        if self.depth:
            self.parts.append(data)

    @property
    def text(self) -> str:
        """The steps, whatever separates them (&rsaquo; in the text, or CSS)."""
        return re.sub(r"\s+", " ", " ".join(self.parts).replace("\u203a", " ")).strip()


def breadcrumbs(html: bytes) -> Breadcrumbs:
    found = Breadcrumbs()
    found.feed(html.decode())
    found.close()
    return found


@pytest.fixture
def admin_client(django_user_model: Any) -> Client:
    root = django_user_model.objects.create_superuser(email="root@example.com", password="pw")
    return logged_in(root)


def test_the_usage_pages_breadcrumbs_are_marked_up_as_the_changelists(
    admin_client: Client,
) -> None:
    changelist = breadcrumbs(admin_client.get(CHANGELIST).content)
    usage = breadcrumbs(admin_client.get(USAGE).content)

    assert changelist.tag in {"div", "ol"}
    assert usage.tag == changelist.tag
    assert usage.text == f"{changelist.text} Usage"
