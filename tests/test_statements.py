"""The start and end path's hand-written statements answer what the ORM's reads answer."""

from __future__ import annotations

import gc
import threading
import weakref
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.db import (
    DEFAULT_DB_ALIAS,
    OperationalError,
    connection,
    connections,
    models,
    transaction,
)
from django.db.models.signals import post_save, pre_save
from django.test.utils import CaptureQueriesContext, isolate_apps
from django.utils import timezone

from django_avaturn.models import (
    ACTIVE_STATUSES,
    EndReason,
    Engine,
    ServiceSwitch,
    Session,
    SessionStatus,
    ToolCall,
    ToolCallStatus,
)
from django_avaturn.sessions import statements
from django_avaturn.spend import limits
from tests.helpers import LIST_URL, csrf_post, live
from tests.live_fake import run_threads

pytestmark = pytest.mark.django_db(transaction=True)


def _orm_reads(user: Any, other_than: int) -> tuple[bool, bool, list[tuple[Any, ...]]]:
    """What the reservation read one statement at a time before: user, switch, rows."""
    found = list(type(user).objects.filter(pk=user.pk).values_list("is_active", flat=True))
    rows = (
        Session.objects.filter(user_id=user.pk, status__in=ACTIVE_STATUSES)
        .exclude(pk=other_than)
        .order_by("created_at", "pk")
        .values_list(*statements.ACTIVE_ROW_FIELDS)
    )
    return bool(found and found[0]), limits.sessions_enabled(), list(rows)


@pytest.mark.parametrize("switch", [None, True, False])
@pytest.mark.parametrize("active", [True, False])
def test_the_reservation_read_answers_the_three_reads_it_replaces(
    django_user_model: Any, user: Any, switch: bool | None, active: bool
) -> None:
    if switch is not None:
        ServiceSwitch.objects.create(sessions_enabled=switch)
    other = django_user_model.objects.create_user(email="other@example.com", password="pw")
    now = timezone.now()
    own = Session.objects.create(user=user, status=SessionStatus.STARTING)
    live(user, "b-newer", created_at=now - timedelta(seconds=5))
    live(user, "a-older", created_at=now - timedelta(seconds=50))
    Session.objects.filter(session_id="a-older").update(max_duration=120, started_at=None)
    live(user, "ending", status=SessionStatus.ENDING, end_reason=EndReason.CLIENT)
    live(user, "ended", status=SessionStatus.ENDED, end_reason=EndReason.CLIENT)
    live(other, "theirs")
    type(user).objects.filter(pk=user.pk).update(is_active=active)

    read = statements.reservation_read(user.pk, ACTIVE_STATUSES, other_than=own.pk, with_user=True)

    user_active, enabled, rows = _orm_reads(user, own.pk)
    assert (read.user_active, limits.enabled_with(read.switch), read.rows) == (
        user_active,
        enabled,
        rows,
    )
    assert [pk for pk, *_ in read.rows] == list(
        Session.objects.filter(session_id__in=["a-older", "b-newer", "ending"])
        .order_by("created_at", "pk")
        .values_list("pk", flat=True)
    )
    assert read.switch == switch


def test_the_reservation_read_of_a_user_with_no_other_rows_and_one_gone(user: Any) -> None:
    own = Session.objects.create(user=user, status=SessionStatus.STARTING)

    read = statements.reservation_read(user.pk, ACTIVE_STATUSES, other_than=own.pk, with_user=True)
    assert (read.user_active, read.switch, read.rows) == (True, None, [])

    # PostgreSQL has read (and locked) the user already: the user is not read again.
    unread = statements.reservation_read(
        user.pk, ACTIVE_STATUSES, other_than=own.pk, with_user=False
    )
    assert (unread.user_active, unread.switch, unread.rows) == (None, None, [])

    gone = statements.reservation_read(
        user.pk + 1000, ACTIVE_STATUSES, other_than=own.pk, with_user=True
    )
    assert gone.user_active is False


def test_the_callers_row_is_the_row_the_orm_loads(django_user_model: Any, user: Any) -> None:
    other = django_user_model.objects.create_user(email="other@example.com", password="pw")
    row = live(
        user,
        "mine",
        engine=Engine.SITE,
        engine_secret_hash="hash",
        last_seen_at=timezone.now(),
        awaiting_retry=True,
    )
    live(other, "theirs")

    found = statements.own_row("mine", user.pk)

    assert found is not None
    expected = Session.objects.get(pk=row.pk)
    names = [field.attname for field in Session._meta.concrete_fields]
    assert [getattr(found, name) for name in names] == [getattr(expected, name) for name in names]
    assert not found._state.adding
    assert found._state.db == expected._state.db
    assert statements.own_row("theirs", user.pk) is None
    assert statements.own_row("nobody's", user.pk) is None


def test_the_callers_row_updated_is_returned_as_the_orm_then_loads_it(
    django_user_model: Any, user: Any
) -> None:
    if not statements.updates_return_rows():
        pytest.skip("the database has no UPDATE ... RETURNING")
    other = django_user_model.objects.create_user(email="other@example.com", password="pw")
    row = live(user, "mine", engine=Engine.SITE, last_seen_at=timezone.now())
    theirs = live(other, "theirs")
    ended = live(user, "ended", status=SessionStatus.ENDED, end_reason=EndReason.CLIENT)
    now = timezone.now()
    values = {"status": SessionStatus.ENDING, "end_reason": EndReason.CLIENT, "updated_at": now}
    capped = (SessionStatus.STARTING, SessionStatus.LIVE)

    found = statements.update_own_row("mine", user.pk, capped, **values)

    assert found is not None
    expected = Session.objects.get(pk=row.pk)
    assert (expected.status, expected.end_reason, expected.updated_at) == tuple(values.values())
    names = [field.attname for field in Session._meta.concrete_fields]
    assert [getattr(found, name) for name in names] == [getattr(expected, name) for name in names]
    assert (found._state.adding, found._state.db) == (False, expected._state.db)
    # Another user's row, and one in a status not asked for, are neither updated nor answered.
    assert statements.update_own_row("theirs", user.pk, capped, **values) is None
    assert statements.update_own_row("ended", user.pk, capped, **values) is None
    assert statements.update_own_row("mine", user.pk, capped, **values) is None  # ending now
    for untouched in (theirs, ended):
        stored = Session.objects.get(pk=untouched.pk)
        assert (stored.status, stored.updated_at) == (untouched.status, untouched.updated_at)


@pytest.mark.parametrize("inserter", ["insert_row", "insert_row_locking_user"])
def test_a_new_row_is_inserted_as_the_orm_creates_it(user: Any, inserter: str) -> None:
    if inserter == "insert_row_locking_user" and connection.vendor != "postgresql":
        pytest.skip("PostgreSQL's reservation")
    seen: list[tuple[str, bool | None, bool]] = []

    def pre(sender: Any, instance: Session, **kwargs: Any) -> None:
        seen.append(("pre_save", None, instance._state.adding))

    def post(sender: Any, instance: Session, created: bool, **kwargs: Any) -> None:
        seen.append(("post_save", created, instance._state.adding))

    fields: dict[str, Any] = {
        "user_id": user.pk,
        "status": SessionStatus.STARTING,
        "avatar_id": "avatar",
        "model": "gpt-realtime",
        "voice": "marin",
        "engine": Engine.OPENAI_REALTIME,
        "config_name": "support",
        "max_duration": 600,
        "client_ref": "r" * 22,
    }
    pre_save.connect(pre, sender=Session)
    post_save.connect(post, sender=Session)
    try:
        row = Session(**fields)
        with transaction.atomic():
            if inserter == "insert_row":
                statements.insert_row(row)
            else:
                locks = limits.reservation_locks(site_cap=True)
                assert statements.insert_row_locking_user(row, locks) is True
        by_orm = Session.objects.create(**{**fields, "client_ref": "s" * 22})
    finally:
        pre_save.disconnect(pre, sender=Session)
        post_save.disconnect(post, sender=Session)

    assert seen == [("pre_save", None, True), ("post_save", True, False)] * 2
    assert isinstance(row.pk, int) and row.pk == by_orm.pk - 1
    assert (row._state.adding, row._state.db) == (False, by_orm._state.db)
    stored = Session.objects.get(pk=row.pk)
    skip = {"id", "client_ref", "created_at", "updated_at"}
    names = [f.attname for f in Session._meta.concrete_fields if f.attname not in skip]
    assert [getattr(stored, name) for name in names] == [getattr(by_orm, name) for name in names]
    # The instance holds what was written, defaults and auto_now included.
    assert [getattr(row, f.attname) for f in Session._meta.concrete_fields] == [
        getattr(stored, f.attname) for f in Session._meta.concrete_fields
    ]


# A start's statements from its reservation on (the session and user reads aside).
_START_STATEMENTS = {
    # SQLite: the INSERT takes the write lock; one read of the user, the switch and
    # the user's rows; the commit; the activation.
    "sqlite": ["BEGIN", "INSERT", "SELECT", "COMMIT", "UPDATE"],
    # PostgreSQL: the user's lock, the INSERT and the advisory locks in one
    # statement; then the same read, commit and activation.
    "postgresql": ["WITH", "SELECT", "COMMIT", "UPDATE"],
}


def test_a_start_reserves_its_row_with_one_read(api_client: Any, upstream: Any) -> None:
    expected = _START_STATEMENTS.get(connection.vendor)
    if expected is None:
        pytest.skip(f"the statements of {connection.vendor} are not written down")
    with CaptureQueriesContext(connection) as captured:
        assert csrf_post(api_client, LIST_URL, {}).status_code == 201
    sql = [q["sql"] for q in captured.captured_queries]
    # csrf_post reads the list first, for its CSRF cookie.
    begin = next(index for index, text in enumerate(sql) if text.startswith(expected[0]))
    ours = [text.split()[0] for text in sql[begin:] if "django_session" not in text]
    assert ours == expected, sql[begin:]
    if connection.vendor == "postgresql":
        assert "FOR UPDATE" in sql[begin] and "pg_advisory_xact_lock_shared" in sql[begin]


def _taken_elsewhere(user: Any) -> dict[str, bool]:
    """Which of the reservation's locks another connection cannot take now."""
    site, switch = limits.reservation_locks(site_cap=True)
    quote = connection.ops.quote_name
    table, pk = quote(type(user)._meta.db_table), quote(type(user)._meta.pk.column)

    def probe(_: int) -> dict[str, bool]:
        with transaction.atomic(), connection.cursor() as cursor:
            # Exclusive: a shared holder keeps it from this one too.
            cursor.execute(
                "SELECT pg_try_advisory_xact_lock(%s), pg_try_advisory_xact_lock(%s)",
                [site.key, switch.key],
            )
            site_free, switch_free = cursor.fetchone()
            try:
                with transaction.atomic():
                    cursor.execute(
                        f"SELECT 1 FROM {table} WHERE {pk} = %s FOR UPDATE NOWAIT",
                        [user.pk],
                    )
                user_free = True
            except OperationalError:
                user_free = False
        return {"site cap": not site_free, "switch": not switch_free, "user": not user_free}

    (found,) = run_threads(probe, 1)
    assert isinstance(found, dict), found
    return found


@pytest.mark.parametrize("site_cap", [False, True])
def test_the_reservations_insert_holds_its_locks_until_the_transaction_ends(
    user: Any, site_cap: bool
) -> None:
    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL's locks")
    nothing = {"site cap": False, "switch": False, "user": False}
    assert _taken_elsewhere(user) == nothing
    with transaction.atomic():
        row = Session(user_id=user.pk, status=SessionStatus.STARTING)
        locks = limits.reservation_locks(site_cap=site_cap)
        assert statements.insert_row_locking_user(row, locks) is True
        assert _taken_elsewhere(user) == {"site cap": site_cap, "switch": True, "user": True}
    assert _taken_elsewhere(user) == nothing


def test_the_reservations_insert_answers_whether_the_user_may_start(
    django_user_model: Any, user: Any
) -> None:
    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL's reservation")
    inactive = django_user_model.objects.create_user(
        email="i@example.com", password="pw", is_active=False
    )
    locks = limits.reservation_locks(site_cap=False)
    for pk, may in [(user.pk, True), (inactive.pk, False)]:
        with transaction.atomic():
            row = Session(user_id=pk, status=SessionStatus.STARTING)
            assert statements.insert_row_locking_user(row, locks) is may
            assert Session.objects.filter(pk=row.pk).exists()
            transaction.set_rollback(True)
    with transaction.atomic():
        gone = Session(user_id=inactive.pk + 1000, status=SessionStatus.STARTING)
        assert statements.insert_row_locking_user(gone, locks) is False
        assert gone._state.adding and gone.pk is None
        transaction.set_rollback(True)
    assert not Session.objects.exists()


@pytest.mark.parametrize("lock", [False, True])
def test_the_users_read_answers_as_the_orm_does(django_user_model: Any, lock: bool) -> None:
    active = django_user_model.objects.create_user(email="a@example.com", password="pw")
    inactive = django_user_model.objects.create_user(
        email="i@example.com", password="pw", is_active=False
    )
    with transaction.atomic():
        assert statements.user_active(active.pk, lock=lock) is True
        assert statements.user_active(inactive.pk, lock=lock) is False
        assert statements.user_active(inactive.pk + 1000, lock=lock) is False


def _members(settings: Any) -> tuple[Any, Any, Any]:
    """With a user model of two tables as the user model: an active and an inactive member."""
    from tests.testapp.models import Member

    settings.AUTH_USER_MODEL = "testapp.Member"
    active = Member.objects.create_user(email="a@example.com", password="pw")
    inactive = Member.objects.create_user(email="i@example.com", password="pw", is_active=False)
    return Member, active, inactive


@isolate_apps("django_avaturn")
def test_the_statements_read_a_user_model_of_one_table_only(settings: Any) -> None:
    """Multi-table inheritance: the ORM reads the user, joining (and locking) every table."""

    class Person(models.Model):  # noqa: DJ008
        is_active = models.BooleanField(default=True)

        class Meta:
            app_label = "django_avaturn"

    class WithIsActive(models.Model):
        is_active = models.BooleanField(default=True)

        class Meta:
            abstract = True
            app_label = "django_avaturn"

    class Inherited(WithIsActive):  # noqa: DJ008 (an abstract parent: still one table)
        class Meta:
            app_label = "django_avaturn"

    class Stand(Person):  # noqa: DJ008
        class Meta:
            proxy = True
            app_label = "django_avaturn"

    class Member(Person):  # noqa: DJ008 (the primary key is the link to Person)
        class Meta:
            app_label = "django_avaturn"

    class Coded(Person):  # noqa: DJ008 (a primary key of its own)
        code = models.CharField(max_length=8, primary_key=True)

        class Meta:
            app_label = "django_avaturn"

    class Plain(models.Model):  # noqa: DJ008 (no is_active: any existing user may start)
        class Meta:
            app_label = "django_avaturn"

    found = {
        model.__name__: statements._one_table(model)
        for model in (Person, Inherited, Stand, Member, Coded, Plain)
    }
    assert found == {
        "Person": True,
        "Inherited": True,
        "Stand": True,
        "Member": False,
        "Coded": False,
        "Plain": True,
    }
    assert statements.reads_together()
    _members(settings)
    assert not statements.reads_together()  # testapp.Member: two tables


def test_a_member_of_a_user_model_spread_over_tables_starts_a_session(
    settings: Any, upstream: Any
) -> None:
    from rest_framework.test import APIClient

    _, member, _ = _members(settings)
    client = APIClient(enforce_csrf_checks=True)
    client.force_login(member)

    started = csrf_post(client, LIST_URL, {})

    assert started.status_code == 201, started.content
    row = Session.objects.get(session_id=started.json()["session_id"])
    assert (row.user_id, row.status) == (member.pk, SessionStatus.LIVE)


def _whole(instance: Any) -> list[Any]:
    return [getattr(instance, field.attname) for field in type(instance)._meta.concrete_fields]


def test_a_row_with_its_user_is_what_the_orm_loads(django_user_model: Any, user: Any) -> None:
    """The tool runner's re-check: one statement; the row and user as select_related has them."""
    row = live(user, "mine", engine=Engine.SITE, last_seen_at=timezone.now())
    live(django_user_model.objects.create_user(email="other@example.com", password="pw"), "theirs")

    with CaptureQueriesContext(connection) as captured:
        found = statements.row_with_user(row.pk)
        assert found is not None
        found_user = found.user  # cached: read with the row
    assert len(captured.captured_queries) == 1

    expected = Session.objects.select_related("user").get(pk=row.pk)
    assert _whole(found) == _whole(expected)
    assert type(found_user) is type(expected.user)
    assert _whole(found_user) == _whole(expected.user)
    assert (found._state.adding, found._state.db) == (False, expected._state.db)
    assert (found_user._state.adding, found_user._state.db) == (False, expected._state.db)
    assert statements.row_with_user(row.pk + 1000) is None


def test_a_row_with_a_user_model_spread_over_tables_is_read_by_the_orm(
    monkeypatch: pytest.MonkeyPatch, user: Any
) -> None:
    """A user model with multi-table inheritance has columns in other tables: the ORM reads it."""
    row = live(user, "mine")
    meta = type(user)._meta
    monkeypatch.setattr(meta, "parents", {Session: None})  # any concrete parent will do

    with CaptureQueriesContext(connection) as captured:
        found = statements.row_with_user(row.pk)
    assert found is not None and _whole(found) == _whole(row)
    assert "INNER JOIN" in captured.captured_queries[0]["sql"]
    assert '"session"' not in captured.captured_queries[0]["sql"]  # the ORM's, not ours


@pytest.mark.parametrize("spread_over_tables", [False, True])
def test_a_row_with_its_user_is_read_where_writes_go_not_from_a_replica(
    monkeypatch: pytest.MonkeyPatch, settings: Any, user: Any, spread_over_tables: bool
) -> None:
    """A tool's re-check must see a session ended a moment ago: a replica may lag behind."""
    row = live(user, "mine")
    if spread_over_tables:
        monkeypatch.setattr(type(user)._meta, "parents", {Session: None})
    settings.DATABASE_ROUTERS = ["tests.routers.ReadsFromAReplica"]

    found = statements.row_with_user(row.pk)

    assert found is not None and found.user.pk == user.pk
    assert found._state.db == "default"


def test_a_tool_call_is_inserted_as_the_orm_creates_it(user: Any) -> None:
    row = live(user, "mine", engine=Engine.SITE)
    fields: dict[str, Any] = {
        "session_id": row.pk,
        "call_id": "call_1",
        "tool": "lookup",
        "status": ToolCallStatus.OK,
        "duration_ms": 12,
        "arguments": {"order": "A-1", "nested": [1, None, "é"]},
    }

    call = ToolCall(**fields)
    statements.insert_row(call)
    by_orm = ToolCall.objects.create(**{**fields, "call_id": "call_2"})

    assert (call._state.adding, call._state.db) == (False, by_orm._state.db)
    stored = ToolCall.objects.get(pk=call.pk)
    assert _whole(call) == _whole(stored)
    skip = {"id", "call_id", "created_at"}
    names = [f.attname for f in ToolCall._meta.concrete_fields if f.attname not in skip]
    assert [getattr(stored, n) for n in names] == [getattr(by_orm, n) for n in names]
    assert stored.arguments == fields["arguments"]


def test_only_a_new_row_of_a_model_of_one_table_is_inserted(
    monkeypatch: pytest.MonkeyPatch, user: Any
) -> None:
    saved = live(user, "mine")
    with pytest.raises(ValueError, match="new row only"):
        statements.insert_row(saved)
    call = ToolCall(session=saved, call_id="c", tool="t", duration_ms=1)
    with monkeypatch.context() as patched:
        patched.setattr(ToolCall._meta, "parents", {Session: None})
        with pytest.raises(ValueError, match="of one table"):
            statements.insert_row(call)
    with monkeypatch.context() as patched:
        patched.setattr(ToolCall._meta, "auto_field", None)
        with pytest.raises(ValueError, match="generated primary key"):
            statements.insert_row(call)
    assert not ToolCall.objects.exists()
    statements.insert_row(call)
    assert ToolCall.objects.get().pk == call.pk


def _keeps_its_threads_connection(work: Callable[[], None]) -> bool:
    """Whether the connection object of a thread that ran ``work`` outlives the thread."""
    wrappers: list[weakref.ref[Any]] = []

    def run() -> None:
        try:
            work()
            wrappers.append(weakref.ref(connections[DEFAULT_DB_ALIAS]))
        finally:
            connection.close()

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    assert len(wrappers) == 1, "the work failed on its thread"
    gc.collect()
    return wrappers[0]() is not None


def test_rows_read_on_a_thread_leave_nothing_of_its_connection_behind(user: Any) -> None:
    """Under ASGI every request runs on a thread of its own, with a connection of its own:
    the converters kept for reading rows back must not keep one of those alive. (On
    PostgreSQL, whose backend converts none of these columns, it holds either way.)"""
    row = Session.objects.create(user=user, session_id="s-thread", status=SessionStatus.LIVE)
    statements._converters.cache_clear()  # filled below, on the thread

    def read() -> None:
        found = statements.own_row("s-thread", user.pk)
        assert found is not None and found.created_at == row.created_at

    assert not _keeps_its_threads_connection(read)
    # Read again here, from what that thread left in the cache.
    found = statements.own_row("s-thread", user.pk)
    assert found is not None and found.created_at == row.created_at


@isolate_apps("django_avaturn")
def test_a_fields_own_converter_of_the_backend_holds_no_threads_connection() -> None:
    """A DurationField's converter is the backend's where the database has no interval type
    (SQLite): kept for any thread, it converts on the reading connection's own."""

    class Spanned(models.Model):
        span = models.DurationField()

        class Meta:
            app_label = "django_avaturn"

        def __str__(self) -> str:
            return str(self.span)

    if connection.features.has_native_duration_field:
        pytest.skip("the database converts intervals itself")
    statements._converters.cache_clear()

    def fill() -> None:
        statements._converters(DEFAULT_DB_ALIAS, ("span",), Spanned)

    assert not _keeps_its_threads_connection(fill)
    converters = statements._converters(DEFAULT_DB_ALIAS, ("span",), Spanned)
    assert statements._converted((90_000_000,), converters, connection) == (timedelta(seconds=90),)


@pytest.mark.parametrize("since", ["deactivated", "deleted", "deleted_keeping_parents"])
def test_a_member_deactivated_or_deleted_since_signing_in_cannot_start(
    settings: Any, upstream: Any, since: str
) -> None:
    """The reservation's re-check of a user spread over two tables (``is_active`` the parent's).

    ``delete(keep_parents=True)`` removes the member's own row and leaves the
    parent's, ``is_active`` with it: the member is gone all the same, and
    the start is refused as any deleted user's is (403 ``user_inactive``),
    reserving nothing.
    """
    from django_avaturn import services
    from django_avaturn.exceptions import UserNotActive

    model, member, _ = _members(settings)
    signed_in = model.objects.get(pk=member.pk)  # as the request read it, just before
    if since == "deactivated":
        model.objects.filter(pk=member.pk).update(is_active=False)
    else:
        member.delete(keep_parents=since == "deleted_keeping_parents")
        assert not get_user_model().objects.filter(pk=signed_in.pk).exists()

    with pytest.raises(UserNotActive):
        services.start_session(signed_in)
    assert not Session.objects.exists()


def test_a_member_deactivated_while_starting_is_refused_without_a_deadlock(
    settings: Any, upstream: Any
) -> None:
    """A start locks a member's rows in the order Django's ``save()`` writes them: parent first.

    The deactivation here has written ``is_active`` on the parent's row and
    goes on to the member's own row, as ``save()`` does for a member with
    fields of its own, while a start waits between the two. Had the start
    locked the member's row first, each would wait on the other until
    PostgreSQL failed one of them.
    """
    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL's row locks")
    import time

    from django_avaturn import services
    from django_avaturn.exceptions import UserNotActive

    model, member, _ = _members(settings)
    parent = model._meta.get_field("is_active").model
    signed_in = model.objects.get(pk=member.pk)
    parent_written = threading.Event()
    outcome: dict[str, Any] = {}

    def deactivate() -> None:
        try:
            with transaction.atomic():
                parent._base_manager.filter(pk=member.pk).update(is_active=False)
                parent_written.set()
                time.sleep(0.5)  # the start reaches the parent's lock meanwhile
                # The member's own row, which save() writes next.
                list(model._base_manager.select_for_update().filter(pk=member.pk).values_list("pk"))
            outcome["deactivated"] = True
        except BaseException as exc:
            outcome["deactivated"] = exc
        finally:
            connection.close()

    thread = threading.Thread(target=deactivate)
    thread.start()
    assert parent_written.wait(10)
    with pytest.raises(UserNotActive):
        services.start_session(signed_in)
    thread.join(10)

    assert outcome == {"deactivated": True}
    assert not Session.objects.exists()
