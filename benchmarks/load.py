"""The session-start load: N signed-in clients, each looping start (POST) + end (DELETE).

Each client is a thread with one kept-alive ``http.client`` connection, its
own user, its own session cookie and CSRF token, signed in through the real
login form. After two warm-up iterations each, the clients loop freely; what
counts is a window of the run's duration that opens once they have settled:
the iterations inside it (one straddling an edge for its share), the
latencies of those that end inside it, and the fake's counters and the
processes' CPU read at its edges, so "new upstream connections" counts only
what the window opened.
"""

from __future__ import annotations

import http.client
import json
import re
import statistics
import threading
import time
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from typing import Any

from benchmarks.procs import (
    FakeControl,
    Latency,
    group_cpu_seconds,
    loadavg,
    named_cpu_seconds,
    self_cpu_seconds,
)
from django_avaturn.testing.fake import DEFAULT_OPENAI_API_KEY

PASSWORD = "bench-password"
# Iterations' worth of time the clients run before the measured window opens.
SETTLE_ITERATIONS = 2
_CSRF_INPUT = re.compile(rb'name="csrfmiddlewaretoken" value="([^"]+)"')

# Where each broker lives: (start path, end path template).
BROKERS = {
    "django_avaturn": ("/avaturn/sessions/", "/avaturn/sessions/{}/"),
    "quickstart": ("/baseline/sessions/", "/baseline/sessions/{}/"),
    "floor": ("/baseline/floor/sessions/", "/baseline/floor/sessions/{}/"),
}


def username(index: int) -> str:
    return f"bench{index}"


class Client:
    """One browser: a cookie jar and a kept-alive connection."""

    def __init__(self, port: int) -> None:
        self._conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self.cookies: dict[str, str] = {}

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, bytes]:
        all_headers = dict(headers or {})
        if self.cookies:
            all_headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        for attempt in range(2):
            try:
                self._conn.request(method, path, body=body, headers=all_headers)
                response = self._conn.getresponse()
                data = response.read()
                break
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                # The server closed an idle keep-alive connection: reconnect once.
                self._conn.close()
                if attempt:
                    raise
        for raw in response.msg.get_all("Set-Cookie") or []:
            for name, morsel in SimpleCookie(raw).items():
                self.cookies[name] = morsel.value
        return response.status, data

    def login(self, user: str) -> None:
        status, page = self.request("GET", "/accounts/login/")
        match = _CSRF_INPUT.search(page)
        if status != 200 or match is None:
            raise RuntimeError(f"login page: {status}")
        form = f"username={user}&password={PASSWORD}&csrfmiddlewaretoken={match.group(1).decode()}"
        status, _ = self.request(
            "POST",
            "/accounts/login/",
            form.encode(),
            {"Content-Type": "application/x-www-form-urlencoded"},
        )
        if status != 302 or "sessionid" not in self.cookies:
            raise RuntimeError(f"login as {user} failed: {status}")

    def api(self, method: str, path: str) -> tuple[int, bytes]:
        headers = {"X-CSRFToken": self.cookies["csrftoken"]}
        body = None
        if method == "POST":
            body = b"{}"
            headers["Content-Type"] = "application/json"
        return self.request(method, path, body, headers)

    def close(self) -> None:
        self._conn.close()


@dataclass
class LoadResult:
    server: str
    broker: str
    db: str
    clients: int
    iterations: float  # inside the window; one straddling an edge counts its share
    elapsed: float
    ideal_rate: float
    added_ms: list[float] = field(repr=False)
    start_added_ms: list[float] = field(repr=False)
    errors: int
    new_connections: int
    closed_connections: int
    upstream_calls: int
    cpu_ms: dict[str, float] = field(default_factory=dict)
    load_before: float = 0.0
    probe_ms: float = 0.0

    @property
    def rate(self) -> float:
        return self.iterations / self.elapsed if self.elapsed else 0.0

    @property
    def fraction_of_ideal(self) -> float:
        return self.rate / self.ideal_rate

    def pct(self, values: list[float], q: float) -> float:
        if not values:
            return float("nan")
        ordered = sorted(values)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    @property
    def conns_per_iteration(self) -> float:
        return self.new_connections / self.iterations if self.iterations else float("nan")

    def summary(self) -> dict[str, Any]:
        return {
            "server": self.server,
            "broker": self.broker,
            "db": self.db,
            "clients": self.clients,
            "iterations": round(self.iterations, 1),
            "elapsed_s": round(self.elapsed, 2),
            "rate_per_s": round(self.rate, 2),
            "ideal_per_s": round(self.ideal_rate, 2),
            "fraction_of_ideal": round(self.fraction_of_ideal, 3),
            "added_p50_ms": round(self.pct(self.added_ms, 0.50), 1),
            "added_p99_ms": round(self.pct(self.added_ms, 0.99), 1),
            "start_added_p50_ms": round(self.pct(self.start_added_ms, 0.50), 1),
            "start_added_mean_ms": round(statistics.fmean(self.start_added_ms), 1)
            if self.start_added_ms
            else None,
            "new_upstream_connections": self.new_connections,
            "upstream_calls": self.upstream_calls,
            "new_connections_per_iteration": round(self.conns_per_iteration, 3),
            # Opened without being closed is a pool growing to a new peak;
            # closed and reopened would be churn.
            "closed_connections_per_iteration": round(
                self.closed_connections / self.iterations if self.iterations else float("nan"), 3
            ),
            "errors": self.errors,
            # CPU spent per start+end iteration by each process, and the
            # machine's load average from outside this benchmark before the run.
            "cpu_ms_per_iteration": {
                name: round(ms / self.iterations, 1) if self.iterations else None
                for name, ms in self.cpu_ms.items()
            },
            "loadavg_before": self.load_before,
            # How fast one core was just before the run (cpu_probe_ms).
            "probe_ms": round(self.probe_ms, 1),
        }


def run_load(
    *,
    port: int,
    server_pgid: int,
    fake_pgid: int,
    fake: FakeControl,
    latency: Latency,
    server: str,
    broker: str,
    db: str,
    clients: int,
    duration: float,
    warmup: int = 2,
) -> LoadResult:
    start_path, end_path = BROKERS[broker]
    gate = threading.Barrier(clients + 1)
    lock = threading.Lock()
    added: list[float] = []
    start_added: list[float] = []
    work = [0.0]  # iterations inside the window, summed over the clients
    error_count = [0]
    failures: list[BaseException] = []
    stop = threading.Event()
    # The measured window: set before the clients are let go, read by them.
    window = [0.0, 0.0]

    def one_iteration(client: Client) -> tuple[float, float, float] | None:
        """When the start was sent, its answer came and the end's answer came; None on an error."""
        t0 = time.perf_counter()
        status, body = client.api("POST", start_path)
        t1 = time.perf_counter()
        if status != 201:
            return None
        session_id = json.loads(body)["session_id"]
        status, _ = client.api("DELETE", end_path.format(session_id))
        t2 = time.perf_counter()
        if status != 204:
            return None
        return t0, t1, t2

    def worker(index: int) -> None:
        client = Client(port)
        try:
            client.login(username(index))
            for _ in range(warmup):
                one_iteration(client)
        except BaseException as exc:  # reported by the main thread
            failures.append(exc)
        gate.wait()  # warm-up done
        gate.wait()  # the window is set
        mine: list[float] = []
        mine_start: list[float] = []
        done = 0.0
        errors = 0
        try:
            while not failures and not stop.is_set():
                timing = one_iteration(client)
                if timing is None:
                    errors += 1  # counted wherever it happens
                    continue
                t0, t1, t2 = timing
                # The share of this iteration inside the window: one straddling
                # an edge counts in part, so a single client's figure is not
                # rounded to whole iterations.
                inside = min(t2, window[1]) - max(t0, window[0])
                if inside > 0:
                    done += inside / (t2 - t0)
                if not window[0] <= t2 <= window[1]:
                    continue
                mine_start.append((t1 - t0 - latency.start) * 1000)
                mine.append(mine_start[-1])
                mine.append((t2 - t1 - latency.terminate) * 1000)
        except BaseException as exc:
            failures.append(exc)
        finally:
            client.close()
            with lock:
                work[0] += done
                error_count[0] += errors
                added.extend(mine)
                start_added.extend(mine_start)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    gate.wait()
    if failures:
        raise RuntimeError(f"{server}/{broker}: a client failed to warm up") from failures[0]
    fake.reset()  # nothing in flight: every client waits at the barrier
    load_before = loadavg()
    probe_ms = cpu_probe_ms()
    # Counted: the iterations inside a window opening after the clients have
    # settled. The barrier lets every client go at the same instant; that
    # burst, and the wait for the last client's iteration in flight at the end,
    # would otherwise count against throughput (about 9% at 50 clients over 5 s).
    settle = SETTLE_ITERATIONS * latency.iteration
    window[0] = time.perf_counter() + settle
    window[1] = window[0] + duration
    gate.wait()
    _sleep_until(window[0])
    # Read, not reset: a reset now would forget the secrets of starts in flight.
    state_before = fake.state()
    cpu_before = _cpu(server_pgid, fake_pgid, db)
    _sleep_until(window[1])
    cpu_after = _cpu(server_pgid, fake_pgid, db)
    state = fake.state()
    stop.set()
    for thread in threads:
        thread.join()
    if failures:
        raise RuntimeError(f"{server}/{broker}: a client failed") from failures[0]
    return LoadResult(
        server=server,
        broker=broker,
        db=db,
        clients=clients,
        iterations=work[0],
        elapsed=duration,
        ideal_rate=clients / latency.iteration,
        added_ms=added,
        start_added_ms=start_added,
        errors=error_count[0],
        new_connections=_grew(state, state_before, "connections_opened"),
        closed_connections=_grew(state, state_before, "connections_closed"),
        upstream_calls=sum(int(n) for n in state["counts"].values())
        - sum(int(n) for n in state_before["counts"].values()),
        cpu_ms={k: (cpu_after[k] - cpu_before[k]) * 1000 for k in cpu_before},
        load_before=load_before,
        probe_ms=probe_ms,
    )


def _grew(after: dict[str, Any], before: dict[str, Any], counter: str) -> int:
    return int(after[counter]) - int(before[counter])


def _sleep_until(moment: float) -> None:
    time.sleep(max(0.0, moment - time.perf_counter()))


def _cpu(server_pgid: int, fake_pgid: int, db: str) -> dict[str, float]:
    cpu = {
        "server": group_cpu_seconds(server_pgid),
        "fake": group_cpu_seconds(fake_pgid),
        "clients": self_cpu_seconds(),
    }
    if db == "postgres":
        cpu["database"] = named_cpu_seconds("postgres")
    return cpu


def cpu_probe_ms(repeats: int = 5) -> float:
    """How long a fixed piece of pure-Python work takes on one core now (median, ms).

    The machine is shared with other tenants, and its speed drifts: the same
    code's floor broker spent 6.9 ms of server CPU per start+end at 50 clients
    in one run and 11.4 ms (median of five) in others within the hour. Timed
    just before each run, while the servers idle, this shows how fast the
    machine was for that run.
    """
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        total = 0
        for i in range(200_000):
            total += i * i % 7
        times.append(time.perf_counter() - began)
    return statistics.median(times) * 1000


def fake_round_trip_ms(port: int, latency: Latency, *, calls: int = 50) -> float:
    """What one upstream call costs beyond its configured latency, with no broker at all.

    A bare ``http.client`` request to the fake's OpenAI endpoint on one
    kept-alive connection: loopback, the fake's own parsing and answering,
    and this client's. Every broker's "added latency" carries this once per
    upstream call, the floor's included. Returns the median, in ms.
    """
    body = json.dumps({"session": {"type": "realtime", "model": "gpt-realtime"}}).encode()
    headers = {
        "Authorization": f"Bearer {DEFAULT_OPENAI_API_KEY}",
        "Content-Type": "application/json",
    }
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    added: list[float] = []
    try:
        for _ in range(calls):
            began = time.perf_counter()
            conn.request("POST", "/v1/realtime/client_secrets", body=body, headers=headers)
            response = conn.getresponse()
            response.read()
            if response.status != 200:
                raise RuntimeError(f"the fake answered {response.status}")
            added.append((time.perf_counter() - began - latency.openai) * 1000)
    finally:
        conn.close()
    return statistics.median(added)
