"""The site engine against a bare forwarder: ``python -m benchmarks engine``.

Three kinds of process, on one machine, sharing CLOCK_MONOTONIC:

- ``peer``: a stand-in for OpenAI Realtime (one for the whole run) that times
  the frames reaching it and the tool calls' round trips;
- the server under test, started afresh for every measurement: ``forwarder``
  (``forwarder``: a bare asyncio forwarder of the same frames, the baseline)
  or ``engine`` (the site engine: ``SiteEngineConsumer`` under uvicorn, one
  process, on uvloop like the forwarder, with its database rows and tokens);
- ``clients``: N Avaturn engine clients streaming 20 ms frames at 50 per
  second and timing the frames that come down.

Each measurement: the server starts; one conversation warms it up (imports,
first connections) and ends; its RSS is read; N conversations connect; after
a second of settling, a window of the plan's duration is measured: the
server's CPU (user + system, /proc/<pid>/stat) and RSS (VmRSS) at its edges,
the one-way latency of every frame that arrived inside it, each direction,
and every tool call answered in it. Rounds interleave the servers at each
count, so drift on the machine falls on both alike; the results file gives
the median of the rounds. Writes ``benchmarks/ENGINE_RESULTS.md`` (``--smoke``:
``benchmarks/.work/smoke/``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from websockets.sync.client import connect as ws_connect

from benchmarks.procs import PYTHON, ROOT, WORK, Proc, bench_env, free_port, loadavg

OUT = ROOT / "benchmarks"
SERVERS = ("forwarder", "engine")
# Measured only when asked (--only): what a change to the engine would give (none now).
EXPERIMENTS: tuple[str, ...] = ()
WARM_UP_S = 1.0
SETTLE_S = 1.0


@dataclass
class Plan:
    name: str
    counts: tuple[int, ...]
    rounds: int
    duration: float
    servers: tuple[str, ...] = SERVERS
    out_dir: Path = field(default=OUT)


PLANS = {
    "full": Plan("full", (1, 10, 50, 100, 200), 5, 5.0),
    "quick": Plan("quick", (1, 10, 100), 3, 3.0),
    "smoke": Plan("smoke", (1, 2), 1, 3.0, out_dir=WORK / "smoke"),
}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# --------------------------------------------------------------------------- /proc


def cpu_seconds(pid: int) -> float:
    """CPU time of every thread of ``pid`` (schedstat: nanoseconds, not 10 ms ticks)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue  # a thread that just ended
    if total:
        return total / 1e9
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    # After the command: state(0) ... utime(11) stime(12).
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


# --------------------------------------------------------------------------- processes


def start_peer() -> Proc:
    port = free_port()
    argv = [PYTHON, "-m", "benchmarks.engine.peer", "--port", str(port)]
    return Proc.start("engine-peer", argv, port=port, env=bench_env())


def peer_stats(peer_port: int, begin: int, end: int) -> dict[str, Any]:
    with ws_connect(f"ws://127.0.0.1:{peer_port}/_stats", max_size=None) as ws:
        ws.send(json.dumps({"from": begin, "to": end}))
        return json.loads(ws.recv())  # type: ignore[no-any-return]


class Clients:
    """A clients process: connect, then measure one window, then report."""

    def __init__(self, conversations: list[dict[str, Any]]) -> None:
        self.popen = subprocess.Popen(
            [PYTHON, "-m", "benchmarks.engine.clients"],
            cwd=ROOT,
            env=bench_env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self._send({"conversations": conversations})

    def _send(self, data: dict[str, Any]) -> None:
        assert self.popen.stdin is not None
        self.popen.stdin.write(json.dumps(data) + "\n")
        self.popen.stdin.flush()

    def _read(self) -> dict[str, Any]:
        assert self.popen.stdout is not None
        line = self.popen.stdout.readline()
        if not line:
            raise RuntimeError(f"the clients process exited ({self.popen.wait()})")
        return json.loads(line)  # type: ignore[no-any-return]

    def connected(self) -> dict[str, Any]:
        return self._read()

    def measure(self, begin: int, end: int) -> dict[str, Any]:
        self._send({"from": begin, "to": end})
        result = self._read()
        self.popen.wait(30)
        return result

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait()


@contextmanager
def server_under_test(name: str, peer_port: int, count: int) -> Iterator[tuple[Proc, Any]]:
    """The server and the source of its conversations (``conversations(n)``)."""
    if name == "forwarder":
        port = free_port()
        argv = [
            PYTHON,
            "-m",
            "benchmarks.engine.forwarder",
            "--port",
            str(port),
            "--openai-url",
            f"ws://127.0.0.1:{peer_port}/v1/realtime?model=bench",
        ]
        with Proc.start("engine-forwarder", argv, port=port, env=bench_env()) as proc:

            def forwarded(n: int) -> list[dict[str, Any]]:
                return [{"url": f"ws://127.0.0.1:{port}/", "headers": {}} for _ in range(n)]

            yield proc, forwarded
    elif name == "engine":
        from benchmarks.engine import site

        with site.engine_server(peer_port, count + 1) as (proc, conversations):
            yield proc, conversations
    else:
        raise ValueError(name)


def window_of(clients: Clients, duration: float) -> tuple[int, int]:
    begin = time.monotonic_ns() + int(SETTLE_S * 1e9)
    return begin, begin + int(duration * 1e9)


def sleep_until(ns: int) -> None:
    time.sleep(max(0.0, (ns - time.monotonic_ns()) / 1e9))


def measure_one(server: str, count: int, duration: float, peer_port: int) -> dict[str, Any]:
    result: dict[str, Any] = {"server": server, "conversations": count}
    with server_under_test(server, peer_port, count) as (proc, conversations):
        pid = proc.popen.pid
        result["rss_start_mb"] = round(rss_bytes(pid) / 2**20, 1)
        # Warm-up: one conversation, then the baseline RSS without it.
        warm = Clients(conversations(1))
        try:
            if warm.connected()["connected"] != 1:
                raise RuntimeError(f"{server}: the warm-up conversation did not connect")
            begin = time.monotonic_ns()
            warm.measure(begin, begin + int(WARM_UP_S * 1e9))
        finally:
            warm.kill()
        time.sleep(0.5)
        rss_base = rss_bytes(pid)
        clients = Clients(conversations(count))
        try:
            connected = clients.connected()
            result["connected"] = connected["connected"]
            result["connect_failures"] = connected["failed"][:5]
            result["connect_s"] = connected["connect_s"]
            begin, end = window_of(clients, duration)
            sleep_until(begin)
            cpu_begin, wall_begin = cpu_seconds(pid), time.monotonic()
            rss_begin = rss_bytes(pid)
            measured = clients.measure(begin, end)  # returns after ``end``
            cpu_end, wall_end = cpu_seconds(pid), time.monotonic()
            rss_end = rss_bytes(pid)
        finally:
            clients.kill()
        peer = peer_stats(peer_port, begin, end)
    n = max(1, result["connected"])
    result.update(
        up=peer["up"],
        down=measured["down"],
        tool=peer["tool"],
        cpu_pct_per_conversation=round(
            100 * (cpu_end - cpu_begin) / (wall_end - wall_begin) / n, 3
        ),
        cpu_pct_total=round(100 * (cpu_end - cpu_begin) / (wall_end - wall_begin), 1),
        rss_base_mb=round(rss_base / 2**20, 1),
        rss_mb=round(max(rss_begin, rss_end) / 2**20, 1),
        rss_mb_per_conversation=round((max(rss_begin, rss_end) - rss_base) / n / 2**20, 3),
        frames_sent=measured["sent"],
        frames_up_arrived=peer["up"]["n"],
        frames_down_arrived=measured["down"]["n"],
        frames_down_expected=int(n * duration * 50),
        segments=measured["segments"],
        errors=measured["errors"] + result["connect_failures"],
        error_count=measured["error_count"] + len(connected["failed"]),
        peer_protocol_errors=peer["protocol_errors"],
        loadavg=loadavg(),
    )
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks engine", description=__doc__)
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="counts 1, 10, 100; 3 rounds")
    size.add_argument("--smoke", action="store_true", help="seconds; for CI, writes to .work/")
    parser.add_argument("--only", choices=SERVERS + EXPERIMENTS, action="append", help="repeatable")
    parser.add_argument(
        "--counts",
        type=lambda s: tuple(int(c) for c in s.split(",")),
        help="e.g. 1,10,100 (instead of the plan's)",
    )
    parser.add_argument("--rounds", type=int, help="instead of the plan's")
    parser.add_argument(
        "--report-only", action="store_true", help="re-render from the plan's last results JSON"
    )
    args = parser.parse_args(argv)
    plan = PLANS["smoke" if args.smoke else "quick" if args.quick else "full"]
    from benchmarks.engine.report import write_results

    saved_path = WORK / f"engine-results-{plan.name}.json"
    if args.report_only:
        write_results(json.loads(saved_path.read_text()), plan.out_dir / "ENGINE_RESULTS.md")
        return
    counts = args.counts or plan.counts
    rounds = args.rounds or plan.rounds
    servers = tuple(s for s in plan.servers + EXPERIMENTS if s in (args.only or plan.servers))
    WORK.mkdir(parents=True, exist_ok=True)
    plan.out_dir.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    data: dict[str, Any] = {
        "plan": plan.name,
        "duration_s": plan.duration,
        "rounds": rounds,
        "counts": list(counts),
        "servers": list(servers),
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "loadavg_at_start": loadavg(),
        },
        "runs": [],
    }
    with start_peer() as peer:
        for round_ in range(1, rounds + 1):
            for count in counts:
                for server in servers:
                    log(f"engine: {server} x{count}, round {round_}")
                    try:
                        result = measure_one(server, count, plan.duration, peer.port)
                    except Exception as exc:  # one failed measurement; the rest still run
                        log(f"  failed: {exc!r}")
                        result = {
                            "server": server,
                            "conversations": count,
                            "connected": 0,
                            "errors": [repr(exc)[:300]],
                            "error_count": 1,
                        }
                    result["round"] = round_
                    data["runs"].append(result)
                    log("  " + json.dumps(result))
    data["machine"]["loadavg_at_end"] = loadavg()
    data["wall_s"] = round(time.perf_counter() - began, 1)
    if args.only and saved_path.exists():
        # Re-running some servers keeps the others' runs from the plan's last run.
        saved = json.loads(saved_path.read_text())
        data["runs"] = [r for r in saved["runs"] if r["server"] not in servers] + data["runs"]
        data["servers"] = [
            s for s in SERVERS + EXPERIMENTS if s in servers or s in saved["servers"]
        ]
        data["separate_runs"] = sorted({*saved.get("separate_runs", []), *servers})
        for key in ("machine", "wall_s", "duration_s", "rounds", "counts"):
            data[key] = saved[key]
    saved_path.write_text(json.dumps(data, indent=2))
    write_results(data, plan.out_dir / "ENGINE_RESULTS.md")
    log(f"done in {data['wall_s']} s: {plan.out_dir / 'ENGINE_RESULTS.md'}")
    failed = [r for r in data["runs"] if r["error_count"] or r["connected"] < r["conversations"]]
    if failed:
        log(f"{len(failed)} engine runs had errors or conversations that did not connect")
        sys.exit(1)


def median(values: list[float]) -> float:
    return statistics.median(values)
