"""The README's first command, ``manage.py rundemo``, run as a new user runs it.

A real process on loopback: it migrates a brand-new SQLite file, creates the
demo user, starts the offline fake and serves the example project, which a
client then signs in to and starts and ends a session on over real HTTP.
"""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest
import requests

from tests.helpers import closed_port, demo_env, rundemo

_CSRF_INPUT = re.compile(r'name="csrfmiddlewaretoken" value="([^"]+)"')


def _sign_in(http: requests.Session, site: str) -> None:
    page = http.get(f"{site}/accounts/login/", timeout=10)
    match = _CSRF_INPUT.search(page.text)
    assert page.status_code == 200 and match is not None
    answer = http.post(
        f"{site}/accounts/login/",
        data={"username": "demo", "password": "demo", "csrfmiddlewaretoken": match.group(1)},
        allow_redirects=False,
        timeout=10,
    )
    assert answer.status_code == 302, answer.text[:500]


def test_rundemo_serves_the_example_against_its_own_fake(demo: tuple[str, str]) -> None:
    site, fake = demo
    with requests.Session() as http:
        _sign_in(http, site)
        page = http.get(f"{site}/", timeout=10)
        assert page.status_code == 200
        assert "data-avaturn-widget" in page.text
        assert "av-fake-avaturn-key" not in page.text
        assert "sk-fake-openai-key" not in page.text

        headers = {"X-CSRFToken": http.cookies["csrftoken"]}
        started = http.post(f"{site}/avaturn/sessions/", json={}, headers=headers, timeout=30)
        assert started.status_code == 201, started.text
        session_id = started.json()["session_id"]
        assert requests.get(f"{fake}/_fake/state", timeout=10).json()["live_sessions"] == [
            session_id
        ]

        ended = http.delete(f"{site}/avaturn/sessions/{session_id}/", headers=headers, timeout=30)
        assert ended.status_code == 204
        assert requests.get(f"{fake}/_fake/state", timeout=10).json()["live_sessions"] == []


def test_rundemo_says_how_out_when_the_fake_port_is_taken(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        fake_port = taken.getsockname()[1]
        proc = rundemo(demo_env(tmp_path, fake_port), f"127.0.0.1:{closed_port()}")
        output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert f"Cannot start the offline fake on 127.0.0.1:{fake_port}" in output
    assert "AVATURN_FAKE_PORT" in output
    assert "Traceback" not in output


def test_rundemo_serves_the_site_engines_socket_over_asgi(demo: tuple[str, str]) -> None:
    """With Channels and daphne installed, rundemo serves ASGI: the engine's route
    answers, and refuses a socket without a valid token before accepting it; a
    socket to a path with no route is refused too (a 403, not a 500)."""
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    site, _ = demo
    for path in ("/avaturn/engine/not-a-token/", "/no-route-here/"):
        url = site.replace("http://", "ws://") + path
        with pytest.raises(InvalidStatus) as refused:
            connect(url, additional_headers={"X-Avaturn-Engine-Secret": "nope"}, open_timeout=10)
        assert refused.value.response.status_code == 403, path
