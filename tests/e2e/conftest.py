"""Fixtures for the browser tests: Debian's chromium driven by Playwright, the
real ``@avaturn-live/web-sdk`` from npm, the example page on a live server, and
both upstreams answered by the loopback fake.

Nothing here reaches the internet: the SDK is served from loopback, and every
browser request to a non-loopback host (Daily's call machine on c.daily.co,
error reporting) is recorded and never let through.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from django_avaturn.testing import FakeUpstream
from tests.e2e.browser import (
    ALLOW_ASYNC_UNSAFE,
    CHROMIUM,
    CHROMIUM_ARGS,
    REPO_DIR,
    SDK_DIST,
    SDK_PREFIX,
    SDK_VERSION,
    Traffic,
    is_loopback,
    missing,
)
from tests.helpers import closed_ports, demo_env, exclusive_lock, rundemo, wait_for_port


def sri(data: bytes) -> str:
    return "sha384-" + base64.b64encode(hashlib.sha384(data).digest()).decode()


@pytest.fixture(scope="session")
def sdk_dist() -> Path:
    """The real SDK's ``dist/``, installed from npm on first use (never committed).

    pytest-xdist's workers each ask, and each looks under one lock: the first
    installs it, the others find it whole once that install has finished.
    """
    SDK_PREFIX.mkdir(exist_ok=True)
    with exclusive_lock(SDK_PREFIX / ".install-lock"):
        if not (SDK_DIST / "main.js").is_file():
            npm = shutil.which("npm")
            if npm is None:
                missing("npm is missing: run .ci/install-browser-deps to install the web SDK")
            _install_sdk(npm)
    return SDK_DIST


def _install_sdk(npm: str) -> None:
    result = subprocess.run(
        [
            npm,
            "install",
            "--prefix",
            str(SDK_PREFIX),
            "--no-audit",
            "--no-fund",
            "--ignore-scripts",
            "--no-save",
            f"@avaturn-live/web-sdk@{SDK_VERSION}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if result.returncode != 0 or not (SDK_DIST / "main.js").is_file():
        missing(f"could not install @avaturn-live/web-sdk from npm: {result.stderr[-500:]}")


class _CORSHandler(SimpleHTTPRequestHandler):
    """Static files with the CORS header a CDN sends (module scripts need it)."""

    def end_headers(self) -> None:
        self.send_header("Access-Control-Allow-Origin", "*")
        self.send_header("Cache-Control", "no-store")
        super().end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="session")
def sdk_server(sdk_dist: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Serves the SDK from its own loopback origin, as a CDN would (cross-origin).

    ``/main.js`` is the real SDK. (The stand-in for the states the real one
    cannot reach offline is the fake's own, ``fake.standin_sdk_url``.)
    """
    root = tmp_path_factory.mktemp("sdk-origin")
    shutil.copy(sdk_dist / "main.js", root / "main.js")
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_CORSHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True, name="sdk-server")
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture(scope="session")
def sdk_integrity(sdk_dist: Path) -> str:
    return sri((sdk_dist / "main.js").read_bytes())


@pytest.fixture(scope="module")
def playwright_browser() -> Iterator[Any]:
    if not Path(CHROMIUM).is_file():
        missing(f"{CHROMIUM} is missing: run .ci/install-browser-deps (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing("the playwright package is missing: run .ci/install-browser-deps")
    # Playwright's sync API keeps an event loop running in this thread while
    # it is open; Django would then refuse the tests' own ORM queries and the
    # test database's setup and flushes. The live server is unaffected (it has
    # its own thread), so this only lifts the guard for the test code itself.
    # Module scope: the loop stops with the module's last browser test, so the
    # tests after it (async_to_sync, asyncio.run) see a thread without one.
    previous = os.environ.get(ALLOW_ASYNC_UNSAFE)
    os.environ[ALLOW_ASYNC_UNSAFE] = "true"
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                yield browser
            finally:
                browser.close()
    finally:
        if previous is None:
            os.environ.pop(ALLOW_ASYNC_UNSAFE, None)
        else:
            os.environ[ALLOW_ASYNC_UNSAFE] = previous


@pytest.fixture
def fake() -> Iterator[FakeUpstream]:
    with FakeUpstream() as upstream:
        yield upstream


@pytest.fixture
def e2e(
    settings: Any,
    playwright_browser: Any,
    fake: FakeUpstream,
    sdk_server: str,
    sdk_integrity: str,
) -> Any:
    """Django settings for the example page against the fake and the loopback SDK."""
    settings.ROOT_URLCONF = "tests.e2e.urls"
    settings.TEMPLATES = [
        {
            **settings.TEMPLATES[0],
            "DIRS": [*settings.TEMPLATES[0]["DIRS"], REPO_DIR / "example_project" / "templates"],
        }
    ]
    settings.USES_REAL_SERVICES = False
    settings.AVATURN = {
        **settings.AVATURN,
        **fake.settings(),
        # The real OpenAI SDK over real HTTP to the fake, not the unit tests' transport.
        "OPENAI_HTTP_CLIENT": None,
        "SDK_URL": f"{sdk_server}/main.js",
        "SDK_INTEGRITY": sdk_integrity,
        "WIDGET_INIT_TIMEOUT": 3,
        "HEARTBEAT_INTERVAL": 1,
    }

    class E2E:
        pass

    E2E.fake = fake  # type: ignore[attr-defined]
    E2E.sdk_server = sdk_server  # type: ignore[attr-defined]
    E2E.settings = settings  # type: ignore[attr-defined]
    return E2E


@pytest.fixture
def browser_context(playwright_browser: Any) -> Iterator[tuple[Any, Traffic]]:
    """A fresh browser profile that can reach loopback only."""
    context = playwright_browser.new_context(viewport={"width": 900, "height": 380})
    traffic = Traffic()

    def route(route: Any) -> None:
        url = route.request.url
        if is_loopback(url):
            route.continue_()
            return
        traffic.blocked.append(url)
        # Hold Daily's call machine instead of failing it: offline, the room
        # join then never completes, which is what the widget's own timeout is for.
        if (urlsplit(url).hostname or "").endswith("daily.co"):
            traffic.held.append(route)
        else:
            route.abort()

    context.route("**/*", route)
    context.on("request", lambda request: traffic.requests.append(request))
    context.on("response", lambda response: traffic.responses.append(response))
    try:
        yield context, traffic
    finally:
        for held in traffic.held:
            with contextlib.suppress(Exception):
                held.abort()
        context.close()


@pytest.fixture
def site_engine_demo(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """``rundemo`` with ``AVATURN_DEMO_ENGINE=site``, offline: its URL and its fake's URL.

    The site engine's socket is served by rundemo's own server (daphne's
    runserver), which Avaturn's fake side connects to; OpenAI is the
    scripted ``FakeRealtime`` rundemo starts (``rundemo_script``).
    """
    site_port, fake_port, realtime_port = closed_ports(3)
    env = demo_env(tmp_path, fake_port)
    env["AVATURN_DEMO_ENGINE"] = "site"
    env["AVATURN_PUBLIC_URL"] = f"ws://127.0.0.1:{site_port}"
    env["AVATURN_FAKE_REALTIME_URL"] = f"ws://127.0.0.1:{realtime_port}/v1"
    proc = rundemo(env, f"127.0.0.1:{site_port}")
    try:
        wait_for_port(site_port, proc)
        yield f"http://127.0.0.1:{site_port}", f"http://127.0.0.1:{fake_port}"
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
