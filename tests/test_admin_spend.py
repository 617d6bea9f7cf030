"""The admin's spend controls: usage summary and page, the kill switch, transcripts inline,
and the expiry command's transcript purge."""

from __future__ import annotations

import io
import re
from datetime import timedelta
from typing import Any

import pytest
from django.core.management import call_command
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from django_avaturn.models import EndReason, ServiceSwitch, Session, SessionStatus, Transcript
from django_avaturn.spend import limits
from tests.helpers import CHANGELIST, KEYS, AvaturnOverrides, at, live, logged_in, staff

pytestmark = pytest.mark.django_db(transaction=True)

USAGE = f"{CHANGELIST}usage/"
KILL = f"{CHANGELIST}kill-switch/"


def ended(user: Any, session_id: str, minutes: int, days_ago: int = 0) -> Session:
    start = timezone.now() - timedelta(days=days_ago, minutes=minutes + 5)
    return Session.objects.create(
        user=user,
        session_id=session_id,
        status=SessionStatus.ENDED,
        created_at=start,  # sessions count on the day their start began
        started_at=start,
        ended_at=start + timedelta(minutes=minutes),
        end_reason=EndReason.CLIENT,
    )


@pytest.fixture
def admin_client(django_user_model: Any) -> Client:
    root = django_user_model.objects.create_superuser(email="root@example.com", password="pw")
    return logged_in(root)


def test_changelist_summarises_usage_for_the_current_filter(
    admin_client: Client, user: Any, other_user: Any
) -> None:
    ended(user, "a", 10)
    ended(other_user, "b", 20)
    live(user, "c")

    everything = admin_client.get(CHANGELIST)
    assert everything.context["usage_summary"]["sessions"] == 3
    assert everything.context["usage_summary"]["live"] == 1
    # 30 minutes ended plus the live one's 90 seconds so far.
    assert 31.4 <= everything.context["usage_summary"]["minutes"] <= 31.6

    only_ended = admin_client.get(CHANGELIST, {"status__exact": "ended"})
    assert only_ended.context["usage_summary"] == {"sessions": 2, "minutes": 30.0, "live": 0}
    assert (
        b"Matching these filters: 2 started sessions, 30 minutes of conversation, 0 live now."
        in only_ended.content
    )


def test_a_single_short_session_is_counted_in_words(
    admin_client: Client, user: Any, monkeypatch: Any
) -> None:
    # Noon: the bar of a session five minutes ago is today's.
    at(monkeypatch, timezone.now().replace(hour=12, minute=0, second=0, microsecond=0))
    start = timezone.now() - timedelta(minutes=5)
    Session.objects.create(
        user=user,
        session_id="brief",
        status=SessionStatus.ENDED,
        started_at=start,
        ended_at=start + timedelta(seconds=1),
        end_reason=EndReason.CLIENT,
    )
    live(user, "now")  # live for 90 seconds so far

    page = admin_client.get(CHANGELIST).content.decode()
    assert (
        "Matching these filters: 2 started sessions, 1 minute, 31 seconds of conversation, "
        "1 live now." in page
    )
    page = admin_client.get(CHANGELIST, {"status__exact": "ended"}).content.decode()
    assert (
        "Matching these filters: 1 started session, 1 second of conversation, 0 live now." in page
    )

    usage = admin_client.get(USAGE, {"status__exact": "ended"})
    text = usage.content.decode()
    assert "1 started session, 1 second of conversation in the selection." in text
    assert "Tallest bar: 1 second." in text
    assert "<td>1 second</td>" in text
    (bar,) = [bar for bar in usage.context["bars"] if bar.height]
    assert bar.title.endswith(": 1 second, 1 session")


def test_usage_page_has_a_chart_and_per_user_rows(
    admin_client: Client, user: Any, other_user: Any, monkeypatch: Any
) -> None:
    # Noon today: a session ending "25 minutes ago" just after midnight
    # would count on the day before, and the peak would be another day's.
    at(monkeypatch, timezone.now().replace(hour=12, minute=0, second=0, microsecond=0))
    ended(user, "a", 10)
    ended(user, "b", 5, days_ago=2)
    ended(other_user, "c", 20)

    response = admin_client.get(USAGE)

    assert response.status_code == 200
    rows = response.context["per_user"]
    assert [(str(r["user"]), r["sessions"], r["minutes"]) for r in rows] == [
        ("bob@example.com", 1, 20.0),
        ("ada@example.com", 2, 15.0),
    ]
    assert len(response.context["bars"]) == 30
    assert response.context["peak"] == 30.0
    text = response.content.decode()
    assert "3 started sessions, 35 minutes of conversation in the selection." in text
    assert "Tallest bar: 30 minutes." in text
    assert "<th>Time talked</th>" in text
    assert "<td>20 minutes</td>" in text
    assert [bar.title for bar in response.context["bars"] if bar.height][-1].endswith(
        ": 30 minutes, 2 sessions"
    )
    assert response.content.count(b"<rect") == 30
    # Filters carry over from the changelist.
    filtered = admin_client.get(USAGE, {"user__id__exact": user.pk})
    assert [r["user_id"] for r in filtered.context["per_user"]] == [user.pk]


def test_usage_page_groups_by_engine_and_the_changelist_filters_by_it(
    admin_client: Client, user: Any, other_user: Any, monkeypatch: Any
) -> None:
    at(monkeypatch, timezone.now().replace(hour=12, minute=0, second=0, microsecond=0))
    ended(user, "a", 10)
    ended(other_user, "b", 20)
    Session.objects.filter(session_id="b").update(engine="cartesia")
    ended(other_user, "c", 4)
    Session.objects.filter(session_id="c").update(engine="cartesia")

    response = admin_client.get(USAGE)
    rows = response.context["per_engine"]
    assert [(r["engine"], r["sessions"], r["talked"]) for r in rows] == [
        ("cartesia", 2, "24 minutes"),
        ("openai-realtime", 1, "10 minutes"),
    ]
    text = response.content.decode()
    assert "<h2>Per engine</h2>" in text
    assert '?engine__exact=cartesia">Cartesia Line agent</a>' in text

    listed = admin_client.get(CHANGELIST, {"engine__exact": "cartesia"})
    assert sorted(row.session_id for row in listed.context["cl"].result_list) == ["b", "c"]
    only = admin_client.get(USAGE, {"engine__exact": "openai-realtime"})
    assert [r["engine"] for r in only.context["per_engine"]] == ["openai-realtime"]


@pytest.mark.parametrize(
    "query", ["foo=bar", "created_at__gte=notadate", "user__id__in=1,a", "created_at__year=abc"]
)
def test_usage_page_sends_unusable_filters_back_to_the_changelist(
    admin_client: Client, query: str
) -> None:
    response = admin_client.get(f"{USAGE}?{query}")
    assert response.status_code == 302
    assert response["Location"] == f"{CHANGELIST}?e=1"


def test_changelist_opens_and_says_why_with_a_malformed_kill_switch_setting(
    admin_client: Client, avaturn: AvaturnOverrides
) -> None:
    # The page holding the kill switch must open whatever the settings.
    avaturn(SESSIONS_ENABLED="yes")
    response = admin_client.get(CHANGELIST)
    assert response.status_code == 200
    errors = [str(m) for m in response.context["messages"] if m.level_tag == "error"]
    assert errors == ["SESSIONS_ENABLED must be True or False, not 'yes'."]


def test_the_changelist_reads_the_switch_and_its_reason_where_a_flip_writes_them(
    admin_client: Client, settings: Any
) -> None:
    # A replica may lag the flip: state and reason are read once, from the primary.
    limits.set_sessions_enabled(False, reason="billing incident")
    settings.DATABASE_ROUTERS = ["tests.routers.SwitchReadsFromAReplica"]

    response = admin_client.get(CHANGELIST)

    assert response.status_code == 200
    assert response.context["switch_stopped"] is True
    assert b"New sessions are stopped (kill switch). billing incident" in response.content


def test_sessions_stopped_by_the_setting_are_not_shown_as_the_kill_switch(
    admin_client: Client, avaturn: AvaturnOverrides, user: Any, upstream: Any
) -> None:
    """The setting is not the switch: the page says which stops them, and can still stop all.

    (Found by a trial: the page said "kill switch" and offered only to allow sessions
    again, which answered "allowed again" while the setting still stopped them.)
    """
    avaturn(SESSIONS_ENABLED=False)
    live(user, "run-0")

    page = admin_client.get(CHANGELIST).content.decode()

    assert "New sessions are stopped by the SESSIONS_ENABLED setting." in page
    assert "(kill switch)" not in page
    assert "Stop all sessions now" in page
    assert "Allow new sessions again" not in page
    admin_client.post(KILL, {"enable": "0", "confirm": "yes"})
    assert upstream.avaturn.deleted == ["run-0"]

    page = admin_client.get(CHANGELIST).content.decode()
    assert "(kill switch)" in page and "SESSIONS_ENABLED setting" in page
    response = admin_client.post(KILL, {"enable": "1"}, follow=True)
    assert [str(m) for m in response.context["messages"]] == [
        "The kill switch no longer stops new sessions, but the SESSIONS_ENABLED setting still does."
    ]
    assert not limits.sessions_enabled()


def test_usage_page_needs_view_permission(django_user_model: Any) -> None:
    nobody = logged_in(staff(django_user_model, "nobody@example.com"))
    assert nobody.get(USAGE).status_code == 403


def test_kill_switch_stops_new_sessions_and_terminates_running_ones(
    admin_client: Client, user: Any, upstream: Any, api_client: Any
) -> None:
    from tests.helpers import LIST_URL, csrf_post

    for n in range(3):
        live(user, f"run-{n}")

    response = admin_client.post(
        KILL, {"enable": "0", "reason": "billing incident", "confirm": "yes"}, follow=True
    )

    assert response.status_code == 200
    assert sorted(upstream.avaturn.deleted) == ["run-0", "run-1", "run-2"]
    assert set(Session.objects.values_list("status", "end_reason")) == {
        (SessionStatus.ENDED, EndReason.SHUTDOWN)
    }
    switch = ServiceSwitch.objects.get()
    assert (switch.sessions_enabled, switch.reason) == (False, "billing incident")
    messages = [str(m) for m in response.context["messages"]]
    assert "Terminated 3 sessions." in messages
    assert b"New sessions are stopped (kill switch)." in response.content

    refused = csrf_post(api_client, LIST_URL, {})
    assert (refused.status_code, refused.json()["code"]) == (503, "sessions_disabled")

    admin_client.post(KILL, {"enable": "1"})
    assert limits.sessions_enabled()
    assert csrf_post(api_client, LIST_URL, {}).status_code == 201


def test_the_kill_switch_with_nothing_running_says_so(admin_client: Client, upstream: Any) -> None:
    response = admin_client.post(KILL, {"enable": "0", "confirm": "yes"}, follow=True)

    messages = [str(m) for m in response.context["messages"]]
    assert "No sessions were running." in messages
    assert "No sessions were selected." not in messages  # the bulk action's words
    assert not limits.sessions_enabled()


def test_a_kill_switch_reason_with_control_characters_still_stops_everything(
    admin_client: Client, user: Any, upstream: Any
) -> None:
    """PostgreSQL refuses a NUL in text: the switch must still go off, and the sweep run."""
    live(user, "run-0")
    reason = "x\x00y\x07\x1b[31m z\n" + "w" * 300

    response = admin_client.post(KILL, {"enable": "0", "reason": reason, "confirm": "yes"})

    assert response.status_code == 302
    assert not limits.sessions_enabled()
    switch = ServiceSwitch.objects.get()
    assert switch.reason == ("xy[31m z " + "w" * 300)[:200]
    assert upstream.avaturn.deleted == ["run-0"]
    assert Session.objects.get().status == SessionStatus.ENDED


def test_the_switch_cleans_any_callers_reason() -> None:
    switch = limits.set_sessions_enabled(False, reason="\x00" * 10 + "ok\tthen" + "!" * 500)
    assert switch.reason == ("ok then" + "!" * 500)[:200]
    assert ServiceSwitch.objects.get().reason == switch.reason


def test_kill_switch_needs_the_terminate_permission(django_user_model: Any, user: Any) -> None:
    viewer = logged_in(staff(django_user_model, "v@example.com", "view_session"))
    row = live(user, "x")
    assert viewer.post(KILL, {"enable": "0", "confirm": "yes"}).status_code == 403
    assert limits.sessions_enabled()
    row.refresh_from_db()
    assert row.status == SessionStatus.LIVE
    assert b"Stop all sessions now" not in viewer.get(CHANGELIST).content


def test_kill_switch_needs_csrf(django_user_model: Any) -> None:
    root = django_user_model.objects.create_superuser(email="r2@example.com", password="pw")
    client = Client(enforce_csrf_checks=True)
    client.force_login(root)
    assert client.post(KILL, {"enable": "0", "confirm": "yes"}).status_code == 403
    assert limits.sessions_enabled()


def transcript_page(row: Session) -> str:
    return f"{CHANGELIST}{row.pk}/transcript/"


def say(row: Session, count: int) -> None:
    Transcript.objects.bulk_create(
        (
            Transcript(session=row, role="user" if n % 2 else "avatar", text=f"line {n:05d}")
            for n in range(count)
        ),
        batch_size=5000,
    )


def shown_lines(page: str) -> list[str]:
    return re.findall(r"<tr data-transcript-line>.*?<td>(line \d+)</td>", page, re.DOTALL)


def test_transcripts_show_read_only_on_the_change_page(
    admin_client: Client, user: Any, avaturn: AvaturnOverrides
) -> None:
    avaturn(TRANSCRIPTS_ENABLED=True)
    row = live(user, "talk")
    Transcript.objects.create(session=row, role="user", text="What is <b>Django</b>?")
    Transcript.objects.create(session=row, role="avatar", text="A web framework.")

    page = admin_client.get(f"{CHANGELIST}{row.pk}/change/").content.decode()

    section = page.split('id="avaturn-transcript"')[1]
    assert "What is &lt;b&gt;Django&lt;/b&gt;?" in section  # escaped, as any text a visitor sent
    assert "A web framework." in section
    assert "<textarea" not in section and "<input" not in section
    assert transcript_page(row) not in page  # all of it is here: no link to more
    for key in KEYS:
        assert key not in page


def test_a_30000_line_transcript_shows_one_page_in_a_constant_number_of_queries(
    admin_client: Client, user: Any, avaturn: AvaturnOverrides
) -> None:
    avaturn(TRANSCRIPTS_ENABLED=True)
    short, long = live(user, "short"), live(user, "long")
    say(short, 3)
    say(long, 30_000)

    def render(row: Session) -> tuple[str, list[str]]:
        with CaptureQueriesContext(connection) as captured:
            response = admin_client.get(f"{CHANGELIST}{row.pk}/change/")
        assert response.status_code == 200
        return response.content.decode(), [q["sql"] for q in captured.captured_queries]

    render(short)  # the first request of a process also fills caches (content types)
    _, short_queries = render(short)
    page, queries = render(long)

    # The same statements for 3 lines and for 30,000: a count, and one page.
    assert len(queries) == len(short_queries)
    on_lines = [sql for sql in queries if "avaturn_transcript" in sql.lower()]
    assert len(on_lines) == 2
    assert any("LIMIT 200" in sql.upper() for sql in on_lines)
    # Only that page reaches the page, in the order it was said.
    assert shown_lines(page) == [f"line {n:05d}" for n in range(200)]
    assert f'href="{transcript_page(long)}"' in page
    assert "Read all 30000 lines" in page


def test_the_transcript_page_reads_the_rest_a_page_at_a_time(
    admin_client: Client, user: Any, settings: Any
) -> None:
    row = live(user, "chatty")
    say(row, 450)

    first = admin_client.get(transcript_page(row))
    last = admin_client.get(transcript_page(row), {"p": 3})
    beyond = admin_client.get(transcript_page(row), {"p": "nonsense"})

    assert first.status_code == last.status_code == beyond.status_code == 200
    assert shown_lines(first.content.decode()) == [f"line {n:05d}" for n in range(200)]
    assert shown_lines(last.content.decode()) == [f"line {n:05d}" for n in range(400, 450)]
    assert "Lines 401 to 450 of 450." in last.content.decode()
    assert 'href="?p=2"' in last.content.decode()
    assert shown_lines(beyond.content.decode())[0] == "line 00000"  # a bad page number: the first


def test_reading_transcripts_takes_their_own_permission(
    django_user_model: Any, user: Any, avaturn: AvaturnOverrides
) -> None:
    avaturn(TRANSCRIPTS_ENABLED=True)
    row = live(user, "private")
    say(row, 3)
    sessions_only = logged_in(staff(django_user_model, "v@example.com", "view_session"))
    both = logged_in(staff(django_user_model, "t@example.com", "view_session", "view_transcript"))

    page = sessions_only.get(f"{CHANGELIST}{row.pk}/change/").content.decode()
    assert 'id="avaturn-transcript"' not in page and "line 00000" not in page
    assert sessions_only.get(transcript_page(row)).status_code == 403

    assert shown_lines(both.get(f"{CHANGELIST}{row.pk}/change/").content.decode())
    assert both.get(transcript_page(row)).status_code == 200
    assert both.get(f"{CHANGELIST}999999/transcript/").status_code == 404
    # Not staff at all: the admin's login page.
    outsider = logged_in(user)
    answer = outsider.get(transcript_page(row))
    assert answer.status_code == 302 and "/login/" in answer["Location"]


def test_no_transcript_section_while_transcripts_are_off(
    admin_client: Client, user: Any, avaturn: AvaturnOverrides
) -> None:
    row = live(user, "quiet")

    off = admin_client.get(f"{CHANGELIST}{row.pk}/change/").content.decode()
    assert 'id="avaturn-transcript"' not in off and ">Transcript<" not in off

    avaturn(TRANSCRIPTS_ENABLED=True)
    on = admin_client.get(f"{CHANGELIST}{row.pk}/change/").content.decode()
    assert "No transcript lines are stored for this session yet." in on

    # Turned off later: the lines stored meanwhile stay readable, and say why no more come.
    say(row, 2)
    avaturn(TRANSCRIPTS_ENABLED=False)
    later = admin_client.get(f"{CHANGELIST}{row.pk}/change/").content.decode()
    assert shown_lines(later) == ["line 00000", "line 00001"]
    assert "Transcripts are off on this site" in later


def test_expiry_command_purges_old_transcripts(
    avaturn: AvaturnOverrides, user: Any, upstream: Any
) -> None:
    row = ended(user, "old", 5)
    old_line = Transcript.objects.create(session=row, role="user", text="old")
    Transcript.objects.filter(pk=old_line.pk).update(created_at=timezone.now() - timedelta(days=40))
    Transcript.objects.create(session=row, role="user", text="new")

    out = io.StringIO()
    call_command("avaturn_expire_sessions", "--dry-run", stdout=out)
    assert "older than" not in out.getvalue()  # no retention configured: nothing purged

    avaturn(TRANSCRIPT_RETENTION_DAYS=30)
    out = io.StringIO()
    call_command("avaturn_expire_sessions", "--dry-run", stdout=out)
    assert "Would delete 1 transcript line(s) older than 30 day(s)." in out.getvalue()
    assert Transcript.objects.count() == 2

    out = io.StringIO()
    call_command("avaturn_expire_sessions", stdout=out)
    assert "Deleted 1 transcript line(s) older than 30 day(s)." in out.getvalue()
    assert list(Transcript.objects.values_list("text", flat=True)) == ["new"]

    out = io.StringIO()
    call_command("avaturn_expire_sessions", "--purge-transcripts-older-than", "1", stdout=out)
    assert Transcript.objects.count() == 1  # "new" is younger than a day


def test_purge_works_in_batches(user: Any) -> None:
    from django_avaturn.exceptions import NotConfigured
    from django_avaturn.sessions.retention import purge_transcripts, retention_days

    row = ended(user, "many", 5)
    Transcript.objects.bulk_create(
        Transcript(
            session=row, role="user", text=str(n), created_at=timezone.now() - timedelta(days=9)
        )
        for n in range(5)
    )
    assert purge_transcripts(older_than_days=7, batch_size=2) == 5
    assert Transcript.objects.count() == 0
    with pytest.raises(NotConfigured):
        retention_days(-1)


@pytest.mark.parametrize(
    ("seconds", "said"),
    [
        (0, "0 seconds"),
        (0.9, "0 seconds"),
        (1, "1 second"),
        (59.5, "59 seconds"),
        (60, "1 minute"),
        (61, "1 minute, 1 second"),
        (125, "2 minutes, 5 seconds"),
        (3600, "1 hour"),
        (3659, "1 hour"),
        (3660, "1 hour, 1 minute"),
        (7322, "2 hours, 2 minutes"),
    ],
)
def test_durations_are_said_in_words(seconds: float, said: str) -> None:
    from django_avaturn.spend.usage import describe_duration

    assert describe_duration(seconds) == said
