"""Prepare a benchmark database: ``python -m benchmarks.dbsetup --users N``.

Runs in its own process (the database is chosen by ``BENCH_DB`` and
``EXAMPLE_DB_PATH``/``BENCH_PG_NAME`` in the environment): migrates and
creates the users ``bench0`` ... ``bench{N-1}``.
"""

from __future__ import annotations

import argparse
import os
import subprocess

import django


def recreate_postgres(name: str) -> None:
    for sql in (f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', f'CREATE DATABASE "{name}"'):
        subprocess.run(
            ["psql", "-h", "127.0.0.1", "-U", "postgres", "-q", "-c", sql],
            check=True,
            capture_output=True,
        )


def vacuum_postgres(name: str) -> None:
    """What autovacuum does between rounds: this machine's server runs with it off.

    Each start+end leaves three dead versions of its row (every status change
    touches an index, so none is a HOT update). Without a vacuum they pile up
    over a run's configurations and rounds, and the app's reads and writes of
    its table slow down round after round (in process, one user: 5.8 ms of
    backend CPU per start+end after a vacuum, 8.7 ms at 10,000 dead rows).
    A production server's autovacuum keeps the table near the first figure.
    """
    subprocess.run(
        ["psql", "-h", "127.0.0.1", "-U", "postgres", "-q", "-d", name, "-c", "VACUUM ANALYZE"],
        check=True,
        capture_output=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, default=0)
    args = parser.parse_args()
    if os.environ.get("BENCH_DB") == "postgres":
        recreate_postgres(os.environ.get("BENCH_PG_NAME", "avaturn_bench"))
    django.setup()
    from django.contrib.auth import get_user_model
    from django.contrib.auth.hashers import make_password
    from django.core.management import call_command

    from benchmarks.load import PASSWORD, username

    call_command("migrate", verbosity=0)
    user_model = get_user_model()
    password = make_password(PASSWORD)
    user_model.objects.bulk_create(
        [
            user_model(**{user_model.USERNAME_FIELD: username(i)}, password=password)
            for i in range(args.users)
        ]
    )


if __name__ == "__main__":
    main()
