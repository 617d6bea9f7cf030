"""RESULTS.md and results.png from one run's data."""

from __future__ import annotations

import operator
import statistics
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Measured while fixing, before the fix landed (see the commits named).
BEFORE_AFTER = "\n".join(
    [
        "| What | Before | After | Commit |",
        "| --- | --- | --- | --- |",
        "| New upstream connections per start+end, gunicorn, PostgreSQL, 50 clients "
        '| 0.45 (urllib3 "pool is full, discarding connection": requests keeps 10 '
        "per host, a worker has 32 threads) | 0.003 | `Avaturn client: keep up to "
        "100 idle connections` |",
        "| Expiry of 300,000 stale rows, SQLite, no upstream | 93 s (16 s for "
        "100,000: quadratic, a pk-IN-subquery re-scanned every candidate per batch) "
        "| 39 s, linear | `Bulk termination: page a plain queryset directly` |",
        "| uvicorn + Django's PostgreSQL pool, % of ideal at 10 / 50 clients "
        "| 45% / 12% (the pool's default `max_size` 4: a start holds its connection "
        "while it waits on the upstreams, so requests queue for one) "
        "| see `uvicorn+pool` above (`max_size` 20 per worker, 4 workers) "
        "| `benchmarks/settings.py` |",
        "| Added latency p50, gunicorn, SQLite, 1 client "
        "| 47.5 ms (rollback journal: an fsync per commit, four commits per start+end) "
        "| 9.4 ms | `SQLite: WAL with synchronous=NORMAL in the example project` |",
        "| gunicorn, SQLite, 50 clients, % of ideal | 25% | 78% "
        "| the same, plus `Fewer queries and less work per start and end` (16 to 13) |",
        "| Added latency p50, uvicorn, 1 client (a plain GET: 60 ms against 8 ms) "
        "| 54 ms (`uvicorn --workers 2`: its process supervisor adds about 50 ms to "
        "every request) | see the uvicorn rows (two `UvicornWorker`s under gunicorn) "
        "| `benchmarks/servers.py` |",
        "| Requests served per gunicorn worker, 4 workers, 50 kept-alive clients "
        "| 864 / 102 / 0 / 0 (one shared listening socket: the worker that wins the "
        "accept race takes most of the clients connecting at once, and their "
        "kept-alive connections stay with it, so one GIL did 89% of the work) "
        "| 11 / 10 / 10 / 9 of 40 connections (`--reuse-port`: a socket per worker, "
        "the kernel spreads connections) | `Benchmarks: a listening socket per worker` |",
        "| uvicorn, SQLite, 50 clients, % of ideal (2 workers) | 56% (uvicorn's "
        "pure-Python h11 parser and asyncio's loop) | 75% (uvloop and httptools, "
        "`uvicorn[standard]`, as ASGI runs in production) "
        "| `Benchmarks: uvicorn on uvloop and httptools` |",
        "| A start's slot reservation on SQLite, in one process (best of 7 x 100) "
        "| 1.10 ms (kill switch loaded as a model; the user's live sessions loaded as "
        "models to count them) | 0.81 ms (both read as values; the rows only when some "
        "are replaced) | `Slot reservation: insert first, read keys only` |",
        "| gunicorn, SQLite, 50 clients, % of ideal (with `--reuse-port`) "
        "| 63% (2 workers of 32 threads: two GILs share 1.6 s of CPU a second, and "
        "a worker given more than 32 of the clients queues them) | 79% (4 workers of "
        "64 threads) | `Benchmarks: a listening socket per worker` |",
        "| The harness, not the server: % of ideal at 50 clients on SQLite, median of 5 "
        "rounds, django_avaturn / floor (two full runs an hour apart) | gunicorn 77% / 86%, "
        "uvicorn 72% / 83% (every iteration started before the deadline, divided by the "
        "time until the last client finished: a 5 s run took 5.5 s, and all 50 clients "
        "started at one barrier) | gunicorn 91% / 93%, uvicorn 78% / 86% (the iterations "
        "inside a window that opens after the clients settle, divided by its length; "
        "88% / 95% and 74% / 86% in the run before) "
        "| `Benchmarks: count throughput in a window after the clients settle` |",
        "",
    ]
)


# Tried against the numbers and not kept: each was a temporary switch, run in
# interleaved pairs (without, with) of gunicorn or uvicorn, SQLite, 50 clients.
TRIED = "\n".join(
    [
        "| What | Why it might have helped | % of ideal without / with, pair by pair | Outcome |",
        "| --- | --- | --- | --- |",
        "| Threads of a process queue for SQLite's write lock on a Python lock before "
        "`BEGIN IMMEDIATE` | An instrumented run showed reservations waiting 29 ms on "
        "average in `BEGIN IMMEDIATE` (44 s over 1,511 transactions, 50 clients): SQLite's "
        "busy handler polls with growing sleeps instead of waking when the lock frees "
        "| gunicorn, 20 s runs: 86.6 / 87.4, 89.6 / 88.9, 85.9 / 87.5, 88.4 / 88.1, "
        "80.9 / 84.4 "
        "(means 86.3 / 87.3) | Not kept: within the noise. The other processes' writers "
        "still poll, and the wait moves to the Python lock |",
        "| `sys.setswitchinterval(0.001)` in each worker (default 5 ms) | A thread "
        "returning from SQLite with the write lock held may wait up to the switch "
        "interval for the GIL | gunicorn, 15 s runs: 85.4 / 85.4, 84.3 / 84.6, 88.5 / 84.2 "
        "| Not kept: no gain |",
        "| Three middleware instead of the example's seven (sessions, CSRF, "
        "authentication) | Under ASGI each sync middleware method runs on a thread "
        "hop of its own (`MiddlewareMixin.__acall__`) | uvicorn, 15 s runs: 73.9 / 70.4, "
        "72.6 / 76.3; gunicorn: 82.6 / 84.5, 90.0 / 88.8 "
        "| Not kept: within the noise, and a site's middleware is the site's |",
        "| PostgreSQL: the kill switch's shared advisory lock taken by the reservation's "
        "INSERT (`RETURNING id, pg_advisory_xact_lock_shared(...)`, still after the row "
        "and before the switch's read) instead of a `SELECT` of its own "
        "| One round trip fewer per start (12 statements to 11) "
        "| In process (`benchmarks.profile --db postgres`, paired CPU ratio to the floor, "
        "15 rounds of 50): 1.67 / 1.67, 1.69 / 1.72 "
        "| Not kept on its own: no gain in the web process's CPU. Taken since in one "
        "statement with the user's lock and the INSERT, for the round trips (\"Start and "
        'end path, in process") |',
        "",
    ]
)


# python -m benchmarks.profile, django_avaturn and the floor in the same process
# and rounds (SQLite unless the row says PostgreSQL).
IN_PROCESS = "\n".join(
    [
        "`python -m benchmarks.profile`: `POST sessions/` + `DELETE sessions/<id>/` through "
        "Django's test client in one process against the fake answering at once, "
        "django_avaturn and the floor in the same rounds (CPU of that process only). Of "
        "django_avaturn's statements, 4 are the session and user reads the floor makes "
        "too. Per start+end in one process (ORM statement against the same statement "
        "through a cursor): a conditional UPDATE 278 µs against 44 µs, the reservation's "
        "read of the user's rows 399 µs against 15 µs; a thread hop (`sync_to_async`) "
        "55 µs.",
        "",
        "The first two rows: median of 5 rounds of 100, the ratio of the two brokers' "
        "medians. From `benchmarks.profile: each round's own ratio` on: 15 rounds of 50, "
        "the brokers' order alternating, and the paired ratio is the median of each "
        "round's own ratio (the machine's speed moved the ratio of medians by 0.2 to 0.3 "
        "between invocations of the same code); each row's code measured twice, "
        "interleaved with the others', CPU µs from the first.",
        "",
        "| Change | Statements | Commits | CPU µs, django_avaturn / floor | Ratio "
        "| Paired ratio | Commit |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
        "| Before (ddb5d0f) | 13 | 5 | 13,145 / 7,265 | 1.81 | - | - |",
        "| The hottest statements written once per shape, not built by the ORM per call "
        "(`sessions/statements.py`: activation, claim, a single end's finish, the "
        "reservation's read) | 13 | 5 | 11,959 / 7,110 | 1.68 | - | `Start and end: the "
        "hottest statements written once per shape` |",
        "| Before the changes below, measured again (2ec2a0d): the harness had counted an "
        "atomic block's commit twice (`commit()` calls the backend's `_commit()`, both "
        "wrapped) | 13 | 4 | 8,143 / 4,588 "
        "| 1.77 | 1.88, 1.90 | `benchmarks.profile: count an atomic block's commit once` |",
        "| The reservation's reads of the user, the kill switch and the user's rows in one "
        "statement; its INSERT (and PostgreSQL's lock of the user) written once, with "
        "`Model.save`'s signals and defaults | 11 | 4 | 7,823 / 4,762 | 1.64 | 1.64, 1.67 "
        "| `Slot reservation: one read for the user, the kill switch and the user's rows` |",
        "| The caller's own row (end, detail, heartbeat) read by a statement written once, "
        "not `get_object_or_404` | 11 | 4 | 7,779 / 4,942 | 1.57 | 1.60, 1.69 "
        "| `API: the caller's own row read by a statement written once` |",
        "| DRF's content negotiation answered at once where its answer is fixed (167 µs "
        "to 16 µs for the two requests); the start's answer written without building its "
        "serializer (about 90 µs); `EndReason.values` a set built once | 11 | 4 "
        "| 7,633 / 5,174 | 1.48 | 1.51, 1.53 | `API: content negotiation answered at once "
        "where its answer is fixed` |",
        "| Before the change below, measured again (b8c088c) | 11 | 4 | 7,240 / 5,088 "
        "| 1.42 | 1.42, 1.44 | - |",
        "| The realtime session sent as the client secret request's JSON (the SDK's "
        "`extra_body`), not as its declared parameter, which the SDK walks key by key "
        "against its request types (no aliases or formats there: the walk changed "
        "nothing) | 11 | 4 | 7,342 / 5,302 | 1.38 | 1.39, 1.38 | `OpenAI mint: send the "
        "realtime session as the request's JSON, without the SDK's type walk` |",
        "| PostgreSQL, before the three changes above and after them (`--db postgres`, "
        "once each; `BEGIN` and `COMMIT` are not counted there) | 13, 12 | 4, 4 "
        "| 10,670 / 5,518, 8,455 / 4,909 | 1.93, 1.72 | 1.91, 1.75 | the three above |",
        "| Before the change below, measured again (def0532) on a busier machine (the "
        "CPU probe read 14.7 ms against about 8 for the rows above) | 11 | 4 "
        "| 10,199 / 6,670 | 1.53 | 1.41, 1.39 | - |",
        "| A Stop finds and claims the caller's row in one `UPDATE ... RETURNING` "
        "(PostgreSQL, SQLite from 3.35), not a read and then a claim | 10 | 4 "
        "| 10,604 / 7,819 | 1.36 | 1.31, 1.38 | `API: a Stop finds and claims the caller's "
        "row in one statement` |",
        "| PostgreSQL, before the change above and after it (`--db postgres`, measured "
        "the same way) | 12, 11 | 4, 4 | 11,235 / 6,788, 13,160 / 8,056 | 1.66, 1.63 "
        "| 1.59, 1.62; 1.49, 1.61 | the one above |",
        "| PostgreSQL, before (c38992c) and after two changes, measured the same way on "
        "a busy machine (the CPU probe read 11 to 16 ms): a start's reservation and an "
        "end's claim and finish committed without waiting for the disk (reverted since, "
        "below), and the reservation takes the user's lock, inserts its row and takes "
        "its advisory locks in one statement (kept; see below). Wall time django_avaturn "
        "adds to the floor per start+end, paired: 7,187 and 6,551 µs before, 4,351 and "
        "5,752 after "
        "| 11, 9 | 4, 4 (1 waited for the disk) | 9,678 / 5,512, 7,098 / 4,696 "
        "| 1.76, 1.51 | 1.67, 1.55; 1.51, 1.37 | `PostgreSQL: the reservation, an end's "
        "claim and its finish commit asynchronously` (reverted by `PostgreSQL: every "
        "commit of a start and an end waits for the disk again`), `PostgreSQL "
        "reservation: the user's lock, the INSERT and the advisory locks in one "
        "statement` |",
        "",
        "What remains above the floor, per start+end (one process, wrapped timers, thread "
        "CPU; 5,926 µs against the floor's 4,028 in that run): the database work about "
        "0.95 ms (the reservation 0.41 ms: `BEGIN`, the INSERT, one read, `COMMIT`; the "
        "activation 0.16; the end's read 0.10, claim 0.10 and finish 0.15; the read and "
        "the claim are one statement since, the row above), most of it "
        "SQLite executing and committing the writes; DRF about 0.45 ms for the two "
        "requests (the start's body validated by its serializer 0.14, parsed 0.06, DRF's "
        "Request 0.06, the answer written and rendered 0.05, permissions, throttles and "
        "headers 0.04); the plan and the upstream bounds from the settings 0.09 ms. "
        "Logging formats nothing it does not emit (`logger.info` with `%s` arguments, "
        "below the example's level), and the two signals with no receiver cost 7 µs. The "
        "upstream clients cost what the floor's do (create 491 against 502 µs, terminate "
        "442 against 440 µs, mint 886 against 882 µs with the same session; with the "
        "example's own, larger session the SDK's walk of it cost more, the row above).",
        "",
        "Where the added latency goes on PostgreSQL (`--db postgres`, 9 rounds of 40, "
        "twice, on f9dedd4; `added_wall_us_paired` and `added_cpu_us_paired`): "
        "django_avaturn adds 4.9 to 5.0 ms of wall time per start+end to the floor's, of "
        "which 2.3 to 2.4 ms is this process's CPU and the rest waiting on the database. "
        "About 1.1 ms of that wait is the WAL flush of its four commits (the reservation, "
        "the activation, the end's claim and its finish): the same loop with "
        "`synchronous_commit = off` took 1.06 ms less per start+end, and the floor's "
        "(which commits nothing) the same. Every one of them waits for that flush: "
        "each is committed before what it guards or records (the upstream calls, the "
        "answer), and a commit a crash undoes leaves a state the expiry command does not "
        "put right (a Stop acknowledged whose claim of a starting row is lost lets the "
        "start go live; a finish lost is finished again, and `session_ended` sent twice; "
        "a reservation lost with its sequence's advance lets another start take its "
        "key). Turning `synchronous_commit` off for the reservation, the claim and the "
        "finish was tried and reverted (the row above; `tests/test_durable_commits.py`). "
        "Each "
        "statement's own wall time in that loop: the three autocommitted UPDATEs 570 to "
        "620 µs each, flush included; the reservation's lock of the user 290 µs, INSERT "
        "260, advisory lock 130 and read 330; a `SELECT 1` round trip is about 100 µs "
        "here. Server-side prepared statements would not shorten them: replayed through "
        "a psycopg server-side cursor with `prepare=True`, the reservation's reads took "
        "what they take through Django's client-side cursor (264 against 253 µs, 234 "
        "against 235, 100 against 99). Since 1f3570c the reservation's lock of the user, "
        "INSERT and advisory locks are one statement (a CTE that locks the user row, the "
        "INSERT, the lock functions in its outer SELECT; one statement, so it runs under "
        "`server_side_binding` too): two round trips fewer. Reservations alone, "
        "interleaved in one process on the busy machine of the row above: 2,476 µs of "
        "wall time against 3,028. The read stays a statement of its own: it must take "
        "its snapshot once every lock is held, to see every start, flip of the kill "
        "switch and deactivation that held them before it.",
        "",
        "On PostgreSQL with a new connection per request (uvicorn with `CONN_MAX_AGE = 0`, "
        "the `uvicorn` rows), each backend starts with cold catalog caches, and every "
        "table, index and function a statement touches is loaded on first use. Backend "
        "CPU of a start's statements and an end's read of its row on a fresh connection, "
        "then the same statements again on it (`/proc/<pid>/schedstat`, median of 40 "
        "connections): 1.73 ms against "
        "0.64 ms warm, the reservation's read 0.74 against 0.20 and the INSERT 0.49 "
        "against 0.13; the session and user reads that the floor makes too, 1.01 against "
        "0.15. A start+end with a connection per request cost the backends 15.5 ms against "
        "the floor's 10.3 ms (the benchmark's in-process loop closing the connection after "
        "each request), and dropping the two indexes Django adds beside ours (the user "
        "foreign key's, the unique `session_id`'s `LIKE` index) changed nothing (15.6 "
        "ms). A pool (the `uvicorn+pool` rows) keeps the caches warm.",
        "",
    ]
)

ASYNC = "\n".join(
    [
        "Under uvicorn Django runs a sync view on a thread of its own: one hop "
        "(`sync_to_async`) per request, 55 µs of CPU here (measured in one process, "
        "3,000 hops). An async start view would still run its database work on threads: "
        "the session and user reads of authentication (DRF's are sync), the reservation "
        "and the activation (2 hops) for a start, the read, claim and finish for an end "
        "(at least 2), and the Avaturn client is `requests` (a hop per call, or a new "
        "async client). So it would make more hops than the sync view's one per request, "
        "not fewer. The uvicorn floor spends about 1.8 times the gunicorn floor's server CPU "
        "per start+end with no hop of django_avaturn's at all: that cost is the ASGI "
        "server, a thread per request and a database connection per request "
        "(`CONN_MAX_AGE = 0`; Django's pool on PostgreSQL, the `uvicorn+pool` rows), which "
        "an async view does not remove. At most 0.1 ms of a start+end's 30 to 50 ms of "
        "server CPU could be saved, within the rounds' noise: not built.",
        "",
    ]
)


def _f(value: Any, digits: int = 0) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


_CPU_KEYS = ("server", "fake", "clients", "database")


def _load_table(rows: list[dict[str, Any]]) -> list[str]:
    out = [
        "| Server | DB | Broker | Clients | Starts+ends/s (ideal) | % of ideal "
        "| Added p50 / p99 ms | Upstream conns opened / closed per iteration "
        "| CPU ms / iteration: server, fake, clients (, database) | Errors | Load avg "
        "| Probe ms |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: |",
    ]
    for r in rows:
        cpu = r["cpu_ms_per_iteration"]
        out.append(
            f"| {r['server']} | {r['db']} | {r['broker']} | {r['clients']} "
            f"| {r['rate_per_s']:.1f} ({r['ideal_per_s']:.0f}) "
            f"| **{100 * r['fraction_of_ideal']:.0f}%** "
            f"| {_f(r['added_p50_ms'], 1)} / {_f(r['added_p99_ms'], 1)} "
            f"| {r['new_connections_per_iteration']:.2f} / "
            f"{_f(r.get('closed_connections_per_iteration'), 2)} "
            f"| {', '.join(_f(cpu[k], 1) for k in _CPU_KEYS if k in cpu)} "
            f"| {r['errors']} | {r['loadavg_before']:.1f} | {_f(r.get('probe_ms'), 1)} |"
        )
    return out


def _slow_section(data: dict[str, Any]) -> list[str]:
    rows = data.get("slow_load", [])
    if not rows:
        return []
    return [
        f"### The same clients, upstreams {_slowness(data, rows[0])} times slower",
        "",
        "The same number of clients in flight at a third of the requests per second "
        "(each upstream call takes three times as long). Where these rows reach the goals "
        "and the rows above do not, the limit is CPU per request, not concurrency.",
        "",
        *_load_table(rows),
        "",
    ]


def _rounds_section(data: dict[str, Any]) -> list[str]:
    runs = data.get("goal_runs", [])
    if not runs:
        return []
    groups: dict[tuple[str, str, str, int], list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault(_key(r), []).append(r)
    rounds = max(r["round"] for r in runs)
    out = [
        "### The goals' configurations, repeated",
        "",
        f'Single runs move by several points of "% of ideal" on this machine, enough to '
        f"flip a goal either way. So the goals above are judged on the median of {rounds} "
        "rounds of these configurations, each round running django_avaturn and the floor "
        "back to back in the same server processes.",
        "",
        "| Server | DB | Broker | Clients | % of ideal, run by run | Median "
        "| Added p50 ms, run by run | Median | Server CPU / iteration, median "
        "| Probe ms, median |",
        "| --- | --- | --- | ---: | --- | ---: | --- | ---: | ---: | ---: |",
    ]
    for (server, db, broker, clients), rows in groups.items():
        ideal = ", ".join(f"{100 * r['fraction_of_ideal']:.0f}" for r in rows)
        p50 = ", ".join(f"{r['added_p50_ms']:.1f}" for r in rows)
        out.append(
            f"| {server} | {db} | {broker} | {clients} | {ideal} | **{_pct(rows)}** "
            f"| {p50} | **{_median(rows, 'added_p50_ms'):.1f}** "
            f"| {_cpu(rows)} | {_median(rows, 'probe_ms'):.1f} |"
        )
    return [*out, ""]


def _expiry_table(rows: list[dict[str, Any]]) -> list[str]:
    out = [
        "| DB | Mode | Upstream | Rows | Ended | Wall s | Rows/s | Queries (batches) "
        "| Peak RSS MB (before) |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        mode = "expire_sessions()" if r["mode"] == "app" else "naive row-by-row loop"
        upstream = "fake, 100 ms/terminate" if r["upstream"] else "no (`--no-upstream`)"
        batches = f"{r['queries']} ({r['batches']})" if r["mode"] == "app" else str(r["queries"])
        wall = f"{r['wall_s']:.1f}"
        if r.get("ideal_s"):
            wall += f" (ideal {r['ideal_s']:.1f})"
        if r["mode"] == "naive" and not r["complete"]:
            wall += f" (stopped; all rows ≈ {r['rows'] / r['rows_per_s']:.0f} s)"
        out.append(
            f"| {r['db']} | {mode} | {upstream} | {r['rows']:,} | {r['ended']:,} | {wall} "
            f"| {r['rows_per_s']:,.0f} | {batches} "
            f"| {r['peak_rss_mb']:.0f} ({r['rss_before_mb']:.0f}) |"
        )
    return out


def _goal(ok: bool) -> str:
    return "met" if ok else "**not met**"


def _judged_rows(
    data: dict[str, Any], server: str, db: str, broker: str, clients: int
) -> list[dict[str, Any]]:
    """The runs a goal is judged on: the repeated rounds where there are some, else the one run."""
    key = (server, db, broker, clients)
    rounds = [r for r in data.get("goal_runs", []) if _key(r) == key]
    if rounds:
        return rounds
    row = _row(data, *key)
    return [] if row is None else [row]


def _said(value: float, key: str) -> str:
    return f"{100 * value:.0f}%" if key == "fraction_of_ideal" else f"{value:.1f} ms"


# One figure of one load run (a row of the results).
Figure = Callable[[dict[str, Any]], float]


def _median_of(rows: list[dict[str, Any]], figure: Figure) -> float:
    """The median over ``rows`` (load runs) of one figure of each."""
    return float(statistics.median(figure(r) for r in rows))


def _median(rows: list[dict[str, Any]], key: str) -> float:
    return _median_of(rows, operator.itemgetter(key))


def _about(rows: list[dict[str, Any]], floor: list[dict[str, Any]], key: str) -> str:
    """Where a goal's figure comes from, and the floor broker's beside it."""
    parts = []
    if len(rows) > 1:
        values = sorted(r[key] for r in rows)
        parts.append(
            f"median of {len(rows)} runs, {_said(values[0], key)} to {_said(values[-1], key)}"
        )
    if floor:
        parts.append(f"the floor broker in the same runs: {_said(_median(floor, key), key)}")
    return f" ({'; '.join(parts)})" if parts else ""


def _slowness(data: dict[str, Any], row: dict[str, Any]) -> str:
    normal = sum(data["latency"].values())
    return f"{row['clients'] / row['ideal_per_s'] / normal:.0f}"


# The goals, each a ratio to the floor broker measured in the same rounds
# (goal_runs: the floor and django_avaturn back to back in the same server
# processes), each figure the median of those rounds. One definition each.
GOAL_CLIENTS = 50
THROUGHPUT_RATIO_GOAL = 0.85  # django_avaturn's starts+ends/s over the floor's, at 50 clients
CPU_RATIO_GOAL = 1.35  # server CPU per start+end over the floor's, at 50 clients
ADDED_P50_MARGIN_MS = 4.0  # added p50 at 1 client, minus the floor's


def goal_figures(data: dict[str, Any], server: str, db: str) -> dict[str, float] | None:
    """The three goal figures of one server and database, from the repeated rounds."""
    runs = data.get("goal_runs", [])

    def rows(broker: str, clients: int) -> list[dict[str, Any]]:
        return [r for r in runs if _key(r) == (server, db, broker, clients)]

    top = max((r["clients"] for r in runs), default=0)
    ours, floor = rows("django_avaturn", top), rows("floor", top)
    ours_1, floor_1 = rows("django_avaturn", 1), rows("floor", 1)
    if not (ours and floor and ours_1 and floor_1):
        return None

    # Each figure of a run, defined once: judged as the ratio (or difference) of the
    # rounds' medians, and shown paired by round beside it.
    def rate(run: dict[str, Any]) -> float:
        return float(run["rate_per_s"])

    def server_cpu(run: dict[str, Any]) -> float:
        return float(run["cpu_ms_per_iteration"]["server"])

    def added_p50(run: dict[str, Any]) -> float:
        return float(run["added_p50_ms"])

    def paired(
        ours_rows: list[dict[str, Any]],
        floor_rows: list[dict[str, Any]],
        figure: Figure,
        compare: Callable[[float, float], float],
    ) -> float:
        """The median over the rounds of ``compare(ours, floor)``, each round's two runs paired.

        Shown beside the goals, not judged: the machine's speed moves between the rounds,
        and each round's two runs were taken back to back.
        """
        floor_by_round = {r.get("round", 1): r for r in floor_rows}
        return float(
            statistics.median(
                compare(figure(r), figure(floor_by_round[r.get("round", 1)]))
                for r in ours_rows
                if r.get("round", 1) in floor_by_round
            )
        )

    return {
        "clients": top,
        "throughput_ratio": _median_of(ours, rate) / _median_of(floor, rate),
        "ours_fraction": _median(ours, "fraction_of_ideal"),
        "floor_fraction": _median(floor, "fraction_of_ideal"),
        "cpu_ratio": _median_of(ours, server_cpu) / _median_of(floor, server_cpu),
        "ours_cpu_ms": _median_of(ours, server_cpu),
        "floor_cpu_ms": _median_of(floor, server_cpu),
        "ours_p50_ms": _median_of(ours_1, added_p50),
        "floor_p50_ms": _median_of(floor_1, added_p50),
        "paired_throughput_ratio": paired(ours, floor, rate, operator.truediv),
        "paired_cpu_ratio": paired(ours, floor, server_cpu, operator.truediv),
        "paired_p50_margin_ms": paired(ours_1, floor_1, added_p50, operator.sub),
    }


def _goals(data: dict[str, Any]) -> list[str]:
    runs = data.get("goal_runs", [])
    rounds = max((r.get("round", 1) for r in runs), default=0)
    out = [
        f"Each goal is a ratio to the `floor` broker measured in the same run: {rounds} "
        "rounds of each configuration, django_avaturn and the floor back to back in the "
        "same server processes, each figure the median of the rounds (section "
        '"The goals\' configurations, repeated"). Throughput and CPU at '
        f"{GOAL_CLIENTS} clients; added latency at 1 client. Beside each, not judged: the "
        "same figure paired by round (the median of each round's own ratio or difference, "
        "its two runs taken back to back), which the machine's drift between rounds moves "
        "less.",
        "",
    ]
    if any(r["server"] == "uvicorn+pool" for r in runs):
        out += [
            "Under uvicorn on PostgreSQL twice: `uvicorn` opens a connection per request "
            "(`CONN_MAX_AGE = 0`), and `uvicorn+pool` takes it from Django's connection "
            "pool, as Django's documentation advises under ASGI. What a connection per "
            'request costs is in "Start and end path, in process". This machine\'s '
            "PostgreSQL runs with autovacuum off, so the harness runs `VACUUM ANALYZE` "
            "before each run, outside its window, as autovacuum would keep the table: "
            "each start+end leaves three dead row versions, and without it they pile up "
            "over the configurations and rounds and slow django_avaturn's statements "
            "run after run (the floor writes no row).",
            "",
        ]
    configs = sorted({(r["server"], r["db"]) for r in runs}, key=lambda c: (c[1] != "sqlite", c))
    for server, db in configs:
        f = goal_figures(data, server, db)
        if f is None:
            continue
        margin = f["ours_p50_ms"] - f["floor_p50_ms"]
        out += [
            f"- {server}, {db}, {f['clients']:.0f} clients, throughput: "
            f"{f['throughput_ratio']:.2f} of the floor's (goal at least "
            f"{THROUGHPUT_RATIO_GOAL:.2f}): "
            f"{_goal(f['throughput_ratio'] >= THROUGHPUT_RATIO_GOAL)} "
            f"({100 * f['ours_fraction']:.0f}% of ideal against "
            f"{100 * f['floor_fraction']:.0f}%; paired by round: "
            f"{f['paired_throughput_ratio']:.2f}).",
            f"- {server}, {db}, {f['clients']:.0f} clients, server CPU per start+end: "
            f"{f['cpu_ratio']:.2f} times the floor's (goal at most {CPU_RATIO_GOAL:.2f}): "
            f"{_goal(f['cpu_ratio'] <= CPU_RATIO_GOAL)} ({f['ours_cpu_ms']:.1f} ms against "
            f"{f['floor_cpu_ms']:.1f} ms; paired by round: {f['paired_cpu_ratio']:.2f}).",
            f"- {server}, {db}, 1 client, added p50: {f['ours_p50_ms']:.1f} ms, the floor's "
            f"plus {margin:.1f} ms (goal at most plus {ADDED_P50_MARGIN_MS:.0f} ms): "
            f"{_goal(margin <= ADDED_P50_MARGIN_MS)} (the floor: {f['floor_p50_ms']:.1f} ms; "
            f"paired by round: plus {f['paired_p50_margin_ms']:.1f} ms).",
        ]
    load = [r for r in data.get("load", []) if r["broker"] == "django_avaturn"]
    worst = max((r["new_connections_per_iteration"] for r in load), default=0.0)
    closed = max((r.get("closed_connections_per_iteration") or 0.0 for r in load), default=0.0)
    out.append(
        f"- New upstream connections per start+end after warm-up: at most {worst:.2f} "
        f"(goal about 0): {_goal(worst < 0.05)}; closed per start+end: at most "
        f"{closed:.2f}."
    )
    for r in data["expiry"]:
        if r["mode"] == "app" and r["rows"] >= 1_000_000:
            out.append(
                f"- Expiry memory at {r['rows']:,} rows on {r['db']}: peak RSS "
                f"{r['peak_rss_mb']:.0f} MB (goal < 200 MB): {_goal(r['peak_rss_mb'] < 200)}."
            )
    return out


def write_results(data: dict[str, Any], path: Path) -> None:
    lat = data["latency"]
    machine = data["machine"]
    lines = [
        "# Benchmark results",
        "",
        f"Written by `python -m benchmarks` (plan `{data['plan']}`; its last invocation took "
        f"{data['wall_s']:.0f} s, and an `--only` re-run keeps the other parts) on "
        f"{machine['cpus']} CPUs, Python {machine['python']}. The loopback fake answers the "
        f"OpenAI client secret after {lat['openai'] * 1000:.0f} ms, the Avaturn create after "
        f"{lat['create'] * 1000:.0f} ms and the terminate after {lat['terminate'] * 1000:.0f} ms. "
        "Server, fake, database and load generator share the machine, and the machine "
        "is shared with other tenants: the load average column is the machine's before "
        "each run (other work included), and the probe column times a fixed piece of "
        "pure-Python work on one core just before each run (higher is slower; it drifts "
        "within an hour here). Read the ratios side by side, not as absolute "
        "capacity.",
        "",
        "## Goals",
        "",
        *_goals(data),
        "",
        "## Session start under load",
        "",
        "Each client signs in through the login form (its own user: the per-user cap never "
        "serialises), then loops `POST sessions/` + `DELETE sessions/<id>/` after two "
        "warm-up iterations. Counted: the iterations inside a window of the run's "
        f"duration ({data.get('duration_s', '?')} s), which opens two iterations' time "
        "after the clients were let go together (one straddling an edge counts for its "
        "share inside; latencies are those of the iterations ending inside). Ideal: clients / "
        f"{(lat['openai'] + lat['create'] + lat['terminate']) * 1000:.0f} ms per iteration. "
        "Added latency: each request's time minus its upstream time (the fake counts "
        "its latency from the request's arrival, so its own work is inside it). Same "
        "server, same load, two comparison brokers in `benchmarks/baseline/`, both "
        "with the same authentication and no database row: `quickstart`, a new OpenAI "
        "client and `requests.post` per request, as the vendor quickstart writes it; "
        "and `floor`, the same calls over clients kept per process and nothing else "
        "(no DRF, no row, no cap, no cleanup), the least any Django broker of these "
        "upstreams does.",
        "",
        *_load_table(data["load"]),
        "",
        *_rounds_section(data),
        *_slow_section(data),
        "## Expiry at scale",
        "",
        "Stale live rows (past `max_duration`), bulk-inserted. Each measurement runs in a "
        "fresh process (peak RSS is the process's, the before column is after Django "
        "started). The upstream run uses the fake with the terminate latency and "
        "`TERMINATE_CONCURRENCY` 8, and small row counts: the fake, a Python threaded "
        "server on the same two cores, would be what a million terminations measure. "
        "The naive loop (`for s in queryset: terminate; s.save()`) stops at its time cap.",
        "",
        *_expiry_table(data["expiry"]),
        "",
        "## Admin: terminate selected sessions",
        "",
        "| Sessions | Concurrency | Wall s | Sequential ideal s | Concurrent ideal s "
        "| Still live |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
        *[
            f"| {r['sessions']} | {r['concurrency']} | {r['wall_s']:.2f} "
            f"| {r['sequential_ideal_s']:.1f} | {r['concurrent_ideal_s']:.1f} "
            f"| {r['still_live']} |"
            for r in data["admin"]
        ],
        "",
        "## Start and end path, in process",
        "",
        IN_PROCESS,
        "## An async start path under uvicorn",
        "",
        ASYNC,
        "## Fixes, before and after",
        "",
        BEFORE_AFTER,
        "## Tried, no measurable effect",
        "",
        TRIED,
        "## Findings",
        "",
        _reflow(_findings(data)),
    ]
    path.write_text("\n".join(lines))


def write_goals(data: dict[str, Any], path: Path) -> None:
    """Re-write only the goals and their rounds in ``path`` (``--only goals``).

    The other sections stay as the last run that measured them wrote them.
    """
    if not path.exists():
        path.write_text(
            "# Benchmark results\n\n## Goals\n\n## Load\n\n"
            "### The goals' configurations, repeated\n\n## End\n"
        )
    text = path.read_text()
    goals_at = text.index("## Goals\n")
    goals_end = text.index("\n## ", goals_at + 1)
    note = (
        f"Rewritten by `python -m benchmarks --only goals` ({data['wall_s']:.0f} s, load "
        f"average {data['machine']['loadavg_at_start']:.1f} at its start, on a machine "
        "shared with other work): the goals and their rounds. Every other section is from "
        "the last run that measured it."
    )
    goals = ["## Goals", "", note, "", *_goals(data), ""]
    text = text[:goals_at] + "\n".join(goals) + text[goals_end:]
    rounds_at = text.index("### The goals' configurations, repeated")
    rounds_end = text.index("\n##", rounds_at + 1)
    rounds = "\n".join(_rounds_section(data)).rstrip("\n") + "\n"
    text = text[:rounds_at] + rounds + text[rounds_end:]
    for title, body in (
        ("## Start and end path, in process", IN_PROCESS),
        ("## An async start path under uvicorn", ASYNC),
    ):
        if title in text:
            at = text.index(title)
            end = text.index("\n## ", at + 1) + 1
            text = text[:at] + text[end:]
        fixes = text.find("## Fixes, before and after")
        at = fixes if fixes >= 0 else len(text)
        text = text[:at] + f"{title}\n\n{body}\n" + text[at:]
    path.write_text(text)


def _key(row: dict[str, Any]) -> tuple[str, str, str, int]:
    return row["server"], row["db"], row["broker"], row["clients"]


def _row(
    data: dict[str, Any], server: str, db: str, broker: str, clients: int, part: str = "load"
) -> dict[str, Any] | None:
    for r in data.get(part, []):
        if _key(r) == (server, db, broker, clients):
            row: dict[str, Any] = r
            return row
    return None


Rows = dict[str, Any] | list[dict[str, Any]] | None


def _as_list(rows: Rows) -> list[dict[str, Any]]:
    return [] if rows is None else rows if isinstance(rows, list) else [rows]


def _pct(rows: Rows) -> str:
    """% of ideal of one run, or the median of several."""
    listed = _as_list(rows)
    return _said(_median(listed, "fraction_of_ideal"), "fraction_of_ideal") if listed else "-"


def _cpu(rows: Rows, key: str = "server") -> str:
    """CPU per start+end of one run, or the median of several."""
    values = [r["cpu_ms_per_iteration"].get(key) for r in _as_list(rows)]
    known = [v for v in values if v is not None]
    return f"{statistics.median(known):.1f} ms" if known else "-"


def _reflow(text: str, width: int = 78) -> str:
    """Re-wrap each bullet, so figures filled in at run time do not leave ragged lines."""
    bullets = [" ".join(b.split()) for b in ("\n" + text).split("\n- ") if b.strip()]
    return (
        "\n".join(
            textwrap.fill(b, width, initial_indent="- ", subsequent_indent="  ") for b in bullets
        )
        + "\n"
    )


def _findings(data: dict[str, Any]) -> str:
    """The findings, with this run's figures where a figure is quoted."""
    top = max((r["clients"] for r in data["load"]), default=0)
    # The goals' configurations: the median of their rounds, where there are some.
    servers = ("gunicorn", "uvicorn")
    ours = {s: _judged_rows(data, s, "sqlite", "django_avaturn", top) for s in servers}
    floor = {s: _judged_rows(data, s, "sqlite", "floor", top) for s in servers}
    one_ours = _judged_rows(data, "gunicorn", "sqlite", "django_avaturn", 1)
    one_floor = _judged_rows(data, "gunicorn", "sqlite", "floor", 1)
    slow = {s: _row(data, s, "sqlite", "django_avaturn", top, "slow_load") for s in ours}
    pg_gunicorn = _row(data, "gunicorn", "postgres", "django_avaturn", top)
    pg_gunicorn_floor = _row(data, "gunicorn", "postgres", "floor", top)
    pg_plain = _row(data, "uvicorn", "postgres", "django_avaturn", top)
    pg_pool = _row(data, "uvicorn+pool", "postgres", "django_avaturn", top)
    ten_uvicorn = _row(data, "uvicorn", "sqlite", "django_avaturn", 10)
    kept = [r for r in data["load"] if r["clients"] == top and r["broker"] != "quickstart"]
    opened = max((r["new_connections_per_iteration"] for r in kept), default=0.0)
    closed = max(
        (
            r.get("closed_connections_per_iteration") or 0.0
            for r in kept
            if r["broker"] == "django_avaturn"
        ),
        default=0.0,
    )
    round_trip = data.get("harness", {}).get("fake_round_trip_ms")
    harness = "-" if round_trip is None else f"{round_trip:.2f} ms"
    p50, p50_ours = (
        _said(_median(rows, "added_p50_ms"), "added_p50_ms") if rows else "-"
        for rows in (one_floor, one_ours)
    )
    floor_meets = bool(one_floor) and _median(one_floor, "added_p50_ms") < 5.0
    floor_against_goal = (
        "under the 5 ms goal"
        if floor_meets
        else "above the 5 ms goal: no Django broker of these SDKs reaches that goal here"
    )
    rounds = [r for group in (*ours.values(), *floor.values()) for r in group]
    probe = _said(_median(rounds, "probe_ms"), "probe_ms") if rounds else "-"
    return f"""\
- **The floor is the yardstick.** The `floor` broker is Django's request
  cycle, session authentication and the two client libraries over kept
  connections (requests reading its proxy settings once, as django_avaturn's
  client does, not on every call), with nothing else: no DRF, no row, no cap,
  no cleanup. At one client the floor adds {p50} (p50) on this machine,
  {floor_against_goal}. Part of that is the
  harness itself: a bare request to the fake, with no broker at all, comes
  back {harness} after its latency, and a start makes two such calls, an end
  one. At {top} clients the
  floor reaches {_pct(floor["gunicorn"])} of ideal under gunicorn and
  {_pct(floor["uvicorn"])} under uvicorn, django_avaturn {_pct(ours["gunicorn"])}
  and {_pct(ours["uvicorn"])} (medians of the repeated rounds). Figures on this
  machine move by several points from one run to the next: compare rows of the
  same run, and judge on medians.
- **How fast the machine was.** The CPU probe read {probe} (median over the
  goals' rounds). It is shared with other tenants, and its speed changes by
  a factor of three from one hour to the next: in the full run committed as
  abe4ef4 it read 7.7 ms, and django_avaturn reached 93% of ideal at 50
  clients under gunicorn (the floor, which then re-read its proxy settings
  on every call, 98%). Absolute figures belong to their run; the code's cost
  is its ratio to the floor in the same rounds, which moves far less.
- **CPU per request, not concurrency, is the limit.** {top} clients ideally make
  {top * 2} starts+ends a second. django_avaturn's server spends
  {_cpu(ours["gunicorn"])} of CPU per start+end under gunicorn, the floor
  {_cpu(floor["gunicorn"])}, on two cores that also run the fake, the load
  generator and SQLite. The same {top} clients against upstreams three times
  slower (a third of the requests per second, the section after the main
  table) reach {_pct(slow["gunicorn"])} under gunicorn and {_pct(slow["uvicorn"])}
  under uvicorn: holding {top} sessions in flight is no problem, running out of
  CPU is.
- **What django_avaturn adds over the floor** is mostly database work: a
  start reserves its slot in one short transaction (the row's INSERT, then
  one read of the user, the kill switch and the user's live sessions) and
  activates the row; an end claims the caller's row (one `UPDATE ...
  RETURNING` that finds it too) and finishes it. Five statements (on
  PostgreSQL the INSERT's also locks the user's row and takes the kill
  switch's lock), four of them commits, the fewest that keep every state
  change conditional and durable, each written once per shape
  (`sessions/statements.py`):
  built by the ORM, each had cost 120 to 430 µs of Python for 15 to 25 µs in
  SQLite itself. In one process a start+end costs about 1.5 times the floor's
  CPU: the database work about 0.95 ms above it, DRF's request and serializer
  machinery about 0.45 ms (section "Start and end path, in process"). The two
  SDKs cost about 2 ms per start+end, the same for both. At one client
  django_avaturn adds {p50_ours} (p50) to a request.
- **What limits a sync view under ASGI.** Django's ASGI handler runs each
  sync request on a thread of its own (`asgiref`'s `ThreadSensitiveContext`),
  so requests do not serialise (10 clients: {_pct(ten_uvicorn)} of ideal). The cost is
  CPU: the floor spends {_cpu(floor["uvicorn"])} per start+end under uvicorn
  against {_cpu(floor["gunicorn"])} under gunicorn. That is a thread per
  request, the sync/async bridge, and a new database connection per request,
  since persistent connections do not outlive per-request threads
  (`CONN_MAX_AGE = 0`; 0.4 ms per SQLite connection here). On PostgreSQL a
  new connection forks a backend per request: the database column shows
  {_cpu(pg_plain, "database")} of backend CPU per start+end without a pool
  ({_pct(pg_plain)} of ideal at {top} clients) against {_cpu(pg_pool, "database")}
  with Django's pool ({_pct(pg_pool)}, `uvicorn+pool`). An async start view
  would hold no thread while waiting, but every ORM call would still run on
  one; the uvicorn floor, which does no ORM work at all, is the most it could
  approach. Not built.
- **Kept-alive connections and workers.** With one listening socket shared
  by the workers, the burst of clients connecting at once went mostly to one
  worker and stayed there (see "before and after"). Both servers now run with
  `--reuse-port` (a socket per worker, connections spread by the kernel), the
  benchmark waits until every worker listens, and each gunicorn worker has
  more threads than there are clients, so an unlucky spread cannot starve one.
- **Upstream connections**: none per start+end up to 10 clients. At {top}
  clients at most {opened:.2f} per iteration, the floor included: a worker's
  pools grow to its peak concurrency after the two warm-up iterations.
  django_avaturn closes at most {closed:.2f} per iteration meanwhile; the pool
  size fix in "before and after" is what stopped connections being discarded
  and reopened on every request. The floor's closed column
  counts the quickstart broker's connections, which ran before it in the same
  server processes and left its clients to the garbage collector.
- **SQLite** runs in WAL mode with `synchronous=NORMAL` (the example project's
  settings): one fsync per checkpoint instead of per commit. Writers still take
  turns on one lock, and a writer that finds it taken waits in SQLite's busy
  handler, which polls in sleeps of up to 100 ms: in an instrumented run at 50
  clients a reservation waited 29 ms on average for the lock, and the p99
  column is mostly that wait. Queuing a process's threads on a Python lock
  first did not help (see "tried"). PostgreSQL is the database for a multi-process
  deployment; its backends add their own CPU per start+end (database column).
- **PostgreSQL under gunicorn** at {top} clients: django_avaturn
  {_pct(pg_gunicorn)} of ideal, the floor {_pct(pg_gunicorn_floor)} (single runs).
  Every statement is a round trip to a backend on the same two cores:
  django_avaturn makes 11 per start+end (`BEGIN` and `COMMIT` among them; 4
  are the session and user reads every broker makes), the floor those 4. Server CPU per
  start+end {_cpu(pg_gunicorn)} against the floor's {_cpu(pg_gunicorn_floor)},
  backend CPU {_cpu(pg_gunicorn, "database")} against
  {_cpu(pg_gunicorn_floor, "database")}. On its own PostgreSQL host, the backend
  CPU leaves the web server's cores.
- **uvicorn's own `--workers N`** added about 50 ms to every request on this
  machine, a plain GET included. The ASGI rows run `UvicornWorker`s under
  gunicorn, which is also how uvicorn is usually deployed.
- **Expiry** holds one batch in memory (peak RSS flat from 100,000 to 1,000,000
  rows, about 2 MB above an idle Django) and issues 4 to 5 queries per batch of
  500. The naive loop holds every row (about 115 MB more per 100,000 rows) and
  does one query per row. With upstream terminations it runs at the concurrent
  ideal (rows / 8 * 100 ms).
"""


def write_plot(data: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    series: dict[str, list[tuple[int, float, float]]] = {}
    for r in data["load"]:
        key = f"{r['server']} / {r['db']} / {r['broker']}"
        series.setdefault(key, []).append(
            (r["clients"], 100 * r["fraction_of_ideal"], r["added_p50_ms"])
        )
    # A colour per configuration (server and database), a line style per broker:
    # more series than the default colour cycle has colours.
    configs = list(dict.fromkeys(key.rsplit(" / ", 1)[0] for key in series))
    colours = {config: f"C{index % 10}" for index, config in enumerate(configs)}
    for key, points in series.items():
        points.sort()
        style = "-" if "django_avaturn" in key else "--" if "quickstart" in key else ":"
        colour = colours[key.rsplit(" / ", 1)[0]]
        xs = [p[0] for p in points]
        left.plot(xs, [p[1] for p in points], style, color=colour, marker="o", label=key)
        right.plot(xs, [p[2] for p in points], style, color=colour, marker="o", label=key)
    left.axhline(90, color="grey", lw=0.8, ls=":")
    left.axhline(80, color="grey", lw=0.8, ls=":")
    left.set(xlabel="concurrent clients", ylabel="% of ideal throughput", ylim=(0, 105))
    left.set_title("Session start+end throughput")
    right.set(xlabel="concurrent clients", ylabel="added latency p50 (ms)")
    right.set_yscale("log")
    right.axhline(5, color="grey", lw=0.8, ls=":")
    right.set_title("Latency beyond upstream time")
    for ax in (left, right):
        ax.set_xscale("log")
        ax.set_xticks(sorted({r["clients"] for r in data["load"]}) or [1])
        ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    left.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
