"""What a visitor sees of the widget before and without its script, and the stand-in's stage.

A site that does not serve its static files (DEBUG off, no whitenoise) shows
the widget's markup alone: it must say it is loading, not offer a Start that
does nothing.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.e2e.browser import (
    Traffic,
    open_signed_in,
    press_start_until_live,
    sign_in,
    status_text,
    watch_page,
    with_standin_sdk,
)

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_a_widget_whose_script_never_loads_says_it_is_loading_with_start_disabled(
    e2e: Any, live_server: Any, browser_context: tuple[Any, Traffic], user: Any
) -> None:
    context, traffic = browser_context
    sign_in(context, live_server.url, user)
    page = context.new_page()
    watch_page(page, traffic)
    # As on a site whose static files are not served.
    page.route("**/django_avaturn/avaturn-widget.js", lambda route: route.fulfill(status=404))

    page.goto(live_server.url + "/")
    page.wait_for_load_state("load")

    assert status_text(page) == "Loading the avatar…"
    assert page.is_disabled("[data-avaturn-start]")
    assert page.evaluate("() => document.querySelector('[data-avaturn-widget]').avaturn") is None


def test_the_script_enables_start_and_invites_the_visitor(
    e2e: Any, live_server: Any, browser_context: Any, user: Any
) -> None:
    page, _ = open_signed_in(e2e, live_server, browser_context, user)
    assert status_text(page) == "Press Start to talk with the avatar."
    assert page.is_enabled("[data-avaturn-start]")


def test_the_standin_player_fills_the_stage_as_the_real_one_does(
    e2e: Any, live_server: Any, browser_context: Any, user: Any
) -> None:
    with_standin_sdk(e2e)
    page, _ = open_signed_in(e2e, live_server, browser_context, user)
    press_start_until_live(page)

    stage = page.locator("[data-avaturn-stage]").bounding_box()
    player = page.locator("[data-avaturn-stage] .stub-video").bounding_box()
    assert stage is not None and player is not None
    assert stage["height"] > 100
    assert player == stage
