"""The admin pages of our own (usage, the kill switch's confirmation) as the admin's own look.

Each page must match the markup of the Django it runs on: the matrix runs
these on 5.2, 6.0 and 6.1, whose admins mark breadcrumbs up differently.
"""

from __future__ import annotations

import re
from datetime import timedelta
from html.parser import HTMLParser
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

from django_avaturn.models import EndReason, ServiceSwitch, Session, SessionStatus
from django_avaturn.spend import limits
from tests.helpers import CHANGELIST, live, logged_in, parse, staff

pytestmark = pytest.mark.django_db

USAGE = f"{CHANGELIST}usage/"
KILL = f"{CHANGELIST}kill-switch/"


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


@pytest.mark.parametrize(("url", "last"), [(USAGE, "Usage"), (KILL, "Stop all sessions")])
def test_our_pages_breadcrumbs_are_marked_up_as_the_changelists(
    admin_client: Client, url: str, last: str
) -> None:
    changelist = breadcrumbs(admin_client.get(CHANGELIST).content)
    page = breadcrumbs(admin_client.get(url).content)

    assert changelist.tag in {"div", "ol"}
    assert page.tag == changelist.tag
    assert page.text == f"{changelist.text} {last}"


# ---------------------------------------------------------------- the kill switch's confirmation


def statuses() -> dict[int, str]:
    return dict(Session.objects.values_list("pk", "status"))


@pytest.fixture
def running(user: Any, other_user: Any) -> dict[int, str]:
    """Two live sessions and a starting one, beside one being ended and one ended."""
    live(user, "live-1")
    live(other_user, "live-2")
    Session.objects.create(user=user, status=SessionStatus.STARTING)
    live(other_user, "ending", status=SessionStatus.ENDING)
    live(user, "ended", status=SessionStatus.ENDED)
    return statuses()


def confirmation_form(html: bytes) -> dict[str, str]:
    """The fields the confirmation page's form posts (its CSRF token included)."""
    return {
        str(attrs["name"]): str(attrs.get("value") or "")
        for attrs in parse(html.decode()).find("input")
        if attrs.get("name") in {"enable", "reason", "confirm", "csrfmiddlewaretoken"}
    }


def test_the_kill_switch_page_counts_starting_and_live_sessions_and_changes_nothing(
    admin_client: Client, running: dict[int, str], upstream: Any
) -> None:
    response = admin_client.get(KILL)

    assert response.status_code == 200
    assert response.context["running"] == 3
    assert b"the 3 sessions running now (starting or live) will be terminated" in response.content
    assert confirmation_form(response.content) == {
        "enable": "0",
        "reason": "",
        "confirm": "yes",
        "csrfmiddlewaretoken": response.context["csrf_token"],
    }
    (cancel,) = parse(response.content.decode()).find("a", **{"class": "button cancel-link"})
    assert cancel["href"] == CHANGELIST
    assert limits.sessions_enabled()
    assert not ServiceSwitch.objects.exists()
    assert statuses() == running
    assert upstream.avaturn.deleted == []


def test_one_running_session_is_counted_in_the_singular(
    admin_client: Client, user: Any, upstream: Any
) -> None:
    live(user, "only")
    assert b"the 1 session running now" in admin_client.get(KILL).content


def test_the_changelists_stop_button_asks_first_and_carries_the_reason(
    admin_client: Client, running: dict[int, str], upstream: Any
) -> None:
    response = admin_client.post(KILL, {"enable": "0", "reason": "billing incident"})

    assert response.status_code == 200
    assert confirmation_form(response.content)["reason"] == "billing incident"
    assert b"Reason: billing incident" in response.content
    assert limits.sessions_enabled()
    assert statuses() == running
    assert upstream.avaturn.deleted == []


@pytest.mark.django_db(transaction=True)
def test_confirming_with_the_pages_own_form_and_csrf_token_stops_everything(
    django_user_model: Any, running: dict[int, str], upstream: Any
) -> None:
    root = django_user_model.objects.create_superuser(email="root@example.com", password="pw")
    client = Client(enforce_csrf_checks=True)
    client.force_login(root)
    page = client.get(KILL, {"reason": "billing incident"})

    response = client.post(KILL, confirmation_form(page.content), follow=True)

    assert response.redirect_chain == [(CHANGELIST, 302)]
    assert sorted(upstream.avaturn.deleted) == ["live-1", "live-2"]
    # The live ones ended; the starting one's own request ends what Avaturn creates.
    ended = {
        SessionStatus.STARTING: SessionStatus.ENDING,
        SessionStatus.LIVE: SessionStatus.ENDED,
    }
    assert statuses() == {pk: ended.get(status, status) for pk, status in running.items()}
    assert set(
        Session.objects.filter(pk__in=[pk for pk, s in running.items() if s in ended]).values_list(
            "end_reason", flat=True
        )
    ) == {EndReason.SHUTDOWN}
    switch = ServiceSwitch.objects.get()
    assert (switch.sessions_enabled, switch.reason) == (False, "billing incident")


def test_the_kill_switch_page_needs_the_terminate_permission(
    django_user_model: Any, running: dict[int, str]
) -> None:
    viewer = logged_in(staff(django_user_model, "v@example.com", "view_session"))
    assert viewer.get(KILL).status_code == 403
    assert viewer.post(KILL, {"enable": "0"}).status_code == 403


def test_allowing_sessions_again_needs_no_confirmation(admin_client: Client) -> None:
    limits.set_sessions_enabled(False)
    response = admin_client.post(KILL, {"enable": "1"})
    assert (response.status_code, response["Location"]) == (302, CHANGELIST)
    assert limits.sessions_enabled()


# ---------------------------------------------------------------- the session list


def test_created_may_wrap_between_date_and_time_and_still_sorts(
    admin_client: Client, user: Any
) -> None:
    older = live(user, "older", created_at=timezone.now() - timedelta(days=2))
    newer = live(user, "newer")

    default = admin_client.get(CHANGELIST)
    by_created = admin_client.get(CHANGELIST, {"o": "6"})  # the sixth column, ascending

    assert [row.pk for row in default.context["cl"].result_list] == [newer.pk, older.pk]
    assert [row.pk for row in by_created.context["cl"].result_list] == [older.pk, newer.pk]
    cells = parse(default.content.decode()).find("td", **{"class": "field-created"})
    assert len(cells) == 2
    assert default.content.count(b'<span class="nowrap">') == 4
