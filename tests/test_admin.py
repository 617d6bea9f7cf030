"""The Session admin: read-only record, terminate action and button, permissions, and a race."""

from __future__ import annotations

import io
import re
import threading
from collections import Counter
from datetime import timedelta
from typing import Any

import pytest
import requests
from django.core.management import call_command
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from django_avaturn.models import EndReason, Session, SessionStatus
from tests.helpers import CHANGELIST, KEYS, AvaturnOverrides, live, logged_in, staff

pytestmark = pytest.mark.django_db(transaction=True)


def change_url(row: Session) -> str:
    return f"{CHANGELIST}{row.pk}/change/"


def terminate_url(row: Session) -> str:
    return f"{CHANGELIST}{row.pk}/terminate/"


@pytest.fixture
def admin_client(django_user_model: Any) -> Client:
    root = django_user_model.objects.create_superuser(email="root@example.com", password="pw")
    return logged_in(root)


@pytest.fixture
def viewer(django_user_model: Any) -> Client:
    return logged_in(staff(django_user_model, "viewer@example.com", "view_session"))


@pytest.fixture
def operator(django_user_model: Any) -> Client:
    return logged_in(
        staff(django_user_model, "op@example.com", "view_session", "terminate_session")
    )


def act(client: Client, rows: list[Session], *, follow: bool = True) -> Any:
    return client.post(
        CHANGELIST,
        {"action": "terminate_selected", "_selected_action": [r.pk for r in rows], "index": 0},
        follow=follow,
    )


def shown_messages(response: Any) -> list[tuple[str, str]]:
    return [(m.level_tag, str(m)) for m in response.context["messages"]]


def fresh(row: Session) -> Session:
    return Session.objects.get(pk=row.pk)


# --------------------------------------------------------------------------- the list and page


def test_changelist_lists_sessions_with_a_constant_number_of_queries(
    admin_client: Client, user: Any, other_user: Any
) -> None:
    live(user, "av-1")

    def queries() -> int:
        with CaptureQueriesContext(connection) as captured:
            response = admin_client.get(CHANGELIST)
        assert response.status_code == 200
        return len(captured.captured_queries)

    few = queries()
    for i in range(8):
        live(other_user if i % 2 else user, f"av-more-{i}")
    assert queries() == few
    page = admin_client.get(CHANGELIST).content.decode()
    assert "av-more-7" in page and "ada@example.com" in page and "bob@example.com" in page


@pytest.mark.parametrize(
    ("query", "expected"),
    [("av-ada", {"av-ada"}), ("bob@example", {"av-bob"}), ("example.com", {"av-ada", "av-bob"})],
)
def test_search_by_session_id_and_the_users_email_field(
    admin_client: Client, user: Any, other_user: Any, query: str, expected: set[str]
) -> None:
    live(user, "av-ada")
    live(other_user, "av-bob")
    response = admin_client.get(CHANGELIST, {"q": query})
    found = {str(row) for row in response.context["cl"].result_list}
    assert found == expected


def test_filters_by_status_and_reason(admin_client: Client, user: Any) -> None:
    live(user, "av-live")
    Session.objects.create(
        user=user, session_id="av-done", status=SessionStatus.ENDED, end_reason=EndReason.ADMIN
    )
    response = admin_client.get(
        CHANGELIST, {"status__exact": "ended", "end_reason__exact": "admin"}
    )
    assert [str(r) for r in response.context["cl"].result_list] == ["av-done"]


@pytest.mark.parametrize("page", ["", "usage/"], ids=["list", "usage"])
@pytest.mark.parametrize(
    "query",
    [
        "status__exact=%00",
        "end_reason__exact=live%00",
        "status__exact=live&status__exact=%00",
        "q=%00",
        "user__id__exact=%00",
        "created_at__gte=%00",
        "o=%00",
        "%00=1",
    ],
)
def test_a_nul_in_a_filter_is_an_invalid_filter_not_a_500(
    admin_client: Client, user: Any, page: str, query: str
) -> None:
    """PostgreSQL cannot compare a NUL: the query failed there, a 500 on both pages."""
    live(user, "av-1")
    response = admin_client.get(f"{CHANGELIST}{page}?{query}")
    # As for any filter the admin cannot apply.
    assert (response.status_code, response["Location"]) == (302, f"{CHANGELIST}?e=1")
    assert admin_client.get(f"{CHANGELIST}{page}?status__exact=live").status_code == 200


def test_change_page_is_read_only_and_scrubbed(admin_client: Client, user: Any) -> None:
    row = live(
        user,
        "av-1",
        end_detail=f"avaturn said: Bearer {KEYS[0]} and sk-abcdefghijklmnop",
    )
    response = admin_client.get(change_url(row))
    page = response.content.decode()

    assert response.status_code == 200
    assert "av-1" in page
    assert 'name="_save"' not in page
    form = page.split('id="session_form"')[1].split("</form>")[0]
    assert all('type="hidden"' in tag for tag in re.findall(r"<input[^>]*>", form))
    assert "<textarea" not in form and "<select" not in form
    assert "[redacted]" in page
    for secret in (*KEYS, "sk-abcdefghijklmnop"):
        assert secret not in page
    # The superuser may terminate: the button is there.
    assert f'action="{terminate_url(row)}"' in page


def test_no_add_no_edit_no_delete_of_active_rows(admin_client: Client, user: Any) -> None:
    row = live(user, "av-1")
    assert admin_client.get(f"{CHANGELIST}add/").status_code == 403
    response = admin_client.post(change_url(row), {"session_id": "hijacked", "status": "ended"})
    assert response.status_code == 403
    assert fresh(row).session_id == "av-1"
    assert admin_client.post(f"{CHANGELIST}{row.pk}/delete/", {"post": "yes"}).status_code == 403
    assert Session.objects.filter(pk=row.pk).exists()

    ended = Session.objects.create(user=user, session_id="av-old", status=SessionStatus.ENDED)
    response = admin_client.post(f"{CHANGELIST}{ended.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302
    assert not Session.objects.filter(pk=ended.pk).exists()


def test_deleting_a_user_with_an_active_session_is_not_refused_by_the_session_admin(
    admin_user: Any, user: Any, rf: Any
) -> None:
    """The user admin lists the rows a deletion cascades to and asks their admin."""
    from django.contrib import admin
    from django.urls import ResolverMatch

    live(user, "av-1")
    user_admin = admin.ModelAdmin(type(user), admin.site)

    def ask_from(model_admin: Any) -> set[str]:
        def view() -> None: ...

        view.model_admin = model_admin  # type: ignore[attr-defined]
        request = rf.post("/")
        request.user = admin_user
        request.resolver_match = ResolverMatch(view, (), {})
        _deleted, _counts, perms_needed, _protected = user_admin.get_deleted_objects(
            [user], request
        )
        return set(perms_needed)

    # From the user admin's delete page: allowed (the deletion ends the session).
    assert ask_from(user_admin) == set()
    # From the session admin's own pages: an active row stays undeletable.
    assert ask_from(admin.site._registry[Session]) == {"avatar session"}


# --------------------------------------------------------------------------- the action


def test_action_terminates_and_counts(
    admin_client: Client, upstream: Any, user: Any, django_user_model: Any
) -> None:
    root = django_user_model.objects.get(email="root@example.com")
    rows = [live(user, f"av-{i}") for i in range(3)]
    done = Session.objects.create(user=user, session_id="av-done", status=SessionStatus.ENDED)

    response = act(admin_client, [*rows, done])

    assert response.status_code == 200
    assert sorted(upstream.avaturn.deleted) == ["av-0", "av-1", "av-2"]
    for row in rows:
        row = fresh(row)
        assert (row.status, row.end_reason) == (SessionStatus.ENDED, EndReason.ADMIN)
        assert row.end_detail == f"by staff user root@example.com (#{root.pk})"
    assert shown_messages(response) == [
        ("success", "Terminated 3 sessions."),
        ("info", "1 session had already ended; it was skipped."),
    ]


def test_action_reports_already_gone(admin_client: Client, upstream: Any, user: Any) -> None:
    row = live(user, "av-gone")
    upstream.avaturn.on_delete(404)
    response = act(admin_client, [row])
    assert fresh(row).status == SessionStatus.ENDED
    assert shown_messages(response) == [
        ("warning", "1 session was already gone upstream; it is recorded as ended.")
    ]


@pytest.mark.parametrize(
    "fail",
    [
        lambda up: up.avaturn.on_delete(503, {"echo": KEYS[0]}),
        lambda up: up.avaturn.on_delete_raise(requests.ReadTimeout("slow")),
    ],
    ids=["5xx", "timeout"],
)
def test_action_failures_leave_rows_ending_for_the_expiry_command_and_say_so(
    admin_client: Client, upstream: Any, user: Any, fail: Any
) -> None:
    row = live(user, "av-fail")
    fail(upstream)

    response = act(admin_client, [row])

    # Staff asked for the end: never live again, and the next expiry run retries it.
    assert (fresh(row).status, fresh(row).end_reason) == (SessionStatus.ENDING, EndReason.ADMIN)
    assert fresh(row).awaiting_retry
    [(level, text)] = shown_messages(response)
    assert level == "error"
    assert text.startswith(
        "1 session could not be terminated; it stays ending and the expiry command "
        "retries it: av-fail: "
    )
    assert "avaturn terminate session failed" in text
    for key in KEYS:
        assert key not in response.content.decode()


def test_action_ends_a_starting_row_for_its_own_request_to_finish(
    admin_client: Client, upstream: Any, user: Any
) -> None:
    row = Session.objects.create(user=user, status=SessionStatus.STARTING)
    response = act(admin_client, [row])
    assert upstream.avaturn.delete_calls() == []
    assert (fresh(row).status, fresh(row).end_reason) == (SessionStatus.ENDING, EndReason.ADMIN)
    # Not "terminated": nothing upstream has been ended yet.
    assert shown_messages(response) == [
        (
            "success",
            "1 session was still starting: its start is stopped and ends what Avaturn "
            "created (if that fails, the expiry command retries it).",
        )
    ]


def test_action_with_missing_key_claims_nothing(
    admin_client: Client, avaturn: AvaturnOverrides, user: Any
) -> None:
    avaturn(API_KEY=None)
    row = live(user, "av-1")
    response = act(admin_client, [row])
    assert fresh(row).status == SessionStatus.LIVE
    [(level, text)] = shown_messages(response)
    assert level == "error" and "API_KEY" in text


# --------------------------------------------------------------------------- permissions


@pytest.mark.parametrize("selected", [["abc"], ["1\x00"], ["\x00"], ["1", "2.5"]])
def test_a_selection_that_names_no_row_is_refused_not_a_500(
    admin_client: Client, upstream: Any, user: Any, selected: list[str]
) -> None:
    """A forged or garbled selection: the action ends nothing and says so."""
    row = live(user, "av-1")
    response = admin_client.post(
        CHANGELIST,
        {"action": "terminate_selected", "_selected_action": selected, "index": 0},
        follow=True,
    )
    assert response.status_code == 200
    assert ("warning", "The selection is not valid; no sessions were changed.") in shown_messages(
        response
    )
    assert fresh(row).status == SessionStatus.LIVE
    assert upstream.avaturn.deleted == []


def test_staff_without_the_permission_sees_no_action_and_cannot_post_it(
    viewer: Client, operator: Client, upstream: Any, user: Any
) -> None:
    row = live(user, "av-1")
    assert "terminate_selected" in operator.get(CHANGELIST).content.decode()
    page = viewer.get(CHANGELIST)
    assert page.status_code == 200
    assert "terminate_selected" not in page.content.decode()

    response = act(viewer, [row])

    # With no action available to this user, Django ignores the POST and shows the list.
    assert response.status_code == 200
    assert shown_messages(response) == []
    assert upstream.avaturn.delete_calls() == []
    assert fresh(row).status == SessionStatus.LIVE


def test_staff_without_the_permission_gets_no_button_and_a_403(
    viewer: Client, upstream: Any, user: Any
) -> None:
    row = live(user, "av-1")
    page = viewer.get(change_url(row))
    assert page.status_code == 200
    assert "/terminate/" not in page.content.decode()
    assert viewer.post(terminate_url(row)).status_code == 403
    assert upstream.avaturn.delete_calls() == []
    assert fresh(row).status == SessionStatus.LIVE


def test_non_staff_are_sent_to_the_login_page(user: Any, upstream: Any) -> None:
    row = live(user, "av-1")
    response = logged_in(user).post(terminate_url(row))
    assert response.status_code == 302
    assert "/admin/login/" in response["Location"]
    assert fresh(row).status == SessionStatus.LIVE


def test_operator_can_use_the_action(operator: Client, upstream: Any, user: Any) -> None:
    row = live(user, "av-1")
    assert "terminate_selected" in operator.get(CHANGELIST).content.decode()
    act(operator, [row])
    assert fresh(row).status == SessionStatus.ENDED


# --------------------------------------------------------------------------- the button


def test_button_terminates_with_csrf(django_user_model: Any, upstream: Any, user: Any) -> None:
    op = staff(django_user_model, "op@example.com", "view_session", "terminate_session")
    client = Client(enforce_csrf_checks=True)
    client.force_login(op)
    row = live(user, "av-1")

    assert client.post(terminate_url(row)).status_code == 403  # no CSRF token
    assert fresh(row).status == SessionStatus.LIVE

    page = client.get(change_url(row))
    token = page.context["csrf_token"]
    response = client.post(terminate_url(row), {"csrfmiddlewaretoken": token}, follow=True)

    assert response.redirect_chain == [(change_url(row), 302)]
    assert upstream.avaturn.deleted == ["av-1"]
    assert (fresh(row).status, fresh(row).end_reason) == (SessionStatus.ENDED, EndReason.ADMIN)
    assert shown_messages(response) == [("success", "Terminated the session.")]
    assert "/terminate/" not in response.content.decode()  # no button on an ended session


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        (lambda up: up.avaturn.on_delete(404), ("warning", "already gone")),
        (lambda up: up.avaturn.on_delete(500), ("error", "stays ending")),
        (lambda up: up.avaturn.on_delete_raise(requests.ReadTimeout()), ("error", "stays ending")),
    ],
    ids=["404", "5xx", "timeout"],
)
def test_button_outcomes(
    admin_client: Client, upstream: Any, user: Any, setup: Any, expected: tuple[str, str]
) -> None:
    row = live(user, "av-1")
    setup(upstream)
    response = admin_client.post(terminate_url(row), follow=True)
    [(level, text)] = shown_messages(response)
    assert level == expected[0] and expected[1] in text


def test_button_on_an_ended_session_and_bad_requests(
    admin_client: Client, upstream: Any, user: Any
) -> None:
    row = Session.objects.create(user=user, session_id="av-x", status=SessionStatus.ENDED)
    response = admin_client.post(terminate_url(row), follow=True)
    assert shown_messages(response) == [("info", "The session had already ended.")]
    assert upstream.avaturn.delete_calls() == []
    assert admin_client.get(terminate_url(row)).status_code == 405
    assert admin_client.post(f"{CHANGELIST}999999/terminate/").status_code == 404


def test_button_on_a_starting_row_says_its_start_will_end_it(
    admin_client: Client, upstream: Any, user: Any
) -> None:
    row = Session.objects.create(user=user, status=SessionStatus.STARTING)
    response = admin_client.post(terminate_url(row), follow=True)
    [(level, text)] = shown_messages(response)
    # Nothing was terminated yet: its own request ends what Avaturn creates.
    assert level == "success" and "still starting" in text
    assert upstream.avaturn.delete_calls() == []
    assert fresh(row).status == SessionStatus.ENDING


def test_button_on_an_ending_row_says_it_is_being_ended(
    admin_client: Client, upstream: Any, user: Any
) -> None:
    row = live(user, "av-1", status=SessionStatus.ENDING)
    response = admin_client.post(terminate_url(row), follow=True)
    [(level, text)] = shown_messages(response)
    assert level == "info" and "already being ended" in text
    assert upstream.avaturn.delete_calls() == []


def test_button_with_missing_key(
    admin_client: Client, avaturn: AvaturnOverrides, user: Any
) -> None:
    avaturn(API_KEY=None)
    row = live(user, "av-1")
    response = admin_client.post(terminate_url(row), follow=True)
    [(level, _text)] = shown_messages(response)
    assert level == "error"
    assert fresh(row).status == SessionStatus.LIVE


# --------------------------------------------------------------------------- the race


def test_command_and_admin_action_race_and_terminate_each_session_once(
    django_user_model: Any, upstream: Any, user: Any
) -> None:
    root = django_user_model.objects.create_superuser(email="root@example.com", password="pw")
    long_ago = timezone.now() - timedelta(hours=3)
    rows = [live(user, f"av-{i}") for i in range(40)]
    # Stale for the command (past max_duration), and selected in the admin too.
    Session.objects.update(started_at=long_ago)
    barrier = threading.Barrier(3)
    errors: list[BaseException] = []

    def in_thread(work: Any) -> None:
        try:
            barrier.wait()
            work()
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)
        finally:
            connection.close()

    def command() -> None:
        call_command("avaturn_expire_sessions", "--batch-size", "5", stdout=io.StringIO())

    def admin_action() -> None:
        client = Client()
        client.force_login(root)
        response = act(client, list(reversed(rows)), follow=False)
        assert response.status_code == 302

    threads = [
        threading.Thread(target=in_thread, args=(command,)),
        threading.Thread(target=in_thread, args=(admin_action,)),
        threading.Thread(target=in_thread, args=(command,)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert errors == []
    assert Counter(upstream.avaturn.deleted) == {f"av-{i}": 1 for i in range(40)}
    statuses = Counter(Session.objects.values_list("status", flat=True))
    assert set(statuses) <= {SessionStatus.EXPIRED, SessionStatus.ENDED}
    assert sum(statuses.values()) == 40


def test_the_admin_pages_carry_no_style_attributes(admin_client: Client, user: Any) -> None:
    """A strict CSP (no 'unsafe-inline') drops style attributes: the styles are in a file."""
    row = live(user, "av-1")
    for url in (CHANGELIST, change_url(row), f"{CHANGELIST}usage/"):
        page = admin_client.get(url).content.decode()
        ours = page[page.index('id="content"') :]  # Django's own chrome is Django's business
        assert " style=" not in ours, url
        assert "django_avaturn/admin.css" in page, url
