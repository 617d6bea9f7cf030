"""The production servers the example project runs under, configured alike.

gunicorn: ``--worker-class gthread``, 4 workers of 64 threads. uvicorn: 4
``uvicorn_worker.UvicornWorker``s under gunicorn, the usual production form,
on uvloop and httptools (``uvicorn[standard]``); uvicorn's own ``--workers``
supervisor added about 50 ms to every request here, even a plain GET, which
would measure uvicorn's process manager rather than the app (see RESULTS.md).
Django runs each sync request on a thread of its own under ASGI.
``BENCH_WORKERS`` and ``BENCH_THREADS`` override the layout for experiments.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from benchmarks.procs import BIN, WORK, Proc, bench_env, free_port

SERVERS = ("gunicorn", "uvicorn")
# Two workers per core: each has its own GIL, and a request spends ~98% of
# its time waiting on the upstreams. 64 threads each, more than the 50
# clients, so however the kernel spreads the connections no worker runs out.
WORKERS = 4
THREADS = 64


def db_env(db: str) -> dict[str, str]:
    if db == "postgres":
        # BENCH_PG_NAME in the environment names another database (several runs at once).
        return {
            "BENCH_DB": "postgres",
            "BENCH_PG_NAME": os.environ.get("BENCH_PG_NAME", "avaturn_bench"),
        }
    return {"BENCH_DB": "sqlite", "EXAMPLE_DB_PATH": str(WORK / "load.sqlite3")}


def start_server(
    server: str, *, db: str, fake_port: int, extra_env: Mapping[str, str] | None = None
) -> Proc:
    port = free_port()
    env = bench_env({**db_env(db), "AVATURN_FAKE_PORT": str(fake_port), **(extra_env or {})})
    workers = int(env.get("BENCH_WORKERS", WORKERS))
    common = [
        "--workers", str(workers), "--bind", f"127.0.0.1:{port}", "--keep-alive", "30",
        # A listening socket per worker: the kernel spreads new connections
        # over the workers. With one shared socket, whichever worker wins the
        # accept race takes the burst of clients connecting at once, and their
        # kept-alive connections stay there (see RESULTS.md).
        "--reuse-port",
    ]  # fmt: skip
    if server == "gunicorn":
        env.setdefault("BENCH_CONN_MAX_AGE", "60")
        argv = [
            str(BIN / "gunicorn"), "example_project.wsgi:application", *common,
            "--worker-class", "gthread", "--threads", env.get("BENCH_THREADS", str(THREADS)),
        ]  # fmt: skip
    elif server == "uvicorn":
        argv = [
            str(BIN / "gunicorn"), "example_project.asgi:application", *common,
            "--worker-class", "uvicorn_worker.UvicornWorker",
        ]  # fmt: skip
    else:
        raise ValueError(server)
    return Proc.start(f"{server}-{db}", argv, port=port, env=env, listeners=workers)
