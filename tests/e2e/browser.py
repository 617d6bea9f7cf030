"""Helpers shared by the browser tests (their fixtures are in ``conftest.py``):
where things are, skipping when the browser is missing, the traffic record,
signing in, and driving the widget.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit

import pytest

E2E_DIR = Path(__file__).resolve().parent
REPO_DIR = E2E_DIR.parent.parent
SDK_VERSION = "0.3.7"
SDK_PREFIX = E2E_DIR / ".sdk"
SDK_DIST = SDK_PREFIX / "node_modules" / "@avaturn-live" / "web-sdk" / "dist"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    # A microphone without a permission prompt: the widget asks for one.
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
]
ALLOW_ASYNC_UNSAFE = "DJANGO_ALLOW_ASYNC_UNSAFE"
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "[::1]", "::1"}


def missing(reason: str) -> NoReturn:
    """Skip the browser tests, unless CI asked for them to run (then fail loudly)."""
    if os.environ.get("AVATURN_REQUIRE_BROWSER_TESTS") == "1":
        pytest.fail(f"browser tests are required here but cannot run: {reason}")
    pytest.skip(reason)


class Traffic:
    """Everything the browser sent and received, and where it tried to go."""

    def __init__(self) -> None:
        self.requests: list[Any] = []
        self.responses: list[Any] = []
        self.console: list[str] = []
        self.page_errors: list[str] = []
        self.blocked: list[str] = []
        self.held: list[Any] = []

    def texts(self) -> Iterator[str]:
        """Every URL, header, body and console line seen (for the no-key check)."""
        for request in self.requests:
            yield request.url
            yield repr(request.headers)
            yield request.post_data or ""
        for response in self.responses:
            yield repr(response.headers)
            try:
                yield response.text()
            except Exception:
                yield ""
        yield from self.console
        yield from self.page_errors


def is_loopback(url: str) -> bool:
    parts = urlsplit(url)
    if parts.scheme in {"data", "blob", "about"}:
        return True
    return (parts.hostname or "") in LOOPBACK_HOSTS


def sign_in(context: Any, live_server_url: str, user: Any) -> None:
    """Give the browser the session cookie of a signed-in user."""
    from django.test import Client

    client = Client()
    client.force_login(user)
    cookie = client.cookies["sessionid"]
    context.add_cookies([{"name": "sessionid", "value": cookie.value, "url": live_server_url}])


def watch_page(page: Any, traffic: Traffic) -> None:
    page.on("console", lambda message: traffic.console.append(f"{message.type}: {message.text}"))
    page.on("pageerror", lambda error: traffic.page_errors.append(str(error)))


def wait_for(
    page: Any, condition: Callable[[], Any], *, timeout: float = 10.0, what: str = ""
) -> Any:
    """Poll ``condition`` while letting Playwright run.

    Playwright's sync API only dispatches events (and the route handler that
    lets each request through) while the test is inside one of its calls, so
    a plain ``time.sleep`` would stall the very requests being waited for.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or condition}")
        page.wait_for_timeout(50)


def widget_state(page: Any, selector: str = "[data-avaturn-widget]") -> str:
    return str(page.get_attribute(selector, "data-state"))


def status_text(page: Any, selector: str = "[data-avaturn-widget]") -> str:
    return str(page.text_content(f"{selector} [data-avaturn-status]")).strip()


def with_standin_sdk(e2e: Any) -> None:
    """The fake's stand-in SDK: the states the real one cannot reach offline (live...)."""
    e2e.settings.AVATURN = {
        **e2e.settings.AVATURN,
        "SDK_URL": e2e.fake.standin_sdk_url,
        "SDK_INTEGRITY": "",
    }


def open_signed_in(
    e2e: Any, live_server: Any, browser_context: Any, user: Any, path: str = "/"
) -> tuple[Any, Traffic]:
    context, traffic = browser_context
    sign_in(context, live_server.url, user)
    page = context.new_page()
    watch_page(page, traffic)
    page.goto(live_server.url + path)
    page.wait_for_function("() => !!document.querySelector('[data-avaturn-widget]')?.avaturn")
    return page, traffic


def press_start_until_live(page: Any) -> None:
    page.click("[data-avaturn-start]")
    page.wait_for_selector('[data-avaturn-widget][data-state="live"]')
