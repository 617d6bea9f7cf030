"""The README's first command, ``manage.py rundemo``, tried in a real browser as a new user would.

Its own process, its own SQLite file, its own fake: sign in through the
login form as ``demo``, press Start, see the stand-in avatar go live, press
Stop, and find nothing running at the fake. With ``AVATURN_DEMO_ENGINE=site``
too: the scripted conversation calls the demo tool and its card shows.
"""

from __future__ import annotations

from typing import Any

import pytest
import requests

from tests.e2e.browser import Traffic, wait_for, watch_page

pytestmark = pytest.mark.browser


def _live_at_fake(fake: str) -> list[str]:
    state = requests.get(f"{fake}/_fake/state", timeout=10).json()
    return list(state["live_sessions"])


def test_rundemo_goes_live_offline_and_stops(
    demo: tuple[str, str],
    browser_context: tuple[Any, Traffic],
) -> None:
    site, fake = demo
    context, traffic = browser_context
    page = context.new_page()
    watch_page(page, traffic)

    page.goto(f"{site}/accounts/login/?next=/")
    page.fill("input[name=username]", "demo")
    page.fill("input[name=password]", "demo")
    page.click("[type=submit]")
    page.wait_for_selector("[data-avaturn-start]")
    assert "Offline demo" in page.inner_text("#offline-notice")

    page.click("[data-avaturn-start]")
    page.wait_for_selector('[data-avaturn-widget][data-state="live"]', timeout=20_000)
    (session_id,) = _live_at_fake(fake)
    assert f"session {session_id} is live" in page.inner_text(".stub-video")

    page.click("[data-avaturn-stop]")
    page.wait_for_selector('[data-avaturn-widget][data-state="ended"]')
    wait_for(page, lambda: _live_at_fake(fake) == [], what="the session to end at the fake")
    # Offline means offline: nothing left loopback, and the page raised nothing.
    assert traffic.blocked == []
    assert traffic.page_errors == []


def test_rundemo_with_the_site_engine_runs_the_demo_tool_offline(
    site_engine_demo: tuple[str, str],
    browser_context: tuple[Any, Traffic],
) -> None:
    """AVATURN_DEMO_ENGINE=site: Avaturn's fake side connects to the site's own socket,
    the scripted OpenAI calls demo_user_info, and its card reaches the page."""
    site, fake = site_engine_demo
    context, traffic = browser_context
    page = context.new_page()
    watch_page(page, traffic)

    page.goto(f"{site}/accounts/login/?next=/")
    page.fill("input[name=username]", "demo")
    page.fill("input[name=password]", "demo")
    page.click("[type=submit]")
    page.wait_for_selector("[data-avaturn-start]")
    page.evaluate(
        "() => { window.messages = [];"
        " document.addEventListener('avaturn:message', e => window.messages.push(e.detail)); }"
    )

    page.click("[data-avaturn-start]")
    page.wait_for_selector('[data-avaturn-widget][data-state="live"]', timeout=20_000)
    assert len(_live_at_fake(fake)) == 1
    state = requests.get(f"{fake}/_fake/state", timeout=10).json()
    (session,) = state["sessions"]
    assert session["engine"] == "external"

    # The script greets after 3 s of the visitor's audio, then calls the tool after 3 more.
    card = page.wait_for_selector(".stub-message", timeout=30_000)
    assert "card: Signed in as" in card.inner_text()
    assert "text: demo" in card.inner_text()
    assert page.evaluate("() => window.messages") == [{"card": "Signed in as", "text": "demo"}]

    page.click("[data-avaturn-stop]")
    page.wait_for_selector('[data-avaturn-widget][data-state="ended"]')
    wait_for(page, lambda: _live_at_fake(fake) == [], what="the session to end at the fake")
    wait_for(
        page,
        lambda: all(
            s["engine_connection"]["closed"]
            for s in requests.get(f"{fake}/_fake/state", timeout=10).json()["sessions"]
        ),
        what="Avaturn's engine socket to close",
    )
    assert traffic.blocked == []
    assert traffic.page_errors == []
