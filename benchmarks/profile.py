"""The start and end path in one process: ``python -m benchmarks.profile``.

Drives ``POST sessions/`` + ``DELETE sessions/<id>/`` through Django's test
``Client`` (the WSGI handler and the example project's middleware, as
gunicorn runs them) against the loopback fake answering at once, ``-n``
times after a warm-up, for django_avaturn and for the floor broker in the
same process. Reports per start+end: SQL statements (counted with
``connection.execute_wrapper``), commits (an atomic block's, and each write
run in autocommit), CPU time (``time.process_time`` of this process; the
fake runs in a process of its own) and wall time, then cProfile's top
cumulative entries for django_avaturn (``--profile``). ``added_wall_us_paired``
and ``added_cpu_us_paired``: what django_avaturn adds to the floor per
start+end, paired by round; the wall time it adds beyond its CPU is waiting,
nearly all of it on the database.

``--db postgres`` uses PostgreSQL (``BENCH_PG_NAME``, default
``avaturn_bench_profile``); the default is a SQLite file under
``benchmarks/.work/``. CPU figures move with the machine's load: compare
the two brokers of one invocation, and the median of ``--rounds``.
``cpu_ratio`` divides the two brokers' medians; ``cpu_ratio_paired`` is the
median of each round's own ratio (its two brokers back to back, the first
one alternating), which a machine whose speed moves between rounds moves
less.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import statistics
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from benchmarks.dbsetup import vacuum_postgres
from benchmarks.load import BROKERS
from benchmarks.procs import WORK, Latency, bench_env, start_fake, stop_children_on_sigterm


def _environment(db: str, fake_port: int) -> None:
    env = {"AVATURN_FAKE_PORT": str(fake_port)}
    if db == "postgres":
        env |= {
            "BENCH_DB": "postgres",
            "BENCH_PG_NAME": os.environ.get("BENCH_PG_NAME", "avaturn_bench_profile"),
        }
    else:
        WORK.mkdir(parents=True, exist_ok=True)
        path = WORK / "profile.sqlite3"
        for suffix in ("", "-wal", "-shm"):
            path.with_name(path.name + suffix).unlink(missing_ok=True)
        env |= {"BENCH_DB": "sqlite", "EXAMPLE_DB_PATH": str(path)}
    os.environ.update(bench_env(env))


class Counting:
    """Counts the statements run on a connection, by their first word."""

    def __init__(self, connection: Any) -> None:
        self.connection = connection
        self.kinds: Counter[str] = Counter()
        # Writes outside an atomic block: each is a transaction (a commit) of its own.
        self.autocommitted = 0

    def __call__(
        self, execute: Callable[..., Any], sql: str, params: Any, many: bool, context: Any
    ) -> Any:
        kind = sql.lstrip().split(" ", 1)[0].upper()
        self.kinds[kind] += 1
        if kind in ("INSERT", "UPDATE", "DELETE") and not self.connection.in_atomic_block:
            self.autocommitted += 1
        return execute(sql, params, many, context)


def _summary(
    args: argparse.Namespace,
    brokers: tuple[str, ...],
    cpu: dict[str, list[float]],
    wall: dict[str, list[float]],
    kinds: dict[str, Counter[str]],
    commit_counts: dict[str, int],
) -> dict[str, Any]:
    result: dict[str, Any] = {"db": args.db, "n": args.n, "rounds": args.rounds}
    for broker in brokers:
        result[broker] = {
            "statements": round(sum(kinds[broker].values()) / args.n, 2),
            "by_kind": {k: round(v / args.n, 2) for k, v in sorted(kinds[broker].items())},
            "commits": round(commit_counts[broker] / args.n, 2),
            "cpu_us": round(statistics.median(cpu[broker])),
            "cpu_us_rounds": [round(value) for value in cpu[broker]],
            "wall_us": round(statistics.median(wall[broker])),
        }
    result["cpu_ratio"] = round(result["django_avaturn"]["cpu_us"] / result["floor"]["cpu_us"], 2)
    # Each round's two brokers ran back to back: their ratio pairs figures taken
    # at the same speed of a shared machine, which moves between rounds.
    paired = [ours / floor for ours, floor in zip(cpu["django_avaturn"], cpu["floor"], strict=True)]
    result["cpu_ratio_paired"] = round(statistics.median(paired), 2)
    # What django_avaturn adds per start+end, paired by round: in all (wall
    # time), and of it this process's CPU; the rest is waiting, nearly all of
    # it on the database (the fake answers at once, to both brokers alike).
    ours, floor = "django_avaturn", "floor"
    for figure, times in (("wall", wall), ("cpu", cpu)):
        added = [a - b for a, b in zip(times[ours], times[floor], strict=True)]
        result[f"added_{figure}_us_paired"] = round(statistics.median(added))
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile", description=__doc__)
    parser.add_argument("--db", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("-n", type=int, default=200, help="starts+ends per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--profile", action="store_true", help="cProfile django_avaturn")
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--json", action="store_true", help="one JSON line only")
    args = parser.parse_args(argv)
    stop_children_on_sigterm()

    with start_fake(Latency(0.0, 0.0, 0.0)) as fake:
        _environment(args.db, fake.port)
        import django

        if args.db == "postgres":
            from benchmarks.dbsetup import recreate_postgres

            recreate_postgres(os.environ["BENCH_PG_NAME"])
        django.setup()
        from django.contrib.auth import get_user_model
        from django.core.management import call_command
        from django.db import connection
        from django.test import Client

        call_command("migrate", verbosity=0)
        user = get_user_model().objects.create_user("profile", password="x")
        client = Client(enforce_csrf_checks=False)
        client.force_login(user)

        commits = [0]
        real_commit = connection.commit

        def commit() -> None:
            # An atomic block's exit calls commit(), which calls the backend's
            # _commit: counted once, here. A write in autocommit mode commits
            # in the driver, without either (Counting counts those).
            commits[0] += 1
            real_commit()

        connection.commit = commit  # type: ignore[method-assign]

        def iteration(broker: str) -> None:
            start, end = BROKERS[broker]
            response = client.post(start, b"{}", content_type="application/json")
            if response.status_code not in (200, 201):
                raise RuntimeError(f"{broker} start: {response.status_code} {response.content!r}")
            session_id = json.loads(response.content)["session_id"]
            response = client.delete(end.format(session_id))
            if response.status_code not in (200, 204):
                raise RuntimeError(f"{broker} end: {response.status_code} {response.content!r}")

        def run(broker: str, count: int) -> tuple[float, float, Counter[str], int]:
            counting = Counting(connection)
            commits[0] = 0
            with connection.execute_wrapper(counting):
                began, began_wall = time.process_time(), time.perf_counter()
                for _ in range(count):
                    iteration(broker)
                spent, waited = time.process_time() - began, time.perf_counter() - began_wall
            per = 1e6 / count
            return spent * per, waited * per, counting.kinds, commits[0] + counting.autocommitted

        brokers = ("django_avaturn", "floor")
        for broker in brokers:
            run(broker, 20)  # warm-up: imports, connections, caches
        cpu: dict[str, list[float]] = {broker: [] for broker in brokers}
        wall: dict[str, list[float]] = {broker: [] for broker in brokers}
        kinds: dict[str, Counter[str]] = {}
        commit_counts: dict[str, int] = {}
        for index in range(args.rounds):
            if args.db == "postgres":
                vacuum_postgres(os.environ["BENCH_PG_NAME"])
            # Each broker first in every other round: neither always runs on a warmer cache.
            for broker in brokers if index % 2 == 0 else brokers[::-1]:
                micros, wall_micros, kinds[broker], commit_counts[broker] = run(broker, args.n)
                cpu[broker].append(micros)
                wall[broker].append(wall_micros)
        result = _summary(args, brokers, cpu, wall, kinds, commit_counts)
        print(json.dumps(result) if args.json else json.dumps(result, indent=2))
        if args.profile:
            profiler = cProfile.Profile()
            profiler.enable()
            for _ in range(args.n):
                iteration("django_avaturn")
            profiler.disable()
            out = io.StringIO()
            stats = pstats.Stats(profiler, stream=out)
            stats.sort_stats("cumulative").print_stats(args.top)
            print(out.getvalue())
        connection.close()
        if args.db == "postgres":
            from benchmarks.dbsetup import recreate_postgres

            recreate_postgres(os.environ["BENCH_PG_NAME"])


if __name__ == "__main__":
    main()
