"""Run every benchmark and write RESULTS.md and results.png: ``python -m benchmarks``.

``--quick`` (about 5 minutes) and ``--smoke`` (under a minute, for CI: checks
the benchmarks still run, writes to ``benchmarks/.work/``) shrink the run.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from dataclasses import astuple, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.dbsetup import vacuum_postgres
from benchmarks.load import BROKERS, fake_round_trip_ms, run_load
from benchmarks.procs import (
    PYTHON,
    ROOT,
    WORK,
    FakeControl,
    Latency,
    bench_env,
    loadavg,
    start_fake,
)
from benchmarks.report import write_goals, write_plot, write_results
from benchmarks.servers import SERVERS, db_env, start_server

OUT = ROOT / "benchmarks"


@dataclass
class Plan:
    name: str
    duration: float
    clients: tuple[int, ...]
    postgres_load: bool
    slow_upstream: bool
    expiry_rows: tuple[int, ...]
    expiry_dbs: tuple[str, ...]
    naive_rows: int
    naive_cap: float
    upstream_rows: int
    admin_sessions: int
    # Rounds of the goal configurations (see goal_runs); 0 skips them.
    goal_rounds: int = 0
    out_dir: Path = field(default=OUT)


PLANS = {
    "full": Plan("full", 5.0, (1, 10, 50), True, True, (100_000, 1_000_000), ("sqlite", "postgres"),
                 100_000, 15.0, 2_000, 200, goal_rounds=5),
    "quick": Plan("quick", 3.0, (1, 10, 50), True, True, (100_000,), ("sqlite", "postgres"),
                  100_000, 10.0, 1_000, 200, goal_rounds=3),
    "smoke": Plan("smoke", 1.0, (1, 5), False, False, (2_000,), ("sqlite",), 2_000, 5.0, 100, 20,
                  goal_rounds=2, out_dir=WORK / "smoke"),
}  # fmt: skip


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def setup_db(db: str, users: int, env: dict[str, str]) -> None:
    if db == "sqlite":
        Path(env["EXAMPLE_DB_PATH"]).unlink(missing_ok=True)
    subprocess.run(
        [PYTHON, "-m", "benchmarks.dbsetup", "--users", str(users)],
        cwd=ROOT,
        env=bench_env(env),
        check=True,
    )


# --------------------------------------------------------------------------- load


@dataclass(frozen=True)
class LoadConfig:
    """One server process: which server, database and brokers, and any extra settings."""

    server: str
    db: str
    brokers: tuple[str, ...]
    extra_env: tuple[tuple[str, str], ...] = ()
    variant: str = ""  # a suffix for the server's name in the results


def measure(
    configs: list[LoadConfig],
    *,
    latency: Latency,
    clients: tuple[int, ...],
    duration: float,
    label: str = "load",
    rounds: int = 1,
) -> list[dict[str, Any]]:
    """Every broker of every config at every client count, against one fake.

    With ``rounds`` > 1 the whole set runs that many times in the same server
    processes, so drift on the machine falls on every broker alike; each
    result says its round.
    """
    results: list[dict[str, Any]] = []
    prepared: set[str] = set()
    with start_fake(latency) as fake:
        control = FakeControl(fake.port)
        for config in configs:
            if config.db not in prepared:
                setup_db(config.db, max(clients), db_env(config.db))
                prepared.add(config.db)
            server = config.server + config.variant
            with start_server(
                config.server,
                db=config.db,
                fake_port=fake.port,
                extra_env=dict(config.extra_env),
            ) as proc:
                # The brokers back to back at each count: runs compared with
                # each other are seconds apart, not minutes.
                for round_ in range(rounds):
                    for count in clients:
                        for broker in config.brokers:
                            if config.db == "postgres":
                                vacuum_postgres(db_env("postgres")["BENCH_PG_NAME"])
                            log(f"{label}: {server} {config.db} {broker} x{count}")
                            result = run_load(
                                port=proc.port,
                                server_pgid=proc.popen.pid,
                                fake_pgid=fake.popen.pid,
                                fake=control,
                                latency=latency,
                                server=server,
                                broker=broker,
                                db=config.db,
                                clients=count,
                                duration=duration,
                            )
                            results.append(result.summary())
                            if rounds > 1:
                                results[-1]["round"] = round_ + 1
                            log("  " + json.dumps(results[-1]))
        control.close()
    return results


def harness_run(latency: Latency) -> dict[str, Any]:
    """The fake's own round trip: the part of every added latency no broker can remove."""
    with start_fake(latency) as fake:
        round_trip = fake_round_trip_ms(fake.port, latency)
    log(f"harness: a bare call to the fake adds {round_trip:.2f} ms")
    return {"fake_round_trip_ms": round(round_trip, 2)}


# django_avaturn and the floor beside it: the goals' brokers, and PostgreSQL's (the
# floor's session and user reads go to PostgreSQL too, so it shows what this database
# costs any broker here).
AGAINST_FLOOR = ("django_avaturn", "floor")
# uvicorn on PostgreSQL with Django's connection pool, as Django's documentation
# advises under ASGI (where a persistent connection would stay with its request's
# thread): 20 per worker, so 4 workers stay under PostgreSQL's 100 connections.
UVICORN_POOLED = LoadConfig(
    "uvicorn", "postgres", AGAINST_FLOOR, (("BENCH_PG_POOL", "20"),), "+pool"
)


def load_runs(plan: Plan, latency: Latency) -> list[dict[str, Any]]:
    configs = [LoadConfig(server, "sqlite", tuple(BROKERS)) for server in SERVERS]
    if plan.postgres_load:
        configs += [LoadConfig(server, "postgres", AGAINST_FLOOR) for server in SERVERS]
        configs.append(UVICORN_POOLED)
    return measure(configs, latency=latency, clients=plan.clients, duration=plan.duration)


def goal_runs(plan: Plan, latency: Latency) -> list[dict[str, Any]]:
    """The goals' configurations, ``plan.goal_rounds`` times over, with the floor beside.

    Every goal is a ratio to the floor broker measured in these same rounds
    (the goals in ``report``), on SQLite and PostgreSQL under both servers, and under
    uvicorn on PostgreSQL both with a connection per request and pooled.

    "% of ideal" moves by several points from one run to the next on this
    machine, enough to flip a goal either way; the goals are judged on the
    median of these rounds (RESULTS.md gives the range).
    """
    if not plan.goal_rounds:
        return []
    dbs = ("sqlite", "postgres") if plan.postgres_load else ("sqlite",)
    configs = [LoadConfig(server, db, AGAINST_FLOOR) for db in dbs for server in SERVERS]
    if plan.postgres_load:
        configs.append(UVICORN_POOLED)
    return measure(
        configs,
        latency=latency,
        clients=(min(plan.clients), max(plan.clients)),
        duration=plan.duration,
        label="goals",
        rounds=plan.goal_rounds,
    )


# The slow-upstream runs: the same concurrency at a third of the request rate.
SLOW_FACTOR = 3


def slow_upstream_runs(plan: Plan, latency: Latency) -> list[dict[str, Any]]:
    """The most clients again, against upstreams ``SLOW_FACTOR`` times slower.

    Same concurrency, a third of the requests per second: if these reach the
    goals where the normal runs do not, CPU per request is the limit, not the
    number of requests in flight.
    """
    return measure(
        [LoadConfig(server, "sqlite", ("django_avaturn", "floor")) for server in SERVERS],
        latency=Latency(*(SLOW_FACTOR * value for value in astuple(latency))),
        clients=(max(plan.clients),),
        duration=plan.duration * SLOW_FACTOR,
        label=f"load, upstreams x{SLOW_FACTOR}",
    )


# --------------------------------------------------------------------------- expiry + admin


def ops(args: list[str], env: dict[str, str]) -> dict[str, Any]:
    done = subprocess.run(
        [PYTHON, "-m", "benchmarks.ops", *args],
        cwd=ROOT,
        env=bench_env(env),
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def expiry_db_env(db: str, fake_port: int) -> dict[str, str]:
    env = {"AVATURN_FAKE_PORT": str(fake_port)}
    if db == "postgres":
        return {**env, "BENCH_DB": "postgres", "BENCH_PG_NAME": "avaturn_bench_expiry"}
    return {**env, "BENCH_DB": "sqlite", "EXAMPLE_DB_PATH": str(WORK / "expiry.sqlite3")}


def expiry_runs(plan: Plan, latency: Latency) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    # Terminations answer after the configured latency; nothing else is slow.
    with start_fake(Latency(0.0, 0.0, latency.terminate)) as fake:
        for db in plan.expiry_dbs:
            env = expiry_db_env(db, fake.port)
            setup_db(db, 0, env)
            cases: list[tuple[int, list[str]]] = [
                (plan.upstream_rows, ["--mode", "app"]),
                (plan.naive_rows, ["--mode", "naive", "--no-upstream",
                                   "--time-cap", str(plan.naive_cap)]),
            ]  # fmt: skip
            cases += [(rows, ["--mode", "app", "--no-upstream"]) for rows in plan.expiry_rows]
            for rows, args in cases:
                log(f"expiry: {db} {rows} rows {' '.join(args)}")
                seeded = ops(["seed", "--rows", str(rows)], env)
                result = {"db": db, "seed_s": seeded["seed_s"], **ops(["expire", *args], env)}
                if result["upstream"]:
                    result["ideal_s"] = round(
                        -(-rows // 8) * latency.terminate, 2
                    )  # TERMINATE_CONCURRENCY 8
                results.append(result)
                log("  " + json.dumps(result))
    return results


def admin_runs(plan: Plan, latency: Latency) -> list[dict[str, Any]]:
    results = []
    with start_fake(Latency(0.0, 0.0, latency.terminate)) as fake:
        env = expiry_db_env("sqlite", fake.port)
        setup_db("sqlite", 0, env)
        log(f"admin: terminate {plan.admin_sessions} sessions")
        result = ops(["admin", "--sessions", str(plan.admin_sessions)], env)
        n, c = result["sessions"], result["concurrency"]
        result["sequential_ideal_s"] = round(n * latency.terminate, 2)
        result["concurrent_ideal_s"] = round(-(-n // c) * latency.terminate, 2)
        results.append(result)
        log("  " + json.dumps(result))
    return results


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="a shorter run (about 5 minutes)")
    size.add_argument("--smoke", action="store_true", help="seconds; for CI, writes to .work/")
    parser.add_argument(
        "--only",
        choices=("load", "goals", "expiry", "admin"),
        action="append",
        help="repeatable; goals: only the goals' repeated rounds (load includes them)",
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="re-render RESULTS.md and the plot from the plan's last results JSON",
    )
    parser.add_argument("--latency-openai", type=float, default=0.150, metavar="S")
    parser.add_argument("--latency-create", type=float, default=0.250, metavar="S")
    parser.add_argument("--latency-terminate", type=float, default=0.100, metavar="S")
    args = parser.parse_args(argv)
    plan = PLANS["smoke" if args.smoke else "quick" if args.quick else "full"]
    latency = Latency(args.latency_openai, args.latency_create, args.latency_terminate)
    parts = set(args.only or ("load", "expiry", "admin"))
    if "load" in parts:
        parts.add("goals")
    if args.report_only:
        saved = json.loads((WORK / f"results-{plan.name}.json").read_text())
        if not saved["load"]:
            write_goals(saved, plan.out_dir / "RESULTS.md")
            return
        write_results(saved, plan.out_dir / "RESULTS.md")
        write_plot(saved, plan.out_dir / "results.png")
        return
    WORK.mkdir(parents=True, exist_ok=True)
    plan.out_dir.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    data: dict[str, Any] = {
        "plan": plan.name,
        "duration_s": plan.duration,
        "latency": latency.__dict__,
        "machine": {
            "python": platform.python_version(),
            "cpus": __import__("os").cpu_count(),
            "loadavg_at_start": loadavg(),
        },
        "parts": sorted(parts),
        "harness": harness_run(latency) if "load" in parts else {},
        "load": load_runs(plan, latency) if "load" in parts else [],
        "slow_load": slow_upstream_runs(plan, latency)
        if "load" in parts and plan.slow_upstream
        else [],
        "goal_runs": goal_runs(plan, latency) if "goals" in parts else [],
        "expiry": expiry_runs(plan, latency) if "expiry" in parts else [],
        "admin": admin_runs(plan, latency) if "admin" in parts else [],
    }
    data["machine"]["loadavg_at_end"] = loadavg()
    saved_path = WORK / f"results-{plan.name}.json"
    if args.only and saved_path.exists():
        # Re-running one part keeps the others from the plan's last run.
        saved = json.loads(saved_path.read_text())
        for part in {"load", "expiry", "admin"} - parts:
            data[part] = saved.get(part, [])
        if "load" not in parts:
            data["slow_load"] = saved.get("slow_load", [])
            data["harness"] = saved.get("harness", {})
        if "goals" not in parts:
            data["goal_runs"] = saved.get("goal_runs", [])
    data["wall_s"] = round(time.perf_counter() - began, 1)
    (WORK / f"results-{plan.name}.json").write_text(json.dumps(data, indent=2))
    if data["load"]:
        write_results(data, plan.out_dir / "RESULTS.md")
        write_plot(data, plan.out_dir / "results.png")
    else:
        # Only the goals' rounds ran (and no earlier load run was saved here).
        write_goals(data, plan.out_dir / "RESULTS.md")
    log(f"done in {data['wall_s']} s: {plan.out_dir / 'RESULTS.md'}")
    failed = [r for r in data["load"] + data["slow_load"] + data["goal_runs"] if r["errors"]] + [
        r for r in data["expiry"] if not r["complete"] and r["mode"] == "app"
    ]
    if failed:
        log(f"{len(failed)} runs had errors or left rows behind")
        sys.exit(1)
