"""Starting and stopping the processes a benchmark talks to, and talking to the fake."""

from __future__ import annotations

import http.client
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "benchmarks" / ".work"
PYTHON = sys.executable
BIN = Path(PYTHON).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listened on port {port} within {timeout} s")


def listening_sockets(port: int) -> int:
    """How many sockets listen on 127.0.0.1:``port`` (one per worker with SO_REUSEPORT)."""
    wanted = f"0100007F:{port:04X}"
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == wanted and fields[3] == "0A":  # 0A: TCP_LISTEN
            count += 1
    return count


def wait_for_listeners(port: int, count: int, proc: subprocess.Popen[bytes]) -> None:
    """Wait until ``count`` workers listen, so no worker misses the clients' connections."""
    deadline = time.monotonic() + 60.0
    while listening_sockets(port) < count:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"fewer than {count} workers listened on port {port}")
        time.sleep(0.05)


def bench_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    # Never the real services: without keys the example points at the fake.
    env.pop("AVATURN_API_KEY", None)
    env.pop("OPENAI_API_KEY", None)
    env["DJANGO_SETTINGS_MODULE"] = "benchmarks.settings"
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra or {})
    return env


def stop_children_on_sigterm() -> None:
    """Make SIGTERM a ``SystemExit``, so every ``with Proc.start(...)`` stops its process.

    The children run in their own process groups, out of reach of a signal to ours:
    without this, a benchmark stopped by SIGTERM (CI's trap, ``kill``) would leave its
    servers and fakes running.
    """

    def exit_now(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, exit_now)


@dataclass
class Proc:
    """A child process in its own process group, stopped with SIGTERM then SIGKILL."""

    name: str
    popen: subprocess.Popen[bytes]
    port: int

    @classmethod
    def start(
        cls,
        name: str,
        argv: list[str],
        *,
        port: int,
        env: Mapping[str, str],
        listeners: int = 1,
    ) -> Proc:
        WORK.mkdir(parents=True, exist_ok=True)
        log = (WORK / f"{name}.log").open("ab")
        popen = subprocess.Popen(
            argv, cwd=ROOT, env=dict(env), stdout=log, stderr=log, start_new_session=True
        )
        proc = cls(name, popen, port)
        try:
            wait_for_port(port, popen)
            wait_for_listeners(port, listeners, popen)
        except BaseException:
            proc.stop()
            raise
        return proc

    def stop(self) -> None:
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait()

    def __enter__(self) -> Proc:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass(frozen=True)
class Latency:
    openai: float = 0.150
    create: float = 0.250
    terminate: float = 0.100

    @property
    def start(self) -> float:
        return self.openai + self.create

    @property
    def iteration(self) -> float:
        return self.start + self.terminate


def start_fake(latency: Latency, *, port: int | None = None) -> Proc:
    port = port or free_port()
    argv = [
        PYTHON, "-m", "django_avaturn.testing", "--port", str(port),
        "--latency-openai", str(latency.openai),
        "--latency-create", str(latency.create),
        "--latency-terminate", str(latency.terminate),
    ]  # fmt: skip
    return Proc.start("fake", argv, port=port, env=bench_env())


class FakeControl:
    """One kept-alive connection to the fake's control API, so it opens no new ones."""

    def __init__(self, port: int) -> None:
        self._conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def _call(self, method: str, path: str) -> dict[str, Any]:
        self._conn.request(method, path, body=b"" if method == "POST" else None)
        response = self._conn.getresponse()
        body = response.read()
        if response.status >= 300:
            raise RuntimeError(f"fake {method} {path}: {response.status} {body[:200]!r}")
        return json.loads(body or b"{}")  # type: ignore[no-any-return]

    def reset(self) -> None:
        self._call("POST", "/_fake/reset")

    def state(self) -> dict[str, Any]:
        return self._call("GET", "/_fake/state")

    def close(self) -> None:
        self._conn.close()


def manage(*args: str, env: Mapping[str, str]) -> None:
    subprocess.run(
        [PYTHON, "manage.py", *args], cwd=ROOT, env=dict(env), check=True, capture_output=True
    )


def _processes() -> Iterator[tuple[str, list[str]]]:
    """Each live process's command name and the /proc stat fields after it."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command, _, rest = (entry / "stat").read_text().partition(" (")[2].rpartition(")")
        except OSError:
            continue
        # state ppid pgrp ... utime(11) stime(12) cutime(13) cstime(14), 0-based.
        yield command, rest.split()


def group_cpu_seconds(pgid: int) -> float:
    """User + system CPU of every live process in process group ``pgid``."""
    ticks = sum(int(f[11]) + int(f[12]) for _, f in _processes() if int(f[2]) == pgid)
    return ticks / os.sysconf("SC_CLK_TCK")


def named_cpu_seconds(command: str) -> float:
    """User + system CPU of every live process whose command name is ``command``.

    PostgreSQL's backends (one per connection) are not in the server's process
    group, yet each query costs CPU there too: on two shared cores it counts.
    A backend that exited is counted through its parent's reaped-children
    time (cutime, cstime), so a connection per request is not missed.
    """
    ticks = sum(sum(map(int, f[11:15])) for name, f in _processes() if name == command)
    return ticks / os.sysconf("SC_CLK_TCK")


def self_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def loadavg() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])
