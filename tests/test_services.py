"""The service layer directly: signals, ending semantics, replacement while starting."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import AnonymousUser

from django_avaturn import services
from django_avaturn.exceptions import SessionNotLive, UpstreamError
from django_avaturn.models import EndReason, Session, SessionStatus
from django_avaturn.sessions import transitions
from django_avaturn.sessions.ending import end_own_session, end_sessions
from django_avaturn.sessions.outcomes import Outcome
from django_avaturn.signals import session_ended, session_started
from django_avaturn.upstream.clients import get_avaturn_client, get_openai_secrets
from django_avaturn.upstream.redaction import excerpt, scrub
from tests.helpers import KEYS, LIST_URL, AvaturnOverrides, csrf_post, live

pytestmark = pytest.mark.django_db(transaction=True)


def test_start_requires_a_signed_in_user(upstream: Any) -> None:
    with pytest.raises(ValueError, match="signed-in"):
        services.start_session(AnonymousUser())  # type: ignore[arg-type]


def test_signals_fire_once_each(user: Any, upstream: Any) -> None:
    started: list[Any] = []
    ended: list[Any] = []

    def on_start(sender: Any, session: Session, request: Any, **kwargs: Any) -> None:
        started.append((sender, session.session_id, request))

    def on_end(sender: Any, session: Session, reason: str, **kwargs: Any) -> None:
        ended.append((session.session_id, reason, session.status))

    session_started.connect(on_start)
    session_ended.connect(on_end)
    try:
        result = services.start_session(user)
        services.end_session(result.session, reason=EndReason.ADMIN)
        services.end_session(result.session, reason=EndReason.CLIENT)
    finally:
        session_started.disconnect(on_start)
        session_ended.disconnect(on_end)
    assert started == [(Session, "av-sess-1", None)]
    assert ended == [("av-sess-1", EndReason.ADMIN, SessionStatus.ENDED)]


def test_a_failing_receiver_does_not_undo_the_start(
    user: Any, upstream: Any, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(**kwargs: Any) -> None:
        raise RuntimeError("receiver bug")

    session_started.connect(broken)
    try:
        result = services.start_session(user)
    finally:
        session_started.disconnect(broken)
    assert result.session.status == SessionStatus.LIVE
    assert "A session_started receiver" in caplog.text and "RuntimeError" in caplog.text


def test_a_receiver_that_ends_the_session_gets_the_start_no_token(
    user: Any, upstream: Any, api_client: Any
) -> None:
    """A site's rule applied once the session is live (its own policy, a check it makes
    with the row) may end it: the visitor's page then gets a 409, not a token."""

    def end_it(sender: Any, session: Session, **kwargs: Any) -> None:
        services.end_session(session, reason=EndReason.ADMIN, detail="refused by the site")

    session_started.connect(end_it)
    try:
        with pytest.raises(SessionNotLive):
            services.start_session(user)
        response = csrf_post(api_client, LIST_URL, {})
    finally:
        session_started.disconnect(end_it)
    assert response.status_code == 409
    assert response.json()["code"] == "session_ended"
    assert "token" not in response.json()
    rows = list(Session.objects.order_by("pk").values_list("status", "end_reason"))
    assert rows == [(SessionStatus.ENDED, EndReason.ADMIN)] * 2
    assert len(upstream.avaturn.delete_calls()) == 2


def test_ending_a_row_deleted_meanwhile_is_skipped(user: Any, upstream: Any) -> None:
    # A Stop or the admin's button racing the deletion of the user (and with
    # them their rows): the deletion ends what ran upstream; the end is moot.
    row = services.start_session(user).session
    Session.objects.filter(pk=row.pk).delete()
    assert services.end_session(row, reason=EndReason.CLIENT) is Outcome.SKIPPED
    assert upstream.avaturn.delete_calls() == []


def test_a_failed_terminate_of_a_row_deleted_meanwhile_raises_the_upstream_error(
    user: Any, upstream: Any
) -> None:
    row = services.start_session(user).session

    def deleted_while_terminating(request: Any) -> tuple[int, dict[str, str], str]:
        Session.objects.filter(pk=row.pk).delete()
        return 500, {}, '{"detail": "down"}'

    upstream.avaturn.on_delete_call(deleted_while_terminating)
    with pytest.raises(UpstreamError):
        services.end_session(row, reason=EndReason.CLIENT)


def test_end_outcomes(user: Any, upstream: Any) -> None:
    first = services.start_session(user).session
    assert services.end_session(first, reason=EndReason.CLIENT) is Outcome.TERMINATED
    assert services.end_session(first, reason=EndReason.CLIENT) is Outcome.SKIPPED

    second = services.start_session(user).session
    upstream.avaturn.on_delete(404, {"detail": "gone"})
    assert services.end_session(second, reason=EndReason.ADMIN) is Outcome.ALREADY_GONE
    second.refresh_from_db()
    assert (second.status, second.end_reason) == (SessionStatus.ENDED, EndReason.ADMIN)


def test_expired_reason_gives_expired_status(user: Any, upstream: Any) -> None:
    session = services.start_session(user).session
    services.end_session(session, reason=EndReason.EXPIRED, detail="idle 300 s")
    session.refresh_from_db()
    assert (session.status, session.end_detail) == (SessionStatus.EXPIRED, "idle 300 s")
    assert session.duration is not None


def test_unknown_reason_is_refused(user: Any, upstream: Any) -> None:
    session = services.start_session(user).session
    with pytest.raises(ValueError, match="Unknown end reason"):
        services.end_session(session, reason="bored")
    # The bulk way in keeps the same rule (the reason is stored as given).
    with pytest.raises(ValueError, match="Unknown end reason"):
        end_sessions(Session.objects.all(), reason="bored")
    session.refresh_from_db()
    assert session.status == SessionStatus.LIVE


# 0: before the claim (it went live first); 1: after it (claimed while starting).
# end_session runs two statements when it claims a starting row: no later point.
@pytest.mark.parametrize("statements_before", [0, 1])
def test_a_row_going_live_while_end_session_claims_it_is_never_left_running(
    user: Any, upstream: Any, statements_before: int
) -> None:
    """The row's start activates it at any point among end_session's statements."""
    from django.db import connection
    from django.utils import timezone

    row = Session.objects.create(user=user, status=SessionStatus.STARTING, max_duration=600)
    seen = []
    activated = []

    def activate(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        if len(seen) == statements_before and not activated:
            seen.append("(the activation)")  # which passes through here too
            # What the start's _activate() does, if it runs just now.
            activated.append(
                Session.objects.filter(pk=row.pk, status=SessionStatus.STARTING).update(
                    status=SessionStatus.LIVE, session_id="av-went-live", started_at=timezone.now()
                )
            )
        seen.append(sql)
        return execute(sql, params, many, context)

    with connection.execute_wrapper(activate):
        outcome = services.end_session(row, reason=EndReason.ADMIN)

    assert activated  # the activation did run, at the point asked for
    row.refresh_from_db()
    terminated = [call.request.url for call in upstream.avaturn.delete_calls()]
    if activated == [1]:
        # It went live before the claim caught it: terminated here.
        assert outcome is Outcome.TERMINATED
        assert terminated == ["https://avaturn.test/api/v1/sessions/av-went-live"]
        assert (row.status, row.end_reason) == (SessionStatus.ENDED, EndReason.ADMIN)
    else:
        # Claimed while starting: its activation fails, and its request
        # terminates what it created (test_ending_a_row_that_is_still_starting...).
        assert outcome is Outcome.STOPPED
        assert terminated == []
        assert (row.status, row.session_id) == (SessionStatus.ENDING, None)


def test_ending_a_row_that_is_still_starting_makes_its_start_clean_up(
    user: Any, upstream: Any
) -> None:
    """Staff (or a newer start) end a row while its request is talking to Avaturn."""

    def create_and_meanwhile_end(request: Any) -> tuple[int, dict[str, str], str]:
        row = Session.objects.get(status=SessionStatus.STARTING)
        outcome = services.end_session(row, reason=EndReason.ADMIN)
        assert outcome is Outcome.STOPPED
        return original(request)

    original = upstream.avaturn._create
    import responses

    upstream.avaturn.rsps.replace(
        responses.POST, "https://avaturn.test/api/v1/sessions", body=b"", status=200
    )
    upstream.avaturn.rsps.remove(responses.POST, "https://avaturn.test/api/v1/sessions")
    upstream.avaturn.rsps.add_callback(
        responses.POST, "https://avaturn.test/api/v1/sessions", callback=create_and_meanwhile_end
    )

    with pytest.raises(SessionNotLive):
        services.start_session(user)

    row = Session.objects.get()
    assert (row.status, row.end_reason, row.session_id) == (
        SessionStatus.ENDED,
        EndReason.ADMIN,
        "av-sess-1",
    )
    assert upstream.avaturn.deleted == ["av-sess-1"]


def test_heartbeat_on_ended_session_raises(user: Any, other_user: Any, upstream: Any) -> None:
    session = services.start_session(user).session
    assert session.session_id is not None
    assert transitions.record_heartbeat(session.session_id, user.pk) is True
    session.refresh_from_db()
    assert session.last_seen_at is not None
    assert transitions.record_heartbeat(session.session_id, other_user.pk) is False
    services.end_session(session, reason=EndReason.CLIENT)
    with pytest.raises(SessionNotLive):
        transitions.record_heartbeat(session.session_id, user.pk)


def test_reprs_hide_tokens_and_keys(user: Any, upstream: Any) -> None:
    started = services.start_session(user)
    texts = [
        repr(started),
        repr(get_avaturn_client()),
        repr(get_openai_secrets()),
        repr(started.session),
        str(started.session),
    ]
    for text in texts:
        assert "av-token-1" not in text
        for key in KEYS:
            assert key not in text
    assert str(Session(pk=7)) == "(starting #7)"
    assert str(Session(pk=8, status=SessionStatus.FAILED)) == "(failed #8)"


def test_upstream_error_text() -> None:
    error = UpstreamError(
        service="avaturn", operation="create session", upstream_status=500, body_excerpt="boom"
    )
    assert str(error) == "avaturn create session failed (500): boom"
    assert repr(error) == "UpstreamError('avaturn create session failed (500): boom')"
    no_answer = UpstreamError(service="openai", operation="client_secrets.create")
    assert no_answer.describe() == "openai client_secrets.create failed (no answer)"


def test_scrub_removes_known_keys_and_credential_shapes() -> None:
    text = (
        f"key {KEYS[0]} and {KEYS[1]} and sk-otherproject12345 and ek_abcdefghijk "
        "and Authorization: Bearer abcdefghijklmnop"
    )
    cleaned = scrub(text)
    for secret in (*KEYS, "sk-otherproject12345", "ek_abcdefghijk", "abcdefghijklmnop"):
        assert secret not in cleaned
    assert cleaned.count("[redacted]") == 5


def test_scrub_removes_a_key_configured_with_surrounding_whitespace(
    avaturn: AvaturnOverrides,
) -> None:
    # Keys read from a file often end in a newline; the client sends them stripped,
    # so an upstream echo carries the stripped key, which must be scrubbed too.
    avaturn(API_KEY="av-live-key-from-a-file\n")
    cleaned = scrub("invalid key av-live-key-from-a-file in request")
    assert "av-live-key-from-a-file" not in cleaned
    assert cleaned == "invalid key [redacted] in request"


def test_excerpt_is_short_single_line_and_scrubbed() -> None:
    body = ("line one\n\n" + KEYS[0] + " " + "x" * 1000).encode()
    text = excerpt(body, limit=50)
    assert len(text) == 50
    assert "\n" not in text
    assert KEYS[0] not in text
    assert excerpt(None) == ""
    # A NUL or a terminal escape an upstream sent is written as its escape.
    assert excerpt(b"bad\x00gateway \x1b[31mred") == "bad\\x00gateway \\x1b[31mred"


def test_every_bulk_end_leaves_a_log_line(
    user: Any, upstream: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # The kill switch, the admin's action, sign-out and expiry end sessions
    # in bulk; each end must be findable in the log, as a single end is.
    session = services.start_session(user).session
    caplog.set_level("INFO", logger="django_avaturn")
    end_sessions(Session.objects.all(), reason=EndReason.SHUTDOWN)
    assert f"Ended Avaturn session {session.session_id} (shutdown)" in caplog.messages


@pytest.mark.parametrize("bulk", [False, True], ids=["end_session", "end_sessions"])
def test_an_end_detail_is_cut_to_what_the_model_field_holds(
    user: Any, upstream: Any, monkeypatch: pytest.MonkeyPatch, bulk: bool
) -> None:
    # The length comes from Session.end_detail, not from a number of its own.
    monkeypatch.setattr(Session._meta.get_field("end_detail"), "max_length", 40)
    session = services.start_session(user).session
    if bulk:
        end_sessions(Session.objects.filter(pk=session.pk), reason=EndReason.ADMIN, detail="x" * 99)
    else:
        services.end_session(session, reason=EndReason.ADMIN, detail="x" * 99)
    session.refresh_from_db()
    assert (session.status, session.end_detail) == (SessionStatus.ENDED, "x" * 40)


@pytest.mark.parametrize(
    "fields",
    [
        {"status": SessionStatus.LIVE},
        {"status": SessionStatus.STARTING},
        {"status": SessionStatus.ENDING, "end_reason": EndReason.ADMIN},
        {"status": SessionStatus.ENDING, "end_reason": EndReason.ADMIN, "awaiting_retry": True},
        {"status": SessionStatus.ENDED, "end_reason": EndReason.ADMIN},
    ],
    ids=["live", "starting", "ending", "awaiting-retry", "ended"],
)
def test_ending_ones_own_session_by_id_does_what_end_session_does(
    user: Any, upstream: Any, fields: dict[str, Any]
) -> None:
    """The API's end finds and claims the row in one statement: the same outcome, row and calls."""
    by_row = live(user, "by-row", **fields)
    by_id = live(user, "by-id", **fields)
    if fields["status"] == SessionStatus.STARTING:  # only an activation sets started_at
        Session.objects.filter(pk__in=[by_row.pk, by_id.pk]).update(started_at=None)
        by_row.refresh_from_db()
    claim_stamps = {row.pk: row.updated_at for row in (by_row, by_id)}

    outcomes = (
        services.end_session(by_row, reason=EndReason.CLIENT, detail="stop"),
        end_own_session("by-id", user.pk, reason=EndReason.CLIENT, detail="stop"),
    )

    assert outcomes[0] is outcomes[1]
    compared = ("status", "end_reason", "end_detail", "awaiting_retry")
    rows = [Session.objects.get(pk=row.pk) for row in (by_row, by_id)]
    assert [getattr(rows[0], name) for name in compared] == [
        getattr(rows[1], name) for name in compared
    ]
    assert (rows[0].ended_at is None) == (rows[1].ended_at is None)
    # Both wrote a claim stamp (a claim, a take-over), or neither did.
    stamped = [row.updated_at != claim_stamps[row.pk] for row in rows]
    assert stamped[0] == stamped[1]
    terminated = {call.request.url.rsplit("/", 1)[-1] for call in upstream.avaturn.delete_calls()}
    assert ("by-row" in terminated) == ("by-id" in terminated)


def test_ending_someone_elses_session_by_id_finds_none_and_touches_nothing(
    user: Any, other_user: Any, upstream: Any
) -> None:
    theirs = live(other_user, "theirs")

    assert end_own_session("theirs", user.pk, reason=EndReason.CLIENT) is None
    assert end_own_session("nobody's", user.pk, reason=EndReason.CLIENT) is None

    row = Session.objects.get(pk=theirs.pk)
    assert (row.status, row.updated_at) == (SessionStatus.LIVE, theirs.updated_at)
    assert upstream.avaturn.delete_calls() == []
