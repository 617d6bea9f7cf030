"""The README's first command, ``manage.py rundemo``, run as a new user runs it.

A real process on loopback: it migrates a brand-new SQLite file, creates the
demo user, starts the offline fake and serves the example project, which a
client then signs in to and starts and ends a session on over real HTTP.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

REPO = Path(__file__).resolve().parent.parent
_CSRF_INPUT = re.compile(r'name="csrfmiddlewaretoken" value="([^"]+)"')


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _demo_env(tmp_path: Path, fake_port: int) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        # Never the real services, and the example's own settings, not the tests'.
        if key not in {"AVATURN_API_KEY", "OPENAI_API_KEY", "DJANGO_SETTINGS_MODULE"}
    }
    env["EXAMPLE_DB_PATH"] = str(tmp_path / "demo.sqlite3")
    env["AVATURN_FAKE_PORT"] = str(fake_port)
    return env


def _rundemo(env: dict[str, str], addrport: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "manage.py", "rundemo", addrport],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def _wait_for(port: int, proc: subprocess.Popen[str], timeout: float = 60.0) -> None:
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


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A running ``rundemo``: the site's URL and its fake's URL."""
    site_port, fake_port = _free_port(), _free_port()
    proc = _rundemo(_demo_env(tmp_path, fake_port), f"127.0.0.1:{site_port}")
    try:
        _wait_for(site_port, proc)
        yield f"http://127.0.0.1:{site_port}", f"http://127.0.0.1:{fake_port}"
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


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
        proc = _rundemo(_demo_env(tmp_path, fake_port), f"127.0.0.1:{_free_port()}")
        output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert f"Cannot start the offline fake on 127.0.0.1:{fake_port}" in output
    assert "AVATURN_FAKE_PORT" in output
    assert "Traceback" not in output
