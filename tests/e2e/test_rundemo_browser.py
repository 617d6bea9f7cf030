"""The README's first command, ``manage.py rundemo``, tried in a real browser as a new user would.

Its own process, its own SQLite file, its own fake: sign in through the
login form as ``demo``, press Start, see the stand-in avatar go live, press
Stop, and find nothing running at the fake.
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
