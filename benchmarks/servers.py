"""The production servers the example project runs under, configured alike.

gunicorn: ``--workers 2`` (one per core: each process has its own GIL) and
``--threads 32`` (64 request slots, more than the 50 clients, because a
request spends ~99% of its time waiting on the upstreams, not on a CPU).
uvicorn: two uvicorn workers under gunicorn (``-k uvicorn_worker.UvicornWorker``),
the usual production form. uvicorn's own ``--workers 2`` supervisor added
about 50 ms to every request here, even a plain GET (one worker: 8 ms), which
would measure uvicorn's process manager rather than the app (see RESULTS.md).
Django runs each sync request on a thread of its own under ASGI.
"""

from __future__ import annotations

from collections.abc import Mapping

from benchmarks.procs import BIN, WORK, Proc, bench_env, free_port

SERVERS = ("gunicorn", "uvicorn")


def db_env(db: str) -> dict[str, str]:
    if db == "postgres":
        return {"BENCH_DB": "postgres", "BENCH_PG_NAME": "avaturn_bench"}
    return {"BENCH_DB": "sqlite", "EXAMPLE_DB_PATH": str(WORK / "load.sqlite3")}


def start_server(
    server: str, *, db: str, fake_port: int, extra_env: Mapping[str, str] | None = None
) -> Proc:
    port = free_port()
    env = bench_env({**db_env(db), "AVATURN_FAKE_PORT": str(fake_port), **(extra_env or {})})
    if server == "gunicorn":
        env.setdefault("BENCH_CONN_MAX_AGE", "60")
        argv = [
            str(BIN / "gunicorn"), "example_project.wsgi:application",
            "--workers", "2", "--threads", "32", "--worker-class", "gthread",
            "--bind", f"127.0.0.1:{port}", "--keep-alive", "30",
        ]  # fmt: skip
    elif server == "uvicorn":
        argv = [
            str(BIN / "gunicorn"), "example_project.asgi:application",
            "--workers", "2", "--worker-class", "uvicorn_worker.UvicornWorker",
            "--bind", f"127.0.0.1:{port}", "--keep-alive", "30",
        ]  # fmt: skip
    else:
        raise ValueError(server)
    return Proc.start(f"{server}-{db}", argv, port=port, env=env)
