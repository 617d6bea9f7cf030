"""RESULTS.md and results.png from one run's data."""

from __future__ import annotations

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
        "| see `uvicorn+pool` above (`max_size` 40) | `benchmarks/settings.py` |",
        "| Added latency p50, gunicorn, SQLite, 1 client "
        "| 47.5 ms (rollback journal: an fsync per commit, four commits per start+end) "
        "| 9.4 ms | `SQLite: WAL with synchronous=NORMAL in the example project` |",
        "| gunicorn, SQLite, 50 clients, % of ideal | 25% | 78% "
        "| the same, plus `Fewer queries and less work per start and end` (16 to 13) |",
        "| Added latency p50, uvicorn, 1 client (a plain GET: 60 ms against 8 ms) "
        "| 54 ms (`uvicorn --workers 2`: its process supervisor adds about 50 ms to "
        "every request) | see the uvicorn rows (two `UvicornWorker`s under gunicorn) "
        "| `benchmarks/servers.py` |",
        "",
    ]
)


def _f(value: Any, digits: int = 0) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _load_table(rows: list[dict[str, Any]]) -> list[str]:
    out = [
        "| Server | DB | Broker | Clients | Starts+ends/s (ideal) | % of ideal "
        "| Added p50 / p99 ms | New upstream conns / iteration "
        "| CPU ms / iteration: server, fake, clients | Errors | Load avg |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: |",
    ]
    for r in rows:
        cpu = r["cpu_ms_per_iteration"]
        out.append(
            f"| {r['server']} | {r['db']} | {r['broker']} | {r['clients']} "
            f"| {r['rate_per_s']:.1f} ({r['ideal_per_s']:.0f}) "
            f"| **{100 * r['fraction_of_ideal']:.0f}%** "
            f"| {_f(r['added_p50_ms'], 1)} / {_f(r['added_p99_ms'], 1)} "
            f"| {r['new_connections_per_iteration']:.2f} "
            f"| {_f(cpu['server'], 1)}, {_f(cpu['fake'], 1)}, {_f(cpu['clients'], 1)} "
            f"| {r['errors']} | {r['loadavg_before']:.1f} |"
        )
    return out


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


def _goals(data: dict[str, Any]) -> list[str]:
    load = [r for r in data["load"] if r["broker"] == "django_avaturn"]
    top = max((r["clients"] for r in load), default=0)
    out = []
    for server, target in (("gunicorn", 0.90), ("uvicorn", 0.80)):
        rows = [r for r in load if r["server"] == server and r["clients"] == top]
        for r in rows:
            out.append(
                f"- {server}, {r['db']}, {top} clients: {100 * r['fraction_of_ideal']:.0f}% of "
                f"ideal (goal {target:.0%}): {_goal(r['fraction_of_ideal'] >= target)}."
            )
    for r in load:
        if r["clients"] == 1:
            out.append(
                f"- Added latency p50, {r['server']}, {r['db']}, 1 client: "
                f"{r['added_p50_ms']} ms (goal < 5 ms): {_goal(r['added_p50_ms'] < 5)}."
            )
    worst = max((r["new_connections_per_iteration"] for r in load), default=0.0)
    out.append(
        f"- New upstream connections per start+end after warm-up: at most {worst:.2f} "
        f"(goal about 0): {_goal(worst < 0.05)}."
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
        "Server, fake, database and load generator share the machine; the load average "
        "column is the machine's before each run (other work included), so read the "
        "ratios side by side, not as absolute capacity.",
        "",
        "## Goals",
        "",
        *_goals(data),
        "",
        "## Session start under load",
        "",
        "Each client signs in through the login form (its own user: the per-user cap never "
        "serialises), then loops `POST sessions/` + `DELETE sessions/<id>/` for the run's "
        "duration after two warm-up iterations. Ideal: clients / "
        f"{(lat['openai'] + lat['create'] + lat['terminate']) * 1000:.0f} ms per iteration. "
        "Added latency: each request's time minus its upstream time. `quickstart` is "
        "`benchmarks/baseline/`: a new OpenAI client and `requests.post` per request, no "
        "database row, same authentication.",
        "",
        *_load_table(data["load"]),
        "",
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
        "## Fixes, before and after",
        "",
        BEFORE_AFTER,
        "## Findings",
        "",
        FINDINGS,
    ]
    path.write_text("\n".join(lines))


FINDINGS = """\
- **CPU, not concurrency, limits 50 clients here.** 50 clients ideally make
  100 starts+ends a second, 200 Django requests. The server alone spends the
  CPU per iteration shown above (13 queries, DRF, the OpenAI SDK and requests
  per start+end), so 100 a second needs about two cores for the server, on a
  machine whose two cores also run the fake, the database, the load generator
  and (load average column) other people's work. Up to 10 clients, where CPU
  suffices, django_avaturn keeps pace with the ideal as well as or better than
  the quickstart broker, which spends about twice the CPU per iteration
  building clients and opens 3 new upstream connections per iteration. At 50
  clients on SQLite the quickstart broker comes out ahead: it writes no rows, so
  it never queues on SQLite's single writer lock.
- **Added latency at 1 client** is mostly CPU time: Django's request cycle,
  DRF, 13 queries per start+end, the OpenAI SDK and requests. Two fixes found
  through these numbers cut it from 47 to about 9 ms per request on SQLite
  (see "before and after"); what remains is above the 5 ms goal. The upstream
  clients themselves cost about 2.5 ms of CPU per start+end (measured apart).
- **ASGI does not serialise sync views.** Django's ASGI handler wraps each
  request in `asgiref.sync.ThreadSensitiveContext`, so `sync_to_async(
  thread_sensitive=True)` runs each request on a thread of its own, not on one
  shared thread: uvicorn at 10 clients runs about 7 times the 1-client rate.
  ASGI costs more CPU per request instead (server column: about 30 against 19
  ms per iteration), and with `CONN_MAX_AGE = 0` a new database connection per
  request (persistent connections do not outlive per-request threads). Django's
  PostgreSQL pool removes the connection setup, but its `max_size` must cover a
  process's concurrent starts, because a start holds its connection while it
  waits on the upstreams (see "before and after"). For ASGI sites, an async
  start view would hold no thread and no connection while waiting; not built.
- **Upstream connections** stay at zero per iteration up to 10 clients. At 50
  clients a few are opened (0.02 to 0.24 per iteration), most on SQLite where
  lock waits stall requests for seconds; probably pooled connections expiring
  while concurrency swings (httpx closes those idle for 5 s). Not investigated
  further.
- **SQLite** runs in WAL mode with `synchronous=NORMAL` (the example project's
  settings): one fsync per checkpoint instead of per commit. Writers from two
  processes still queue on the busy timeout, which sleeps in steps of up to
  100 ms: the p99 column. PostgreSQL is the database for a multi-process
  deployment.
- **uvicorn's own `--workers N`** added about 50 ms to every request on this
  machine, a plain GET included (a single uvicorn process: 8 ms; two
  `uvicorn_worker.UvicornWorker`s under gunicorn: 12 ms). The ASGI rows use the
  latter, which is also how uvicorn is usually deployed.
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
    for key, points in series.items():
        points.sort()
        style = "--" if "quickstart" in key else "-"
        xs = [p[0] for p in points]
        left.plot(xs, [p[1] for p in points], style, marker="o", label=key)
        right.plot(xs, [p[2] for p in points], style, marker="o", label=key)
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
