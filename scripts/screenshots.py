"""Make the documentation's screenshots from the real example project.

    python scripts/screenshots.py                 # into docs/images/
    python scripts/screenshots.py --out /tmp/x    # anywhere else

It runs ``manage.py rundemo`` (the example project against the loopback
fake of both upstreams, with the fake's stand-in player) on free loopback
ports with a throwaway SQLite file, adds three weeks of made-up ended
sessions so that the list and the chart have something to show, and drives
Debian's Chromium through Playwright, signed in as ``demo``:

- ``widget-start.png``: the example page before Start;
- ``widget-live.png``: the same page once the widget is live;
- ``admin-sessions.png``: the session list in the admin (that live session
  among the made-up ones);
- ``admin-usage.png``: the usage page and its chart.

It needs what the browser tests need (``.ci/install-browser-deps``: chromium
and the playwright package); nothing leaves loopback.
"""

from __future__ import annotations

import argparse
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from playwright.sync_api import ViewportSize

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "docs" / "images"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# The example page is narrow (a 48rem column); the admin wants a laptop's width.
PAGE_VIEWPORT: ViewportSize = {"width": 800, "height": 600}
ADMIN_VIEWPORT: ViewportSize = {"width": 1440, "height": 900}
NAMES = ("widget-start.png", "widget-live.png", "admin-sessions.png", "admin-usage.png")
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _example_env(database: Path, fake_port: int) -> dict[str, str]:
    """The example project's own settings, offline whatever this shell exports."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key
        not in {
            "AVATURN_API_KEY",
            "OPENAI_API_KEY",
            "AVATURN_SDK_URL",
            "AVATURN_SDK_INTEGRITY",
            "DJANGO_SETTINGS_MODULE",
        }
    }
    env["EXAMPLE_DB_PATH"] = str(database)
    env["AVATURN_FAKE_PORT"] = str(fake_port)
    return env


def _seed(env: dict[str, str]) -> None:
    """Migrate, then write a made-up history straight into the table.

    Ended rows only, as the tests' fixtures write them: nothing here is
    running, so there is nothing for the fake to end.
    """
    os.environ.update(env)
    os.environ["DJANGO_SETTINGS_MODULE"] = "example_project.settings"
    sys.path.insert(0, str(REPO))
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.utils import timezone

    from django_avaturn.models import EndReason, Session, SessionStatus

    call_command("migrate", interactive=False, verbosity=0)
    user_model: Any = get_user_model()
    people = [
        user_model.objects.create_user(name, f"{name}@example.com")
        for name in ("ada.lovelace", "grace.hopper", "alan.turing", "katherine.johnson")
    ]
    reasons = [EndReason.CLIENT] * 6 + [EndReason.SIGNED_OUT, EndReason.EXPIRED, EndReason.ADMIN]
    pick = random.Random(18)  # the same history every run
    now = timezone.now()
    rows: list[Session] = []
    for days_ago in range(21, -1, -1):
        for _ in range(pick.randint(0, 4)):
            started = now - timedelta(days=days_ago, hours=pick.randint(1, 9))
            rows.append(
                Session(
                    user=pick.choice(people),
                    session_id=f"demo-{len(rows) + 1:03d}",
                    status=SessionStatus.ENDED,
                    end_reason=pick.choice(reasons),
                    created_at=started - timedelta(seconds=2),
                    started_at=started,
                    ended_at=started + timedelta(seconds=pick.randint(45, 900)),
                )
            )
    Session.objects.bulk_create(rows)


@contextmanager
def _rundemo(env: dict[str, str], port: int) -> Iterator[str]:
    """``manage.py rundemo`` on ``port``, stopped on the way out; yields its URL."""
    with tempfile.TemporaryFile(mode="w+") as log:
        proc = subprocess.Popen(
            [sys.executable, "manage.py", "rundemo", f"127.0.0.1:{port}"],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        try:
            _wait_until_listening(proc, port, log)
            yield f"http://127.0.0.1:{port}"
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _wait_until_listening(proc: subprocess.Popen[str], port: int, log: IO[str]) -> None:
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            log.seek(0)
            raise SystemExit(f"rundemo exited with {proc.returncode}:\n{log.read()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit(f"rundemo did not listen on {port} within 60 s") from None
            time.sleep(0.1)


def _loopback_only(route: Any) -> None:
    if (urlsplit(route.request.url).hostname or "") in LOOPBACK:
        route.continue_()
    else:
        route.abort()


def _shoot(site: str, out: Path) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport=PAGE_VIEWPORT)
            context.route("**/*", _loopback_only)
            page = context.new_page()
            page.goto(f"{site}/accounts/login/?next=/")
            page.fill("input[name=username]", "demo")
            page.fill("input[name=password]", "demo")
            with page.expect_navigation():
                page.click("[type=submit]")
            page.wait_for_selector("[data-avaturn-start]:enabled")
            page.screenshot(path=str(out / "widget-start.png"), full_page=True)

            page.click("[data-avaturn-start]")
            page.wait_for_selector('[data-avaturn-widget][data-state="live"]', timeout=20_000)
            page.screenshot(path=str(out / "widget-live.png"), full_page=True)

            # Another tab: leaving the widget's page would end its session.
            admin = context.new_page()
            admin.set_viewport_size(ADMIN_VIEWPORT)
            admin.goto(f"{site}/admin/django_avaturn/session/")
            admin.screenshot(path=str(out / "admin-sessions.png"))
            admin.goto(f"{site}/admin/django_avaturn/session/usage/")
            # The page is short: down to its last table, not a blank half screen.
            bottom = admin.evaluate(
                "() => document.querySelector('#content-main').getBoundingClientRect().bottom"
            )
            height = min(ADMIN_VIEWPORT["height"], int(bottom) + 32)
            admin.screenshot(
                path=str(out / "admin-usage.png"),
                clip={"x": 0, "y": 0, "width": ADMIN_VIEWPORT["width"], "height": height},
            )

            page.click("[data-avaturn-stop]")
            page.wait_for_selector('[data-avaturn-widget][data-state="ended"]')
        finally:
            browser.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="default: docs/images")
    args = parser.parse_args(argv)
    if not Path(CHROMIUM).is_file():
        parser.error(f"{CHROMIUM} is missing: run .ci/install-browser-deps")
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="avaturn-screenshots-") as work:
        env = _example_env(Path(work) / "demo.sqlite3", _free_port())
        _seed(env)
        with _rundemo(env, _free_port()) as site:
            _shoot(site, out)
    for name in NAMES:
        print(out / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
