"""The admin's session controls pressed in a real browser, against the loopback fake.

The admin tests post straight to the views; these press the buttons, so
what the markup does counts too (a form nested in the changelist's form is
dropped by the browser, and the action and kill switch then post nowhere).
"""

from __future__ import annotations

from typing import Any

import pytest

from django_avaturn.models import EndReason, Session, SessionStatus
from django_avaturn.services import start_session
from django_avaturn.spend import limits
from tests.e2e.browser import Traffic, sign_in, wait_for, watch_page
from tests.helpers import CHANGELIST

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def _live_sessions(django_user_model: Any, count: int) -> list[Session]:
    """Sessions started for real, over HTTP to the fake; a visitor each (the per-user cap)."""
    return [
        start_session(django_user_model.objects.create_user(f"visitor{n}@example.com")).session
        for n in range(count)
    ]


def _open_changelist(
    live_server: Any, browser_context: tuple[Any, Traffic], django_user_model: Any
) -> Any:
    context, traffic = browser_context
    staff = django_user_model.objects.create_superuser("staff@example.com", "x")
    sign_in(context, live_server.url, staff)
    page = context.new_page()
    watch_page(page, traffic)
    page.goto(live_server.url + CHANGELIST)
    return page


def test_the_changelist_keeps_its_actions_and_checkboxes_in_its_own_form(
    e2e: Any, live_server: Any, browser_context: Any, django_user_model: Any
) -> None:
    _live_sessions(django_user_model, 1)
    page = _open_changelist(live_server, browser_context, django_user_model)

    owners = page.evaluate(
        """() => ({
            action: document.querySelector('select[name=action]')?.form?.id ?? null,
            checkbox: document.querySelector('input[name=_selected_action]')?.form?.id ?? null,
            killSwitch: document.querySelector('#avaturn-kill-switch button')?.form?.id ?? null,
        })"""
    )

    assert owners == {
        "action": "changelist-form",
        "checkbox": "changelist-form",
        "killSwitch": "avaturn-kill-switch",
    }


def test_terminate_selected_ends_the_ticked_session_only(
    e2e: Any, live_server: Any, browser_context: Any, django_user_model: Any
) -> None:
    ticked, untouched = _live_sessions(django_user_model, 2)
    page = _open_changelist(live_server, browser_context, django_user_model)

    page.check(f"input[name=_selected_action][value='{ticked.pk}']")
    page.select_option("select[name=action]", "terminate_selected")
    with page.expect_navigation():
        page.click("button[name=index]")

    assert "Terminated 1 session." in page.text_content("ul.messagelist")
    assert e2e.fake.live_session_ids() == {untouched.session_id}
    ticked.refresh_from_db()
    untouched.refresh_from_db()
    assert (ticked.status, ticked.end_reason) == (SessionStatus.ENDED, EndReason.ADMIN)
    assert untouched.status == SessionStatus.LIVE


def test_the_kill_switch_button_stops_everything_and_turns_back_on(
    e2e: Any, live_server: Any, browser_context: Any, django_user_model: Any
) -> None:
    sessions = _live_sessions(django_user_model, 2)
    page = _open_changelist(live_server, browser_context, django_user_model)

    page.fill("#avaturn-kill-switch input[name=reason]", "billing incident")
    with page.expect_navigation():
        page.click("#avaturn-kill-switch button")

    # A page asks first, saying what will happen; nothing has happened yet.
    assert "the 2 sessions running now (starting or live) will be terminated" in page.inner_text(
        "#content-main"
    )
    assert len(e2e.fake.live_session_ids()) == 2
    assert limits.sessions_enabled()
    with page.expect_navigation():
        page.click("input[type=submit][value='Yes, stop all sessions']")

    assert "Terminated 2 sessions." in page.text_content("ul.messagelist")
    assert "New sessions are stopped (kill switch). billing incident" in page.text_content(
        "p.errornote"
    )
    assert e2e.fake.live_session_ids() == set()
    assert not limits.sessions_enabled()
    assert {s.status for s in Session.objects.filter(pk__in=[s.pk for s in sessions])} == {
        SessionStatus.ENDED
    }

    with page.expect_navigation():
        page.click("#avaturn-kill-switch button")
    wait_for(page, limits.sessions_enabled, what="the switch back on")
    assert page.query_selector("p.errornote") is None


def test_at_1100px_with_the_sidebar_open_every_column_shows_and_the_title_fits(
    e2e: Any, live_server: Any, browser_context: Any, django_user_model: Any
) -> None:
    """The changelist in a common laptop window, the kill switch's notice showing."""
    (running,) = _live_sessions(django_user_model, 1)
    Session.objects.create(
        user=running.user,
        session_id="an-ended-one",
        status=SessionStatus.ENDED,
        end_reason=EndReason.USER,  # the longest reason
    )
    limits.set_sessions_enabled(False, reason="billing incident")
    page = _open_changelist(live_server, browser_context, django_user_model)
    page.set_viewport_size({"width": 1100, "height": 800})
    assert page.is_visible("#nav-sidebar")

    layout = page.evaluate(
        """() => {
            const results = document.querySelector('#changelist-form .results');
            const edge = results.getBoundingClientRect().right;
            const title = document.createRange();
            title.selectNodeContents(document.querySelector('#content h1'));
            return {
                hidden: results.scrollWidth - results.clientWidth,
                cut: [...document.querySelectorAll('#result_list thead th')]
                    .filter(th => th.getBoundingClientRect().right > edge + 1)
                    .map(th => th.textContent.trim()),
                titleLines: new Set([...title.getClientRects()].map(r => Math.round(r.top))).size,
                notice: document.querySelector('p.errornote').textContent.trim(),
            };
        }"""
    )

    assert layout == {
        "hidden": 0,
        "cut": [],
        "titleLines": 1,
        "notice": "New sessions are stopped (kill switch). billing incident",
    }
