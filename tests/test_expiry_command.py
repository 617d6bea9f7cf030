"""The expiry command and ``expire_sessions()`` against every kind of upstream answer."""

from __future__ import annotations

import io
import logging
from datetime import datetime, timedelta
from typing import Any

import pytest
import requests
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.db.models.functions import Coalesce
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from django_avaturn.management.commands.avaturn_expire_sessions import Command
from django_avaturn.models import EndReason, Engine, Session, SessionStatus
from django_avaturn.sessions import transitions
from django_avaturn.sessions.expiry import ExpiryPolicy, expire_sessions
from django_avaturn.signals import session_ended
from django_avaturn.upstream.clients import longest_in_flight, longest_start
from tests.helpers import KEYS, AvaturnOverrides

pytestmark = pytest.mark.django_db(transaction=True)


def make(
    user: Any,
    session_id: str | None,
    *,
    status: str = SessionStatus.LIVE,
    started_ago: float | None = 30,
    expires_in: float | None = 600,
    seen_ago: float | None = None,
    max_duration: int | None = 3600,
    end_reason: str = "",
    touched_ago: float = 0,
    site_engine: bool = False,
) -> Session:
    now = timezone.now()
    row = Session.objects.create(
        user=user,
        session_id=session_id,
        status=status,
        engine=Engine.SITE if site_engine else Engine.OPENAI_REALTIME,
        created_at=now - timedelta(seconds=(started_ago or 0) + 1),
        started_at=now - timedelta(seconds=started_ago) if started_ago is not None else None,
        expires_at=now + timedelta(seconds=expires_in) if expires_in is not None else None,
        last_seen_at=now - timedelta(seconds=seen_ago) if seen_ago is not None else None,
        max_duration=max_duration,
        end_reason=end_reason,
    )
    if touched_ago:
        Session.objects.filter(pk=row.pk).update(updated_at=now - timedelta(seconds=touched_ago))
    return row


def run(*args: str, verbosity: int = 1) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command("avaturn_expire_sessions", *args, verbosity=verbosity, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def fresh(row: Session) -> Session:
    return Session.objects.get(pk=row.pk)


# --------------------------------------------------------------------------- the policy


POLICY = ExpiryPolicy(idle=300, grace=60, stuck_after=300, default_max_duration=3600)
NOW = datetime(2030, 1, 1, 12, 0, tzinfo=timezone.get_fixed_timezone(0))


def row_at(
    *,
    started_ago: float,
    expires_in: float | None = 600,
    seen_ago: float | None = None,
    max_duration: int | None = 3600,
) -> Session:
    return Session(
        status=SessionStatus.LIVE,
        created_at=NOW - timedelta(seconds=started_ago + 1),
        started_at=NOW - timedelta(seconds=started_ago),
        expires_at=NOW + timedelta(seconds=expires_in) if expires_in is not None else None,
        last_seen_at=NOW - timedelta(seconds=seen_ago) if seen_ago is not None else None,
        max_duration=max_duration,
    )


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"started_ago": 30}, None),
        # Past max_duration + grace: certainly over upstream, heartbeat or not.
        ({"started_ago": 3661, "seen_ago": 1}, "ran past its max_duration of 3600 s"),
        ({"started_ago": 3659, "seen_ago": 1, "expires_in": -3000}, None),
        ({"started_ago": 130, "max_duration": 60}, "ran past its max_duration of 60 s"),
        ({"started_ago": 4000, "max_duration": None}, "ran past its max_duration of 3600 s"),
        # Heartbeats that stopped.
        ({"started_ago": 1000, "seen_ago": 301}, "no heartbeat for more than 300 s"),
        ({"started_ago": 1000, "seen_ago": 299}, None),
        # Secret expired: not proof while heartbeats keep coming.
        ({"started_ago": 1000, "expires_in": -400, "seen_ago": 10}, None),
        # Secret expired and never a heartbeat for the idle window.
        (
            {"started_ago": 700, "expires_in": -100},
            "client secret expired, no heartbeat for 300 s",
        ),
        ({"started_ago": 700, "expires_in": -59}, None),  # within the grace
        ({"started_ago": 200, "expires_in": -100}, None),  # started < idle ago
        # Never a heartbeat and the secret still valid: silence alone proves nothing.
        ({"started_ago": 3000, "expires_in": 4000}, None),
    ],
)
def test_stale_because(kwargs: dict[str, Any], expected: str | None) -> None:
    assert POLICY.stale_because(row_at(**kwargs), NOW) == expected


def test_older_than_comes_first_and_idle_none_trusts_the_secret() -> None:
    policy = ExpiryPolicy(
        idle=None, grace=0, stuck_after=300, default_max_duration=3600, older_than=100
    )
    assert policy.stale_because(row_at(started_ago=101, seen_ago=1), NOW) == "older than 100 s"
    policy = ExpiryPolicy(idle=None, grace=0, stuck_after=300, default_max_duration=3600)
    assert policy.stale_because(row_at(started_ago=50, expires_in=-1, seen_ago=1), NOW) == (
        "client secret expired"
    )
    assert policy.stale_because(row_at(started_ago=50, seen_ago=1000), NOW) is None


def test_a_session_nobody_joined_is_stale_after_the_unjoined_threshold() -> None:
    policy = ExpiryPolicy(
        idle=300, grace=60, stuck_after=300, default_max_duration=3600, unjoined=90
    )
    never_joined = "no heartbeat within 90 s of going live (never joined)"
    assert policy.stale_because(row_at(started_ago=91), NOW) == never_joined
    assert policy.stale_because(row_at(started_ago=89), NOW) is None
    # One heartbeat since it went live: its browser joined; the idle rule applies.
    assert policy.stale_because(row_at(started_ago=1000, seen_ago=200), NOW) is None
    # Heartbeats not consulted at all: neither is their absence.
    off = ExpiryPolicy(idle=None, grace=60, stuck_after=300, default_max_duration=3600, unjoined=90)
    assert off.stale_because(row_at(started_ago=1000), NOW) is None


def test_a_site_engine_session_whose_socket_never_connected_is_stale_heartbeats_or_not() -> None:
    """Its token expired CONNECT_WITHIN after the start: the avatar can never talk.

    The page may still be open and sending heartbeats (the visitor waits for
    a silent avatar), so no heartbeat rule would end it before max_duration.
    """
    never = "its site engine socket did not connect within 120 s"
    for idle in (300, None):
        policy = ExpiryPolicy(
            idle=idle,
            grace=60,
            stuck_after=300,
            default_max_duration=3600,
            engine_connect_within=120,
        )

        def site(*, connected: bool, **kwargs: Any) -> Session:
            row = row_at(**kwargs)
            row.engine = Engine.SITE
            row.engine_connected_at = row.started_at if connected else None
            return row

        assert (
            policy.stale_because(site(connected=False, started_ago=181, seen_ago=1), NOW) == never
        )
        # Within CONNECT_WITHIN plus the grace: Avaturn may still connect.
        assert policy.stale_because(site(connected=False, started_ago=179, seen_ago=1), NOW) is None
        # Connected once: a conversation ran; the other rules decide.
        assert policy.stale_because(site(connected=True, started_ago=1000, seen_ago=1), NOW) is None
        # Another engine has no socket of ours to wait for.
        assert policy.stale_because(row_at(started_ago=1000, seen_ago=1), NOW) is None


@pytest.mark.parametrize(("idle", "unjoined"), [(None, 90), (300, None), (300, 90)])
def test_sql_filter_is_a_superset_of_the_policy(
    user: Any, idle: int | None, unjoined: int | None
) -> None:
    policy = ExpiryPolicy(
        idle=idle,
        grace=60,
        stuck_after=300,
        default_max_duration=3600,
        unjoined=unjoined,
        engine_connect_within=120,
    )
    now = timezone.now()
    n = 0
    for started_ago in (10, 100, 200, 400, 700, 3700):
        for expires_in in (None, -400, -30, 500):
            for seen_ago in (None, 5, 350):
                for max_duration in (None, 60, 3600):
                    n += 1
                    make(
                        user,
                        f"s{n}",
                        started_ago=started_ago,
                        expires_in=expires_in,
                        seen_ago=seen_ago,
                        max_duration=max_duration,
                    )
    for started_ago in (100, 200, 3000):
        for connected in (False, True):
            n += 1
            make(user, f"s{n}", started_ago=started_ago, seen_ago=5, site_engine=True)
            if connected:
                Session.objects.filter(session_id=f"s{n}").update(engine_connected_at=now)
    from django.db.models.functions import Coalesce

    candidates = set(
        Session.objects.alias(began=Coalesce("started_at", "created_at"))
        .filter(policy.stale_filter(now, min_max_duration=60))
        .values_list("pk", flat=True)
    )
    stale = {row.pk for row in Session.objects.all() if policy.stale_because(row, now)}
    assert stale  # the grid has stale rows...
    assert stale <= candidates  # ...and the SQL never misses one
    assert len(candidates) < n


# --------------------------------------------------------------------------- the command


def test_terminates_stale_sessions_and_leaves_fresh_ones(upstream: Any, user: Any) -> None:
    stale = make(user, "av-old", started_ago=4000)
    idle = make(user, "av-idle", started_ago=1000, seen_ago=400)
    current = make(user, "av-new", started_ago=30, seen_ago=5)
    ended: list[tuple[str | None, str]] = []

    def receiver(sender: Any, session: Session, reason: str, **kwargs: Any) -> None:
        ended.append((session.session_id, reason))

    session_ended.connect(receiver)
    try:
        out, err = run()
    finally:
        session_ended.disconnect(receiver)

    assert sorted(upstream.avaturn.deleted) == ["av-idle", "av-old"]
    for row, detail in (
        (stale, "ran past its max_duration of 3600 s"),
        (idle, "no heartbeat for more than 300 s"),
    ):
        row = fresh(row)
        assert (row.status, row.end_reason, row.end_detail) == (
            SessionStatus.EXPIRED,
            EndReason.EXPIRED,
            detail,
        )
        assert row.ended_at is not None
    assert fresh(current).status == SessionStatus.LIVE
    assert sorted(ended) == [("av-idle", "expired"), ("av-old", "expired")]
    assert out.strip() == (
        "Expired 2 session(s): 2 terminated, 0 already gone, 0 marked without an "
        "upstream call; 0 failed."
    )
    assert err == ""


def test_already_gone_counts_as_expired(upstream: Any, user: Any) -> None:
    row = make(user, "av-gone", started_ago=4000)
    upstream.avaturn.on_delete(404, {"detail": "not found"})

    out, _ = run()

    assert fresh(row).status == SessionStatus.EXPIRED
    assert "0 terminated, 1 already gone" in out


@pytest.mark.parametrize(
    ("answer", "shown"),
    [
        ({"status": 503}, "avaturn terminate session failed (503)"),
        (
            {"raise": requests.ConnectTimeout("slow")},
            "avaturn terminate session failed (no answer)",
        ),
        ({"raise": requests.ConnectionError("refused")}, "(no answer)"),
    ],
)
def test_failed_terminations_leave_rows_live_and_fail_the_command(
    upstream: Any, user: Any, answer: dict[str, Any], shown: str
) -> None:
    failing = make(user, "av-fail", started_ago=4000)
    if "status" in answer:
        upstream.avaturn.on_delete(answer["status"], {"error": "down", "key": KEYS[0]})
    else:
        upstream.avaturn.on_delete_raise(answer["raise"])
    out, err = io.StringIO(), io.StringIO()

    with pytest.raises(CommandError, match=r"1 upstream termination\(s\) failed"):
        call_command("avaturn_expire_sessions", stdout=out, stderr=err)

    row = fresh(failing)
    assert (row.status, row.end_reason, row.end_detail, row.ended_at) == (
        SessionStatus.LIVE,
        "",
        "",
        None,
    )
    # Retried (TERMINATE_RETRIES=2) before giving up.
    assert len(upstream.avaturn.delete_calls()) == 3
    assert shown in err.getvalue()
    assert "av-fail" in err.getvalue()
    assert "; 1 failed." in out.getvalue()
    for key in KEYS:
        assert key not in err.getvalue() + out.getvalue()


def test_a_failed_termination_of_an_older_than_end_is_retried_by_the_next_plain_run(
    upstream: Any, user: Any
) -> None:
    """``--older-than`` is a one-off: a row it could not end stays ending for the next run.

    Put back to live, as a stale row is, a plain run would never find it stale again:
    a session still heartbeating would run on after the operator asked it to end.
    """
    failing = make(user, "av-asked", started_ago=200, seen_ago=1)
    # Stale by the rules too (silent): put back to live, a plain run finds it again.
    silent = make(user, "av-silent", started_ago=200, seen_ago=50)
    upstream.avaturn.on_delete(503, {"error": "down"})

    with pytest.raises(CommandError, match=r"2 upstream termination\(s\) failed"):
        run("--older-than", "150", "--idle", "40")

    row = fresh(failing)
    assert (row.status, row.awaiting_retry, row.end_detail) == (
        SessionStatus.ENDING,
        True,
        "older than 150 s",
    )
    assert fresh(silent).status == SessionStatus.LIVE
    upstream.avaturn.on_delete(204)
    run("--idle", "40")
    assert fresh(failing).status == SessionStatus.EXPIRED
    assert fresh(silent).status == SessionStatus.EXPIRED


def test_one_failure_does_not_stop_the_others(upstream: Any, user: Any) -> None:
    rows = [make(user, f"av-{i}", started_ago=4000) for i in range(4)]
    calls: list[str] = []

    def answer(request: Any) -> tuple[int, dict[str, str], str]:
        session_id = request.url.rsplit("/", 1)[1]
        calls.append(session_id)
        return (500 if session_id == "av-2" else 204), {}, ""

    import responses

    from tests.upstreams import DELETE_URL

    upstream.avaturn.rsps.remove(responses.DELETE, DELETE_URL)
    upstream.avaturn.rsps.add_callback(responses.DELETE, DELETE_URL, callback=answer)

    with pytest.raises(CommandError):
        run()

    statuses = {fresh(r).session_id: fresh(r).status for r in rows}
    assert statuses == {
        "av-0": SessionStatus.EXPIRED,
        "av-1": SessionStatus.EXPIRED,
        "av-2": SessionStatus.LIVE,
        "av-3": SessionStatus.EXPIRED,
    }


# Run from the command line, a command runs the system checks first, and they ask
# every configured database about its features (tests/settings.py has two).
every_database = pytest.mark.django_db(transaction=True, databases="__all__")


@every_database
def test_exit_status_is_non_zero_when_run_like_cron(upstream: Any, user: Any) -> None:
    make(user, "av-fail", started_ago=4000)
    upstream.avaturn.on_delete(502)
    command = Command(stdout=io.StringIO(), stderr=io.StringIO())

    with pytest.raises(SystemExit) as exited:
        command.run_from_argv(["manage.py", "avaturn_expire_sessions"])

    assert exited.value.code == 1


@every_database
def test_exit_status_zero_when_all_ended(upstream: Any, user: Any) -> None:
    make(user, "av-ok", started_ago=4000)
    out = io.StringIO()
    Command(stdout=out, stderr=io.StringIO()).run_from_argv(
        ["manage.py", "avaturn_expire_sessions"]
    )
    assert "1 terminated" in out.getvalue()


def test_dry_run_changes_nothing(upstream: Any, user: Any) -> None:
    stale = make(user, "av-old", started_ago=4000)
    stuck = make(user, None, status=SessionStatus.STARTING, started_ago=None, expires_in=None)
    an_hour_ago = timezone.now() - timedelta(hours=1)
    Session.objects.filter(pk=stuck.pk).update(created_at=an_hour_ago, updated_at=an_hour_ago)
    make(user, "av-new", started_ago=30)
    before = list(Session.objects.order_by("pk").values())

    out, err = run("--dry-run", verbosity=2)

    assert list(Session.objects.order_by("pk").values()) == before
    assert upstream.avaturn.delete_calls() == []
    lines = out.strip().splitlines()
    assert lines == [
        f"(starting #{stuck.pk}) (user ada@example.com): would end, never finished starting",
        "av-old (user ada@example.com): would end, ran past its max_duration of 3600 s",
        "Dry run: would end 2 session(s); nothing changed.",
    ]
    assert err == ""
    assert stale.status == SessionStatus.LIVE


def test_verbosity(upstream: Any, user: Any) -> None:
    make(user, "av-a", started_ago=4000)
    out, err = run(verbosity=0)
    assert (out, err) == ("", "")

    make(user, "av-b", started_ago=4000)
    out, _ = run(verbosity=1)
    assert len(out.strip().splitlines()) == 1

    make(user, "av-c", started_ago=4000)
    out, _ = run(verbosity=2)
    assert out.strip().splitlines()[0] == (
        "av-c (user ada@example.com): terminated, ran past its max_duration of 3600 s"
    )
    assert len(out.strip().splitlines()) == 2


def test_errors_are_shown_even_at_verbosity_zero(upstream: Any, user: Any) -> None:
    make(user, "av-a", started_ago=4000)
    upstream.avaturn.on_delete(500)
    out, err = io.StringIO(), io.StringIO()
    with pytest.raises(CommandError):
        call_command("avaturn_expire_sessions", verbosity=0, stdout=out, stderr=err)
    assert out.getvalue() == ""
    assert "av-a" in err.getvalue()


def test_no_upstream_marks_only(upstream: Any, user: Any) -> None:
    row = make(user, "av-old", started_ago=4000)
    out, err = run("--no-upstream")
    assert upstream.avaturn.delete_calls() == []
    assert fresh(row).status == SessionStatus.EXPIRED
    assert "1 marked without an upstream call" in out
    # On stderr, at every verbosity: the session may still be running (and billed) at Avaturn.
    assert err.startswith("1 session(s) recorded as ended without asking Avaturn to terminate")
    make(user, "av-older", started_ago=4000)
    assert run("--no-upstream", verbosity=0)[1].startswith("1 session(s) recorded as ended")


def test_a_plain_run_that_fails_a_crashed_start_warns_of_nothing_left_running(
    upstream: Any, user: Any
) -> None:
    """A start with no session id has nothing to terminate: it is marked, not left running."""
    crashed = make(user, None, status=SessionStatus.STARTING, started_ago=None)
    Session.objects.filter(pk=crashed.pk).update(
        created_at=timezone.now() - timedelta(hours=1),
        updated_at=timezone.now() - timedelta(hours=1),
    )
    out, err = run()
    assert fresh(crashed).status == SessionStatus.FAILED
    assert "1 marked without an upstream call" in out
    assert err == ""


def test_a_session_whose_browser_never_joined_ends_on_the_first_run_after_90_s(
    upstream: Any, user: Any, avaturn: AvaturnOverrides
) -> None:
    """A page left while its start was in flight: the session went live, nobody came."""
    unjoined = make(user, "av-unjoined", started_ago=91)
    joining = make(user, "av-joining", started_ago=80)
    joined = make(user, "av-joined", started_ago=200, seen_ago=10)

    run()

    assert (fresh(unjoined).status, fresh(unjoined).end_detail) == (
        SessionStatus.EXPIRED,
        "no heartbeat within 90 s of going live (never joined)",
    )
    assert upstream.avaturn.deleted == ["av-unjoined"]
    assert fresh(joining).status == fresh(joined).status == SessionStatus.LIVE

    # A site whose own front end sends no heartbeats turns the rule off.
    avaturn(EXPIRE_UNJOINED_AFTER=None)
    quiet = make(user, "av-quiet", started_ago=1000)
    run()
    assert fresh(quiet).status == SessionStatus.LIVE


def test_a_site_engine_session_avaturn_never_connected_ends_while_its_page_is_open(
    upstream: Any, user: Any
) -> None:
    """Its page sends heartbeats to a silent avatar: ended once the socket cannot come."""
    # CONNECT_WITHIN (120 s by default) plus EXPIRE_GRACE (60 s) after it went live.
    silent = make(user, "av-silent", started_ago=181, seen_ago=2, site_engine=True)
    waiting = make(user, "av-waiting", started_ago=170, seen_ago=2, site_engine=True)
    talking = make(user, "av-talking", started_ago=1000, seen_ago=2, site_engine=True)
    Session.objects.filter(pk=talking.pk).update(engine_connected_at=timezone.now())

    run()

    assert (fresh(silent).status, fresh(silent).end_detail) == (
        SessionStatus.EXPIRED,
        "its site engine socket did not connect within 120 s",
    )
    assert upstream.avaturn.deleted == ["av-silent"]
    assert fresh(waiting).status == fresh(talking).status == SessionStatus.LIVE


def test_a_malformed_site_engine_section_does_not_stop_the_expiry_command(
    upstream: Any, user: Any, avaturn: AvaturnOverrides, caplog: pytest.LogCaptureFixture
) -> None:
    """A site on openai-realtime never reads SITE_ENGINE; a typo there (reported by the
    checks) must not keep its stale sessions running. A silent site engine session is
    then given the longest CONNECT_WITHIN allowed, 900 s."""
    avaturn(SITE_ENGINE={"CONECT_WITHIN": 30})
    stale = make(user, "av-stale", started_ago=1000, seen_ago=400)
    silent = make(user, "av-silent", started_ago=300, seen_ago=2, site_engine=True)

    with caplog.at_level(logging.WARNING, logger="django_avaturn.sessions.expiry"):
        run()

    assert fresh(stale).status == SessionStatus.EXPIRED
    assert fresh(silent).status == SessionStatus.LIVE  # 300 s < 900 + 60
    assert "takes CONNECT_WITHIN as 900 s" in caplog.text
    assert "CONECT_WITHIN" in caplog.text  # the checks' message says which key


def test_the_sql_filter_finds_every_silent_site_engine_session(user: Any) -> None:
    """With every row well within the smallest max_duration, only the site engine clause
    of the SQL can make a silent site engine session a candidate."""
    policy = ExpiryPolicy(
        idle=300, grace=60, stuck_after=300, default_max_duration=3600, engine_connect_within=120
    )
    now = timezone.now()
    for n, started_ago in enumerate((100, 179, 181, 900)):
        make(user, f"site-{n}", started_ago=started_ago, seen_ago=5, site_engine=True)
    candidates = set(
        Session.objects.alias(began=Coalesce("started_at", "created_at"))
        .filter(policy.stale_filter(now, min_max_duration=3600))
        .values_list("session_id", flat=True)
    )
    stale = {row.session_id for row in Session.objects.all() if policy.stale_because(row, now)}
    assert stale == {"site-2", "site-3"}
    assert stale <= candidates


def test_older_than_and_idle_options(upstream: Any, user: Any) -> None:
    young = make(user, "av-young", started_ago=30, seen_ago=1)
    older = make(user, "av-older", started_ago=200, seen_ago=1)
    quiet = make(user, "av-quiet", started_ago=100, seen_ago=50)

    run("--older-than", "150", "--idle", "40")

    assert fresh(young).status == SessionStatus.LIVE
    assert fresh(older).end_detail == "older than 150 s"
    assert fresh(quiet).end_detail == "no heartbeat for more than 40 s"


@pytest.mark.parametrize("bad", ["0", "-1", "x"])
def test_options_reject_nonsense(bad: str) -> None:
    with pytest.raises(CommandError):
        call_command("avaturn_expire_sessions", "--batch-size", bad)


@pytest.mark.parametrize(
    "option",
    ["--older-than", "--idle", "--batch-size", "--purge-transcripts-older-than"],
)
def test_options_refuse_huge_values_as_usage_errors(option: str) -> None:
    # Each was once an OverflowError from timedelta, or a database range error.
    with pytest.raises(CommandError, match="must be from 1 to"):
        call_command("avaturn_expire_sessions", option, "99999999999999999999")


def test_missing_key_fails_before_claiming_anything(avaturn: AvaturnOverrides, user: Any) -> None:
    avaturn(API_KEY=None)
    row = make(user, "av-old", started_ago=4000)
    with pytest.raises(CommandError, match="API_KEY"):
        run()
    assert fresh(row).status == SessionStatus.LIVE


def test_stuck_rows_are_cleaned_up(
    upstream: Any, user: Any, caplog: pytest.LogCaptureFixture
) -> None:
    long_ago = timezone.now() - timedelta(minutes=30)
    starting = make(user, None, status=SessionStatus.STARTING, started_ago=None, expires_in=None)
    recent_start = make(user, None, status=SessionStatus.STARTING, started_ago=None)
    Session.objects.filter(pk=starting.pk).update(created_at=long_ago, updated_at=long_ago)
    ending = make(
        user, "av-ending", status=SessionStatus.ENDING, end_reason=EndReason.ADMIN, touched_ago=900
    )
    ending_no_id = make(
        user, None, status=SessionStatus.ENDING, end_reason=EndReason.REPLACED, touched_ago=900
    )
    Session.objects.filter(pk=ending_no_id.pk).update(created_at=long_ago)
    recent_end = make(user, "av-busy", status=SessionStatus.ENDING, end_reason=EndReason.CLIENT)

    with caplog.at_level(logging.WARNING, logger="django_avaturn.sessions.expiry"):
        run()

    row = fresh(starting)
    assert (row.status, row.end_reason, row.end_detail) == (
        SessionStatus.FAILED,
        EndReason.EXPIRED,
        "never finished starting",
    )
    # Its process may have died mid-create: the operator is told what may still run.
    (warning,) = [r for r in caplog.records if r.name == "django_avaturn.sessions.expiry"]
    assert warning.levelno == logging.WARNING
    assert "Marked 1 session start(s) failed" in warning.getMessage()
    assert "user_absent_timeout" in warning.getMessage()
    assert fresh(recent_start).status == SessionStatus.STARTING
    assert upstream.avaturn.deleted == ["av-ending"]
    assert (fresh(ending).status, fresh(ending).end_reason) == (
        SessionStatus.ENDED,
        EndReason.ADMIN,
    )
    assert fresh(ending_no_id).status == SessionStatus.ENDED
    assert fresh(recent_end).status == SessionStatus.ENDING


def test_a_start_claimed_while_starting_is_finished_once_it_can_create_nothing(
    upstream: Any, user: Any, avaturn: AvaturnOverrides
) -> None:
    """Ending with no session id: its start, if alive, still ends what it creates.

    Finished sooner, its slot would be free while it may still create a
    session: the user's next start would go ahead beside it.
    """
    avaturn(EXPIRE_STUCK_AFTER=1)
    in_flight = longest_in_flight()

    def claimed(seconds_ago: float) -> Session:
        row = make(user, None, status=SessionStatus.ENDING, end_reason=EndReason.CLIENT)
        at = timezone.now() - timedelta(seconds=seconds_ago)
        Session.objects.filter(pk=row.pk).update(created_at=at, updated_at=at)
        return row

    alive, dead = claimed(in_flight - 30), claimed(in_flight + 30)
    run()

    assert fresh(alive).status == SessionStatus.ENDING
    assert (fresh(dead).status, fresh(dead).end_reason) == (SessionStatus.ENDED, EndReason.CLIENT)


def test_a_crashed_start_is_failed_once_its_own_upstream_timeouts_have_run_out(
    upstream: Any, user: Any, avaturn: AvaturnOverrides
) -> None:
    """Not after a fixed EXPIRE_STUCK_AFTER: a dead start holds the caps as long as a live one."""
    avaturn(
        AVATURN_CONNECT_TIMEOUT=5.0,
        AVATURN_TIMEOUT=20.0,
        TERMINATE_RETRIES=2,
        TERMINATE_RETRY_BACKOFF=0.25,
        OPENAI_TIMEOUT=15.0,
        OPENAI_MAX_RETRIES=1,
    )
    # The replaced session's terminate: 3 attempts of 25 s, 0.25 + 0.5 s between;
    # the client secret: 2 attempts of 15 s, up to 120 s between (a Retry-After
    # the OpenAI SDK honours); the create: 25 s; and 30 s for the database.
    assert longest_start() == 75.75 + 150 + 25 + 30

    def starting(seconds_ago: float) -> Session:
        row = make(user, None, status=SessionStatus.STARTING, started_ago=None, expires_in=None)
        created = timezone.now() - timedelta(seconds=seconds_ago)
        Session.objects.filter(pk=row.pk).update(created_at=created, updated_at=created)
        return row

    dead = starting(290)  # short of EXPIRE_STUCK_AFTER (300 s)
    alive = starting(270)

    run()

    assert (fresh(dead).status, fresh(dead).end_detail) == (
        SessionStatus.FAILED,
        "never finished starting",
    )
    assert fresh(alive).status == SessionStatus.STARTING

    # Longer timeouts, a longer wait; "refuse" replaces nothing, so no terminate.
    avaturn(AVATURN_TIMEOUT=120.0, ON_SESSION_LIMIT="refuse")
    assert longest_start() == 150 + 125 + 30
    # A Cartesia token (one call within an Avaturn call's deadline) may be minted instead.
    avaturn(ENGINE="cartesia", OPENAI_MAX_RETRIES=0)
    assert longest_start() == 125 + 125 + 30
    slow = starting(275)
    run()
    assert fresh(slow).status == SessionStatus.STARTING


def test_a_start_that_stamps_its_row_after_the_sweep_read_it_is_left_alone(
    upstream: Any, user: Any
) -> None:
    """It stamped its row just as the sweep read it as stuck: the claim checks again.

    From another connection the stamp waits for the sweep's transaction (the
    row lock on PostgreSQL, the write lock on SQLite) and then finds the row
    failed; here it runs inside that transaction, between the read and the
    claim, so the claim's own check is what keeps the row.
    """
    row = make(user, None, status=SessionStatus.STARTING, started_ago=None, expires_in=None)
    long_ago = timezone.now() - timedelta(seconds=longest_start() + 60)
    Session.objects.filter(pk=row.pk).update(created_at=long_ago, updated_at=long_ago)
    resumed: list[bool] = []

    def resume_after_the_read(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        result = execute(sql, params, many, context)
        if sql.startswith("SELECT") and '"updated_at" < %s' in sql and not resumed:
            resumed.append(transitions.resume_start(row))
        return result

    with connection.execute_wrapper(resume_after_the_read):
        run()

    assert resumed == [True]
    assert fresh(row).status == SessionStatus.STARTING


def test_an_end_left_for_a_retry_is_retried_on_the_next_run_not_after_the_stuck_window(
    upstream: Any, user: Any
) -> None:
    awaiting = make(user, "av-retry", status=SessionStatus.ENDING, end_reason=EndReason.SHUTDOWN)
    Session.objects.filter(pk=awaiting.pk).update(awaiting_retry=True)
    in_flight = make(user, "av-busy", status=SessionStatus.ENDING, end_reason=EndReason.CLIENT)
    upstream.avaturn.on_delete(503)

    # It fails again: still ending (never live), still awaiting, and the command says so.
    with pytest.raises(CommandError, match="1 upstream termination"):
        run()
    row = fresh(awaiting)
    assert (row.status, row.end_reason, row.awaiting_retry) == (
        SessionStatus.ENDING,
        EndReason.SHUTDOWN,
        True,
    )

    upstream.avaturn.on_delete(200, {})
    out, _ = run()

    assert "1 terminated" in out
    assert (fresh(awaiting).status, fresh(awaiting).awaiting_retry) == (SessionStatus.ENDED, False)
    # An end in flight elsewhere (a recent claim, not awaiting) is left to its caller.
    assert fresh(in_flight).status == SessionStatus.ENDING
    called = {call.request.url.rsplit("/", 1)[1] for call in upstream.avaturn.delete_calls()}
    assert called == {"av-retry"}


def test_batches_keep_queries_flat(upstream: Any, user: Any) -> None:
    def queries_for(n: int) -> int:
        for i in range(n):
            make(user, f"av-{n}-{i}", started_ago=4000)
        with CaptureQueriesContext(connection) as captured:
            report = expire_sessions(batch_size=1000)
        assert report.tally.ended == n
        return len(captured.captured_queries)

    assert queries_for(3) == queries_for(30)


def test_small_batches_still_reach_every_row(upstream: Any, user: Any) -> None:
    for i in range(7):
        make(user, f"av-{i}", started_ago=4000)
    make(user, "av-new", started_ago=10)

    report = expire_sessions(batch_size=2)

    assert report.tally.ended == 7
    assert len(upstream.avaturn.deleted) == 7
    assert Session.objects.live().count() == 1


@pytest.mark.postgres
def test_rows_locked_by_another_host_are_skipped_not_waited_for(upstream: Any, user: Any) -> None:
    import threading

    from django.db import transaction

    rows = [make(user, f"av-{i}", started_ago=4000) for i in range(4)]
    locked, release = threading.Event(), threading.Event()

    def other_host() -> None:
        try:
            with transaction.atomic():
                list(Session.objects.select_for_update().filter(pk__in=[rows[0].pk, rows[1].pk]))
                locked.set()
                release.wait(timeout=30)
        finally:
            connection.close()

    holder = threading.Thread(target=other_host)
    holder.start()
    try:
        assert locked.wait(timeout=10)
        report = expire_sessions(batch_size=10)
    finally:
        release.set()
        holder.join(timeout=30)

    assert report.tally.ended == 2
    assert sorted(upstream.avaturn.deleted) == ["av-2", "av-3"]
    assert [fresh(r).status for r in rows] == [
        SessionStatus.LIVE,
        SessionStatus.LIVE,
        SessionStatus.EXPIRED,
        SessionStatus.EXPIRED,
    ]


# --------------------------------------------------------------------------- the building blocks


def test_run_bounded_keeps_order_isolates_failures_and_bounds_threads() -> None:
    import threading
    import time

    from django_avaturn.upstream.pool import run_bounded

    in_flight, peak = 0, 0
    lock = threading.Lock()

    def work(n: int) -> int:
        nonlocal in_flight, peak
        with lock:
            in_flight += 1
            peak = max(peak, in_flight)
        time.sleep(0.01)
        with lock:
            in_flight -= 1
        if n == 3:
            raise ValueError("three")
        return n * 10

    results = run_bounded(work, list(range(8)), max_workers=3)

    assert results[:3] == [0, 10, 20] and results[4:] == [40, 50, 60, 70]
    assert isinstance(results[3], ValueError)
    assert peak == 3
    assert run_bounded(work, []) == []


@pytest.mark.parametrize("bad", [0, -1, True, "8"])
def test_terminate_concurrency_must_be_a_positive_int(avaturn: AvaturnOverrides, bad: Any) -> None:
    from django_avaturn.exceptions import NotConfigured
    from django_avaturn.upstream.pool import terminate_concurrency

    avaturn(TERMINATE_CONCURRENCY=bad)
    with pytest.raises(NotConfigured):
        terminate_concurrency()


def test_a_bug_in_a_worker_surfaces_after_the_rows_are_made_consistent(
    upstream: Any, user: Any, monkeypatch: Any
) -> None:
    from django_avaturn.upstream.avaturn import AvaturnClient

    ok = make(user, "av-ok", started_ago=4000)
    buggy = make(user, "av-bug", started_ago=4000)
    real = AvaturnClient.terminate_session

    def terminate(self: AvaturnClient, session_id: str) -> bool:
        if session_id == "av-bug":
            raise KeyError("a bug")
        return real(self, session_id)

    monkeypatch.setattr(AvaturnClient, "terminate_session", terminate)

    with pytest.raises(KeyError):
        expire_sessions()

    assert fresh(ok).status == SessionStatus.EXPIRED
    assert fresh(buggy).status == SessionStatus.LIVE


def test_batches_must_hold_a_row(user: Any) -> None:
    with pytest.raises(ValueError, match="batch_size"):
        expire_sessions(batch_size=0, dry_run=True)
