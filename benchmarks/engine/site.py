"""The site engine as the benchmark runs it: its database, its rows, and uvicorn serving it.

``python -m benchmarks.engine.site migrate`` prepares the SQLite database;
``python -m benchmarks.engine.site rows N`` adds N live site engine sessions
(a user each), mints each a token and a secret as a start does
(``tokens.mint``, the secret's hash and the engine plan on the row) and
prints what Avaturn would be given: the socket's URL and its headers.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from benchmarks.procs import PYTHON, ROOT, WORK, Proc, bench_env, free_port

DB_PATH = WORK / "engine.sqlite3"


def env(port: int, peer_port: int) -> dict[str, str]:
    return bench_env(
        {
            "DJANGO_SETTINGS_MODULE": "benchmarks.engine.settings",
            "BENCH_DB": "sqlite",
            "EXAMPLE_DB_PATH": str(DB_PATH),
            "BENCH_ENGINE_PUBLIC_URL": f"ws://127.0.0.1:{port}",
            "BENCH_ENGINE_PEER_URL": f"ws://127.0.0.1:{peer_port}/v1",
        }
    )


def manage(args: list[str], environ: dict[str, str]) -> str:
    done = subprocess.run(
        [PYTHON, "-m", "benchmarks.engine.site", *args],
        cwd=ROOT,
        env=environ,
        check=True,
        capture_output=True,
        text=True,
    )
    return done.stdout


_migrated = False


@contextmanager
def engine_server(
    peer_port: int, rows: int
) -> Iterator[tuple[Proc, Callable[[int], list[dict[str, Any]]]]]:
    """uvicorn serving the site engine (one process, uvloop, httptools, websockets)."""
    global _migrated
    port = free_port()
    environ = env(port, peer_port)
    if not _migrated:
        DB_PATH.unlink(missing_ok=True)
        manage(["migrate"], environ)
        _migrated = True
    made: list[dict[str, Any]] = json.loads(manage(["rows", str(rows)], environ))
    argv = [
        PYTHON,
        "-m",
        "uvicorn",
        "benchmarks.engine.asgi:application",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--loop",
        "uvloop",
        "--http",
        "httptools",
        "--ws",
        "websockets",
        "--ws-max-size",
        str(1 << 24),
        "--ws-per-message-deflate",
        "false",
        "--lifespan",
        "off",
        "--no-access-log",
        "--log-level",
        "warning",
    ]

    def conversations(n: int) -> list[dict[str, Any]]:
        taken = made[:n]
        del made[:n]
        if len(taken) < n:
            raise RuntimeError("more conversations than rows")
        return taken

    with Proc.start("engine-uvicorn", argv, port=port, env=environ) as proc:
        yield proc, conversations


def make_rows(count: int) -> list[dict[str, Any]]:
    from django.contrib.auth import get_user_model
    from django.utils import timezone

    from django_avaturn.conf import avaturn_settings
    from django_avaturn.engine import tokens
    from django_avaturn.models import Engine, Session, SessionStatus
    from django_avaturn.sessions.plan import realtime_session_from_settings

    user_model = get_user_model()
    batch = uuid.uuid4().hex[:8]
    users = user_model.objects.bulk_create(
        [user_model(**{user_model.USERNAME_FIELD: f"engine-{batch}-{i}"}) for i in range(count)]
    )
    options = avaturn_settings.SITE_ENGINE
    realtime = realtime_session_from_settings()
    made = []
    for user in users:
        row = Session.objects.create(
            user=user,
            status=SessionStatus.LIVE,
            engine=Engine.SITE,
            session_id=f"bench-{uuid.uuid4().hex}",
            started_at=timezone.now(),
        )
        credentials = tokens.mint(row.pk)
        Session.objects.filter(pk=row.pk).update(
            engine_secret_hash=credentials.secret_hash,
            engine_plan=tokens.engine_plan(realtime, list(options["TOOLS"])),
        )
        made.append(
            {
                "url": tokens.socket_url(options["PUBLIC_URL"], credentials.token),
                "headers": {tokens.SECRET_HEADER: credentials.secret},
            }
        )
    return made


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=("migrate", "rows"))
    parser.add_argument("count", type=int, nargs="?", default=0)
    args = parser.parse_args()
    import django

    django.setup()
    if args.command == "migrate":
        from django.core.management import call_command

        call_command("migrate", verbosity=0)
    else:
        print(json.dumps(make_rows(args.count)))


if __name__ == "__main__":
    main()
