"""An ASGI server (uvicorn or daphne) in a process of its own, serving the site engine.

``test_site_engine_servers`` runs one per server: it serves
``tests.e2e.engine_asgi`` with ``tests.e2e.engine_settings``, on the test
database, with a Redis channel layer and cache under the test's own prefix.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from tests.helpers import REPO_DIR, redis_reachable, redis_url

SERVERS = ("uvicorn", "daphne")
START_WITHIN = 60.0
STOP_WITHIN = 15.0


def missing_for(server: str) -> str | None:
    """Why ``server`` cannot serve the engine here, or None."""
    for package in (server, "channels", "channels_redis", "websockets"):
        if find_spec(package) is None:
            return f"{package} is not installed (pip install -e '.[test]')"
    if not redis_reachable():
        return f"no Redis at {redis_url()} (AVATURN_TEST_REDIS_URL)"
    return None


def new_prefix() -> str:
    return f"avaturn-e2e-{uuid.uuid4().hex[:12]}"


def forget_prefix(prefix: str) -> None:
    """Delete the Redis keys under ``prefix`` (groups, channels, cache entries)."""
    import redis

    client = redis.Redis.from_url(redis_url())
    try:
        keys = list(client.scan_iter(match=f"*{prefix}*", count=500))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def database_settings(settings_dict: Mapping[str, Any]) -> dict[str, Any]:
    """The test database's settings, as JSON for the server process."""
    keys = ("ENGINE", "NAME", "USER", "PASSWORD", "HOST", "PORT", "OPTIONS")
    return {
        key: str(value) if isinstance(value, Path) else value
        for key, value in settings_dict.items()
        if key in keys
    }


def argv(server: str, port: int) -> list[str]:
    app = "tests.e2e.engine_asgi:application"
    # The servers' own request lines are off: they may show a socket's path, token
    # included (docs/site-engine.md). The app's own log lines stay on (engine_settings).
    if server == "uvicorn":
        return [
            sys.executable, "-m", "uvicorn", app,
            "--host", "127.0.0.1", "--port", str(port),
            "--lifespan", "off", "--no-access-log", "--log-level", "warning",
        ]  # fmt: skip
    return [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "-v", "0", app]


class EngineServer:
    """One server process; ``log()`` is what it wrote (stdout and stderr)."""

    def __init__(
        self,
        server: str,
        *,
        port: int,
        database: Mapping[str, Any],
        avaturn: Mapping[str, Any],
        prefix: str,
        log_path: Path,
    ) -> None:
        self.server = server
        self.port = port
        self.log_path = log_path
        env = {
            key: value
            for key, value in os.environ.items()
            if key not in {"AVATURN_API_KEY", "OPENAI_API_KEY", "DJANGO_SETTINGS_MODULE"}
        }
        env.update(
            {
                "DJANGO_SETTINGS_MODULE": "tests.e2e.engine_settings",
                "AVATURN_E2E_DATABASE": json.dumps(dict(database)),
                "AVATURN_E2E_AVATURN": json.dumps(dict(avaturn)),
                "AVATURN_E2E_REDIS_URL": redis_url(),
                "AVATURN_E2E_REDIS_PREFIX": prefix,
                "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_DIR), env.get("PYTHONPATH")])),
                "PYTHONUNBUFFERED": "1",
            }
        )
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(
            argv(server, self.port),
            cwd=REPO_DIR,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._wait_listening()

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def public_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def _wait_listening(self) -> None:
        deadline = time.monotonic() + START_WITHIN
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.stop()
                raise RuntimeError(f"{self.server} exited ({self.proc.returncode}):\n{self.log()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.server} did not listen within {START_WITHIN} s:\n{self.log()}")

    def stop(self) -> None:
        """SIGTERM (the server closes its sockets, 1012), then SIGKILL if it hangs."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_WITHIN)
            except subprocess.TimeoutExpired:
                self.proc.send_signal(signal.SIGUSR1)  # its stacks, to the log (engine_asgi)
                time.sleep(1.0)
                self.proc.kill()
                self.proc.wait(timeout=STOP_WITHIN)
        if not self._log.closed:
            self._log.close()
