"""Helpers shared by the test modules: URLs, the test keys, request helpers,
row factories, a clock freezer, an HTML tag parser and the Redis probe.

Shared test code lives in helper modules (this one, ``upstreams.py`` for the
transport-level upstreams, ``live_fake.py`` for the loopback fake, and
``e2e/browser.py`` for the browser tests), never in a ``test_*`` module: no
test module imports another (``test_suite_layout.py`` checks it).
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Coroutine, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse

import pytest
from django.contrib.auth.models import Permission
from django.test import Client
from django.utils import timezone

from django_avaturn.models import Session, SessionStatus
from django_avaturn.sessions.expiry import ExpiryPolicy, expire_sessions

REPO_DIR = Path(__file__).resolve().parent.parent
LIST_URL = "/avaturn/sessions/"
T = TypeVar("T")

CHANGELIST = "/admin/django_avaturn/session/"
# The keys in tests/settings.py: none may appear in any response, page or log.
KEYS = ("av-test-key-0123456789", "sk-test-openai-0123456789")


# ------------------------------------------------------------------ settings


class AvaturnOverrides:
    """``settings.AVATURN`` for one test: ``avaturn(MAX_DURATION=60)``.

    Each call merges its keys over the current ``AVATURN`` (tests/settings.py's,
    plus whatever a fixture such as ``live_fake`` already set) through
    pytest-django's ``settings`` fixture, so ``setting_changed`` fires (the
    app's settings cache and clients are dropped) and everything is restored
    after the test.
    """

    def __init__(self, settings: Any) -> None:
        self._settings = settings

    def __call__(self, **overrides: Any) -> dict[str, Any]:
        merged: dict[str, Any] = {**self._settings.AVATURN, **overrides}
        self._settings.AVATURN = merged
        return merged

    update = __call__

    def __getitem__(self, key: str) -> Any:
        return self._settings.AVATURN[key]


# ---------------------------------------------------------------------- live

LIVE_ENV = ("AVATURN_LIVE_TESTS", "AVATURN_API_KEY", "OPENAI_API_KEY")


def live_skip_reason(environ: Mapping[str, str]) -> str | None:
    """Why ``live`` tests (against the real Avaturn and OpenAI) are skipped, or None to run them.

    They run only when asked (``AVATURN_LIVE_TESTS=1``) and given both real keys.
    """
    missing = [
        name
        for name in LIVE_ENV
        if not (environ.get(name) == "1" if name == "AVATURN_LIVE_TESTS" else environ.get(name))
    ]
    if not missing:
        return None
    return (
        "contract test against the real Avaturn and OpenAI (one short session each): "
        "set AVATURN_LIVE_TESTS=1, AVATURN_API_KEY and OPENAI_API_KEY to run it "
        f"(missing: {', '.join(missing)})"
    )


# ------------------------------------------------------------------ requests


def csrf_post(client: Any, url: str, data: Any = None, **extra: Any) -> Any:
    """POST the way the widget does: JSON body plus the CSRF cookie's token in a header."""
    return client.post(
        url,
        data=json.dumps(data) if data is not None else None,
        content_type="application/json",
        HTTP_X_CSRFTOKEN=csrf_token(client),
        **extra,
    )


def csrf_delete(client: Any, url: str) -> Any:
    return client.delete(url, HTTP_X_CSRFTOKEN=csrf_token(client))


def csrf_token(client: Any) -> str:
    """A CSRF cookie for the client (as a page would set); the header value that matches it."""
    from django.middleware.csrf import _get_new_csrf_string, _mask_cipher_secret

    secret = _get_new_csrf_string()
    client.cookies["csrftoken"] = secret
    return _mask_cipher_secret(secret)


# --------------------------------------------------------------------- admin


def live(user: Any, session_id: str, **fields: Any) -> Session:
    """A live row started 90 s ago (the status can be overridden)."""
    now = timezone.now()
    fields.setdefault("status", SessionStatus.LIVE)
    return Session.objects.create(
        user=user,
        session_id=session_id,
        started_at=now - timedelta(seconds=90),
        expires_at=now + timedelta(seconds=600),
        max_duration=3600,
        **fields,
    )


def staff(django_user_model: Any, email: str, *perms: str) -> Any:
    user = django_user_model.objects.create_user(email=email, password="pw", is_staff=True)
    user.user_permissions.set(
        Permission.objects.filter(content_type__app_label="django_avaturn", codename__in=perms)
    )
    return user


def logged_in(user: Any) -> Client:
    client = Client(enforce_csrf_checks=False)
    client.force_login(user)
    return client


# --------------------------------------------------------------------- spend


def at(monkeypatch: Any, when: datetime) -> None:
    """Freeze Django's clock (not ours: the app reads django.utils.timezone.now).

    Session.created_at's default holds the real function, bound at import
    (and Django caches it as the field's ``_get_default``): frozen too, or a
    start made while frozen is stamped with the real time, which counts in
    the wrong window when the real date is near the one the test names.
    """
    monkeypatch.setattr(timezone, "now", lambda: when)
    monkeypatch.setattr(Session._meta.get_field("created_at"), "_get_default", lambda: when)


def past_session(user: Any, start: datetime, minutes: float, **extra: Any) -> Session:
    return Session.objects.create(
        user=user,
        session_id=f"old-{start.isoformat()}-{minutes}",
        status=extra.pop("status", SessionStatus.ENDED),
        created_at=start,
        started_at=start,
        ended_at=start + timedelta(minutes=minutes) if minutes else None,
        **extra,
    )


# ---------------------------------------------------------------------- HTML


class Tags(HTMLParser):
    """Every start tag of a fragment, with its attributes unescaped."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def find(self, tag: str, **attrs: str) -> list[dict[str, str | None]]:
        return [
            found
            for name, found in self.tags
            if name == tag
            and all(key in found and found[key] == value for key, value in attrs.items())
        ]


def parse(html: str) -> Tags:
    tags = Tags()
    tags.feed(html)
    tags.close()
    return tags


# --------------------------------------------------------------------- Redis


def redis_url() -> str:
    return os.environ.get("AVATURN_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def redis_reachable() -> bool:
    parsed = urlparse(redis_url())
    try:
        with socket.create_connection((parsed.hostname, parsed.port or 6379), timeout=0.5):
            return True
    except OSError:
        return False


# ------------------------------------------------------------------- network


@contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """Hold ``path``'s exclusive lock (``flock``) while in the block: one test process at a
    time, pytest-xdist's workers included. The file is created if missing, never removed."""
    with path.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def closed_port() -> int:
    """A loopback port nothing listens on: connecting to it is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def closed_ports(count: int) -> list[int]:
    """``count`` distinct ``closed_port()``s (one it gave may come back)."""
    ports: set[int] = set()
    while len(ports) < count:
        ports.add(closed_port())
    return sorted(ports)


# ------------------------------------------------------------------- rundemo


def demo_env(tmp_path: Path, fake_port: int) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        # Never the real services, and the example's own settings, not the tests'.
        if key not in {"AVATURN_API_KEY", "OPENAI_API_KEY", "DJANGO_SETTINGS_MODULE"}
    }
    env["EXAMPLE_DB_PATH"] = str(tmp_path / "demo.sqlite3")
    env["AVATURN_FAKE_PORT"] = str(fake_port)
    return env


def rundemo(env: dict[str, str], addrport: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "manage.py", "rundemo", addrport],
        cwd=REPO_DIR,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def wait_for_port(port: int, proc: subprocess.Popen[str], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            output = proc.stdout.read() if proc.stdout else ""
            pytest.fail(f"rundemo exited with {proc.returncode}:\n{output}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    pytest.fail(f"rundemo did not listen on {port} within {timeout} s")


def release_held_starts() -> None:
    """Finish the rows of creates with an unknown outcome, as if their hold had passed.

    The expiry command does this once Avaturn has ended whatever such a
    create may have started; here at once, so that a test can go on to the
    user's next start.
    """
    expire_sessions(policy=replace(ExpiryPolicy.from_settings(), unknown_outcome_after=0))


def run_coroutine(coroutine: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run`` on a thread of its own.

    Callable whether or not the calling thread runs an event loop (a browser
    test's Playwright keeps one running on the main thread while its module runs).
    """
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()
