"""Expiry at scale and the admin's bulk termination, each run in a fresh process.

``python -m benchmarks.ops seed --rows N`` bulk-inserts N stale live rows
(executemany on SQLite, COPY on PostgreSQL). ``python -m benchmarks.ops
expire --mode app|naive`` ends them and prints one JSON line: wall time,
peak RSS, queries. A fresh process per measurement keeps peak RSS honest.
``python -m benchmarks.ops admin --sessions 200`` terminates live sessions
through the real admin action.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import time
from datetime import timedelta
from typing import Any

import django


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class QueryCounter:
    """Counts every query through ``connection.execute_wrapper`` (DEBUG stays off)."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        self.count += 1
        return execute(sql, params, many, context)


def seed(rows: int) -> dict[str, Any]:
    from django.contrib.auth import get_user_model
    from django.db import connection, transaction
    from django.utils import timezone

    from django_avaturn.models import Session

    user_model = get_user_model()
    owner: dict[str, Any] = {user_model.USERNAME_FIELD: "expiry-owner"}
    user, _ = user_model.objects.get_or_create(**owner)
    Session.objects.all().delete()
    long_ago = timezone.now() - timedelta(days=2)
    began = time.perf_counter()
    table = Session._meta.db_table
    columns = (
        "session_id, user_id, status, end_reason, end_detail, avatar_id, model, voice, "
        "config_name, max_duration, created_at, started_at, expires_at, updated_at, "
        "client_ref, awaiting_retry, transcript_lines, transcript_bytes, engine, "
        "engine_secret_hash"
    )

    def row(i: int) -> tuple[Any, ...]:
        return (
            f"bench-{i:08d}", user.pk, "live", "", "", "", "gpt-realtime", "marin",
            "", 600, long_ago, long_ago, long_ago + timedelta(minutes=10), long_ago,
            "", False, 0, 0, "openai-realtime", "",
        )  # fmt: skip

    with transaction.atomic(), connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            raw = cursor.cursor  # the psycopg cursor under Django's wrapper
            with raw.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
                for i in range(rows):
                    copy.write_row(row(i))
        else:
            placeholders = ", ".join(["%s"] * len(row(0)))
            sql = f"INSERT INTO {table} ({columns}) VALUES ({placeholders})"
            chunk = 50_000
            for start in range(0, rows, chunk):
                cursor.executemany(sql, [row(i) for i in range(start, min(rows, start + chunk))])
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(f"VACUUM ANALYZE {table}")
    return {"rows": rows, "seed_s": round(time.perf_counter() - began, 2)}


def naive(upstream: bool, time_cap: float) -> int:
    """The loop a first version writes: every stale row, one at a time, one save each."""
    from django.utils import timezone

    from django_avaturn.models import EndReason, Session, SessionStatus
    from django_avaturn.sessions.expiry import ExpiryPolicy
    from django_avaturn.upstream.clients import get_avaturn_client

    policy = ExpiryPolicy.from_settings()
    now = timezone.now()
    stop_at = time.perf_counter() + time_cap
    done = 0
    for session in Session.objects.filter(status=SessionStatus.LIVE):
        if time.perf_counter() > stop_at:
            break
        if policy.stale_because(session, now) is None:
            continue
        if upstream and session.session_id:
            get_avaturn_client().terminate_session(session.session_id)
        session.status = SessionStatus.EXPIRED
        session.end_reason = EndReason.EXPIRED
        session.ended_at = timezone.now()
        session.save()
        done += 1
    return done


def expire(mode: str, upstream: bool, batch_size: int, time_cap: float) -> dict[str, Any]:
    from django.db import connection

    from django_avaturn.models import Session, SessionStatus
    from django_avaturn.sessions.expiry import expire_sessions

    total = Session.objects.filter(status=SessionStatus.LIVE).count()
    counter = QueryCounter()
    rss_before = rss_mb()
    began = time.perf_counter()
    with connection.execute_wrapper(counter):
        if mode == "app":
            report = expire_sessions(upstream=upstream, batch_size=batch_size)
            ended = report.tally.ended
            failed = report.tally.failed
        else:
            ended = naive(upstream, time_cap)
            failed = 0
    wall = time.perf_counter() - began
    return {
        "mode": mode,
        "upstream": upstream,
        "rows": total,
        "ended": ended,
        "failed": failed,
        "complete": ended == total,
        "wall_s": round(wall, 2),
        "rows_per_s": round(ended / wall, 1) if wall else None,
        "queries": counter.count,
        "batches": -(-total // batch_size),
        "batch_size": batch_size,
        "rss_before_mb": round(rss_before, 1),
        "peak_rss_mb": round(rss_mb(), 1),
    }


def admin(sessions: int) -> dict[str, Any]:
    """Terminate ``sessions`` live sessions (real ones on the fake) through the admin action."""
    from django.contrib.auth import get_user_model
    from django.test import Client

    from django_avaturn.models import Session, SessionStatus
    from django_avaturn.upstream.clients import get_avaturn_client, get_openai_secrets
    from django_avaturn.upstream.pool import terminate_concurrency

    user_model = get_user_model()
    staff, _ = user_model.objects.get_or_create(
        defaults={"is_staff": True, "is_superuser": True},
        **{user_model.USERNAME_FIELD: "bench-admin"},
    )
    Session.objects.all().delete()
    secrets, avaturn = get_openai_secrets(), get_avaturn_client()
    rows = []
    for _ in range(sessions):
        secret = secrets.mint(
            session={"type": "realtime", "model": "gpt-realtime"}, ttl_seconds=600
        )
        created = avaturn.create_session(
            {"conversation_engine": {"type": "openai-realtime", "client_secret": secret.value}}
        )
        rows.append(Session(user=staff, status=SessionStatus.LIVE, session_id=created.session_id))
    Session.objects.bulk_create(rows)
    pks = [str(pk) for pk in Session.objects.values_list("pk", flat=True)]
    client = Client()
    client.force_login(staff)
    url = f"/admin/{Session._meta.app_label}/{Session._meta.model_name}/"
    began = time.perf_counter()
    response = client.post(url, {"action": "terminate_selected", "_selected_action": pks})
    wall = time.perf_counter() - began
    left = Session.objects.filter(status=SessionStatus.LIVE).count()
    return {
        "sessions": sessions,
        "status": response.status_code,
        "still_live": left,
        "wall_s": round(wall, 2),
        "concurrency": terminate_concurrency(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ops")
    sub = parser.add_subparsers(dest="command", required=True)
    p_seed = sub.add_parser("seed")
    p_seed.add_argument("--rows", type=int, required=True)
    p_exp = sub.add_parser("expire")
    p_exp.add_argument("--mode", choices=("app", "naive"), required=True)
    p_exp.add_argument("--no-upstream", action="store_true")
    p_exp.add_argument("--batch-size", type=int, default=500)
    p_exp.add_argument("--time-cap", type=float, default=30.0)
    p_admin = sub.add_parser("admin")
    p_admin.add_argument("--sessions", type=int, default=200)
    args = parser.parse_args()
    django.setup()
    if args.command == "seed":
        result = seed(args.rows)
    elif args.command == "expire":
        result = expire(args.mode, not args.no_upstream, args.batch_size, args.time_cap)
    else:
        result = admin(args.sessions)
    out = io.StringIO()
    json.dump(result, out)
    os.write(1, (out.getvalue() + "\n").encode())


if __name__ == "__main__":
    main()
