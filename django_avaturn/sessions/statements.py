"""The hottest statements, written once per shape instead of built per call.

A start and an end run a handful of statements whose shape never changes: a
conditional ``UPDATE`` of one row by primary key and status, the new row's
``INSERT``, the reservation's reads; so does every call of a site engine
tool (its re-check of the row and its user, its record). Built through the
ORM each time, every one of them spent 200 to 400 µs of Python building and
compiling the query for some 20 to 40 µs in SQLite (``python -m
benchmarks.profile``). Here the
SQL text of each shape is made once per database alias from the models' own
metadata (quoted by the backend, ``%s`` placeholders as every Django backend
takes), and the values go through the fields' own ``get_db_prep_save`` and,
read back, through the backend's converters, as the ORM does. Semantics are
the ORM's: an ``UPDATE`` sends no signals (``QuerySet.update`` sends none)
and answers its row count, an ``INSERT`` sends ``pre_save`` and
``post_save`` as ``Model.save`` does; the router's database.

Only ``transitions`` (status changes), ``starting`` (the reservation's
statements), the API's read of the caller's row (and ``ending``'s, for a Stop
that did not claim it) and the site engine's tool runner use these;
anything else stays plain ORM. On the engine's path the saving matters
twice: the tools' database thread holds the GIL while it builds a query, and
the event loop carrying every conversation's audio waits for it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from django.contrib.auth import get_user_model
from django.db import connections, router
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import Field, Model
from django.db.models.signals import post_save, pre_save

from django_avaturn.models import ServiceSwitch, Session, sessions_database

if TYPE_CHECKING:
    from django_avaturn.spend.limits import AdvisoryLock

_META = Session._meta


def _connection() -> tuple[str, BaseDatabaseWrapper]:
    alias = sessions_database()
    return alias, connections[alias]


def _field(name: str) -> Field[Any, Any]:
    field = _META.pk if name == "pk" else _META.get_field(name)
    assert isinstance(field, Field)
    return field


def _column(name: str) -> str:
    column = _field(name).column
    assert column is not None
    return column


# A conditional UPDATE's row: by primary key, or the user's own by its session id.
_BY_PK = ("pk",)
_BY_OWNER = ("session_id", "user")


@lru_cache(maxsize=64)
def _update_sql(
    alias: str, columns: tuple[str, ...], keys: tuple[str, ...], statuses: int, returning: bool
) -> str:
    quote = connections[alias].ops.quote_name
    assignments = ", ".join(f"{quote(_column(name))} = %s" for name in columns)
    matches = " AND ".join(f"{quote(_column(name))} = %s" for name in keys)
    status_in = ", ".join(["%s"] * statuses)
    sql = (
        f"UPDATE {quote(_META.db_table)} SET {assignments} "  # noqa: S608 (names quoted)
        f"WHERE {matches} AND {quote(_column('status'))} IN ({status_in})"
    )
    if returning:
        sql += " RETURNING " + ", ".join(quote(_column(name)) for name in _ROW_FIELDS)
    return sql


def _execute_update(
    keys: tuple[str, ...],
    key_values: tuple[Any, ...],
    statuses: Sequence[str],
    values: dict[str, Any],
    *,
    returning: bool = False,
) -> Any:
    """Run the conditional UPDATE; its row count, or with ``returning`` the row read back."""
    alias, connection = _connection()
    params = [_field(name).get_db_prep_save(value, connection) for name, value in values.items()]
    params += [
        _field(name).get_db_prep_value(value, connection)
        for name, value in zip(keys, key_values, strict=True)
    ]
    params += _statuses(statuses, connection)
    sql = _update_sql(alias, tuple(values), keys, len(statuses), returning)
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        if not returning:
            return int(cursor.rowcount)
        found = cursor.fetchone()
    return None if found is None else _session_from(alias, connection, found)


def update_row(pk: Any, statuses: Sequence[str], **values: Any) -> int:
    """``Session.objects.filter(pk=pk, status__in=statuses).update(**values)``, cheaper.

    Returns the number of rows updated (0 or 1), as ``update`` does.
    """
    return int(_execute_update(_BY_PK, (pk,), statuses, values))


@lru_cache(maxsize=16)
def _active_rows_sql(alias: str, statuses: int) -> str:
    connection = connections[alias]
    quote = connection.ops.quote_name
    table = quote(_META.db_table)
    columns = ", ".join(quote(_column(name)) for name in ACTIVE_ROW_FIELDS)
    status_in = ", ".join(["%s"] * statuses)
    return (
        f"SELECT {columns} FROM {table} "  # noqa: S608 (names quoted)
        f"WHERE {quote(_column('user'))} = %s AND {quote(_column('status'))} "
        f"IN ({status_in}) AND NOT ({quote(_column('pk'))} = %s) "
        f"ORDER BY {quote(_column('created_at'))} ASC, {quote(_column('pk'))} ASC"
    )


# What a start's reservation reads of the user's other active rows.
ACTIVE_ROW_FIELDS = ("pk", "status", "started_at", "max_duration")


def active_rows(user_pk: Any, statuses: Sequence[str], *, other_than: Any) -> list[tuple[Any, ...]]:
    """``(pk, status, started_at, max_duration)`` of the user's rows in ``statuses``, oldest first.

    The same rows, order and values as ``Session.objects.filter(user_id=...,
    status__in=...).exclude(pk=other_than).order_by("created_at", "pk")
    .values_list(*ACTIVE_ROW_FIELDS)``.
    """
    alias, connection = _connection()
    params = [
        _field("user").get_db_prep_value(user_pk, connection),
        *_statuses(statuses, connection),
        _field("pk").get_db_prep_value(other_than, connection),
    ]
    with connection.cursor() as cursor:
        cursor.execute(_active_rows_sql(alias, len(statuses)), params)
        rows = cursor.fetchall()
    converters = _converters(alias, ACTIVE_ROW_FIELDS)
    return [_converted(row, converters, connection) for row in rows]


def _insert_fields(model: type[Model]) -> list[Field[Any, Any]]:
    """What an INSERT of a new ``model`` row writes: every column but a generated primary key."""
    meta = model._meta
    return [field for field in meta.local_concrete_fields if field is not meta.auto_field]


@lru_cache(maxsize=16)
def _insert_sql(alias: str, model: type[Model]) -> str:
    quote = connections[alias].ops.quote_name
    fields = _insert_fields(model)
    columns = ", ".join(quote(field.column) for field in fields)  # type: ignore[arg-type]
    marks = ", ".join(["%s"] * len(fields))
    return f"INSERT INTO {quote(model._meta.db_table)} ({columns}) VALUES ({marks})"  # noqa: S608


def insert_row(row: Model) -> None:
    """``row.save()`` of a new ``row`` (as ``objects.create`` saves it), cheaper.

    For a model whose every column is in its own table and whose primary key
    the database generates (a ``Session``, a ``ToolCall``). The ORM's
    semantics: ``pre_save`` and ``post_save`` (``created``) are sent, each
    field's ``pre_save`` fills its default or ``auto_now``, the primary key
    comes back from the database, and the instance is then a saved one of the
    write router's database.
    """
    if not row._state.adding:
        raise ValueError("insert_row() saves a new row only.")
    model = type(row)
    meta = model._meta
    auto_field = meta.auto_field
    if meta.parents or meta.proxy or auto_field is None:
        raise ValueError(
            "insert_row() saves a row of a model of one table with a generated primary key only."
        )
    alias = router.db_for_write(model)
    connection = connections[alias]
    pre_save.send(sender=model, instance=row, raw=False, using=alias, update_fields=None)
    fields = _insert_fields(model)
    params = [field.get_db_prep_save(field.pre_save(row, True), connection) for field in fields]
    sql = _insert_sql(alias, model)
    ops: Any = connection.ops
    with connection.cursor() as cursor:
        if connection.features.can_return_columns_from_insert:
            row.pk = _insert_returning_pk(ops, cursor, sql, params, auto_field)
        else:
            cursor.execute(sql, params)
            row.pk = ops.last_insert_id(cursor, meta.db_table, auto_field.column)
    row._state.adding, row._state.db = False, alias
    post_save.send(
        sender=model, instance=row, created=True, update_fields=None, raw=False, using=alias
    )


def _insert_returning_pk(
    ops: Any, cursor: Any, sql: str, params: list[Any], auto_field: Field[Any, Any]
) -> Any:
    """Run the INSERT with the backend's RETURNING clause for the primary key; return it.

    The backend methods for this are named ``returning_columns`` and
    ``fetch_returned_rows`` from Django 6.1, ``return_insert_columns`` and
    ``fetch_returned_insert_columns`` before (declared by the backends that
    return columns from an INSERT).
    """
    pk = [auto_field]
    if hasattr(ops, "returning_columns"):
        returning, returning_params = ops.returning_columns(pk)
        cursor.execute(f"{sql} {returning}", [*params, *returning_params])
        ((value,),) = ops.fetch_returned_rows(cursor, returning_params)
    else:
        returning, returning_params = ops.return_insert_columns(pk)
        cursor.execute(f"{sql} {returning}", [*params, *returning_params])
        (value,) = ops.fetch_returned_insert_columns(cursor, returning_params)
    return value


@lru_cache(maxsize=16)
def _locked_insert_sql(alias: str, user_model: type[Model], locks: tuple[str, ...]) -> str:
    connection = connections[alias]
    quote = connection.ops.quote_name
    active, user_table, user_pk = _user_activity_sql(alias, user_model)
    fields = _insert_fields(Session)
    columns = ", ".join(quote(field.column) for field in fields)  # type: ignore[arg-type]
    marks = ", ".join(["%s"] * len(fields))
    user, row = quote("avaturn_locked_user"), quote("avaturn_new_row")
    pk, is_active = quote(_column("pk")), quote("is_active")
    calls = "".join(f", {function}(%s)" for function in locks)
    # The lock functions run for the joined row: once the user row is locked.
    return (
        f"WITH {user} AS (SELECT {active} AS {is_active} "  # noqa: S608 (names quoted)
        f"FROM {user_table} WHERE {user_pk} = %s {connection.ops.for_update_sql()}), "
        f"{row} AS (INSERT INTO {quote(_META.db_table)} ({columns}) VALUES ({marks}) "
        f"RETURNING {pk}) "
        f"SELECT {row}.{pk}, {user}.{is_active}{calls} FROM {row} CROSS JOIN {user}"
    )


def insert_row_locking_user(row: Session, locks: Sequence[AdvisoryLock]) -> bool:
    """``user_active(lock=True)`` of the row's user, ``insert_row(row)``, then ``locks``: at once.

    PostgreSQL only (call only when ``reads_together()``), in a transaction:
    the user row's lock, the new row's INSERT and the advisory ``locks``
    (``limits.reservation_locks``, in their order, after the user's as
    before: the same order as every other transaction that takes them),
    held until the transaction ends, in one statement instead of one each.
    Whether the INSERT comes before or after the user's lock is PostgreSQL's
    choice, and nothing depends on it: the reservation decides only from
    its next statement, which sees every start that held these locks before
    it committed. Returns whether the user exists and is active. The row is
    inserted either way, for the caller to roll back; for a user that no
    longer exists no advisory lock is taken and the instance stays unsaved.
    ``insert_row``'s semantics otherwise: signals, field defaults, the
    primary key set on the instance.
    """
    if not row._state.adding:
        raise ValueError("insert_row_locking_user() saves a new row only.")
    alias, connection = _connection()
    user_model = get_user_model()
    user_pk = user_model._meta.pk
    assert user_pk is not None
    pre_save.send(sender=Session, instance=row, raw=False, using=alias, update_fields=None)
    params = [user_pk.get_db_prep_value(row.user_id, connection)]
    params += [
        field.get_db_prep_save(field.pre_save(row, True), connection)
        for field in _insert_fields(Session)
    ]
    params += [lock.key for lock in locks]
    sql = _locked_insert_sql(alias, user_model, tuple(lock.function for lock in locks))
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        found = cursor.fetchone()
    if found is None:  # no such user: nothing joined the new row
        return False
    pk, active = found[:2]
    (row.pk,) = _converted((pk,), _converters(alias, ("pk",)), connection)
    row._state.adding, row._state.db = False, alias
    post_save.send(
        sender=Session, instance=row, created=True, update_fields=None, raw=False, using=alias
    )
    return active is not None and bool(active)


@lru_cache(maxsize=16)
def _own_row_sql(alias: str) -> str:
    quote = connections[alias].ops.quote_name
    columns = ", ".join(quote(_column(name)) for name in _ROW_FIELDS)
    return (
        f"SELECT {columns} FROM {quote(_META.db_table)} "  # noqa: S608 (names quoted)
        f"WHERE {quote(_column('session_id'))} = %s AND {quote(_column('user'))} = %s"
    )


# Every column of a row, as the ORM loads a whole one.
_ROW_FIELDS = tuple(field.name for field in _META.concrete_fields)
_ROW_ATTNAMES = [field.attname for field in _META.concrete_fields]


def _session_from(alias: str, connection: BaseDatabaseWrapper, found: Sequence[Any]) -> Session:
    """The ``Session`` of ``_ROW_FIELDS``' values as read, built as the ORM builds one."""
    values = _converted(found, _converters(alias, _ROW_FIELDS), connection)
    return Session.from_db(alias, _ROW_ATTNAMES, values)


def own_row(session_id: str, user_pk: Any) -> Session | None:
    """``Session.objects.get(session_id=session_id, user_id=user_pk)``, or None if there is none.

    The whole row, built by ``Session.from_db`` as the ORM builds it
    (``session_id`` is unique: one row at most). Read from the write router's
    database: the caller ends it, or records its heartbeat, often a moment
    after starting it, which a lagging replica may not show yet.
    """
    alias, connection = _connection()
    params = [
        _field("session_id").get_db_prep_value(session_id, connection),
        _field("user").get_db_prep_value(user_pk, connection),
    ]
    with connection.cursor() as cursor:
        cursor.execute(_own_row_sql(alias), params)
        found = cursor.fetchone()
    return None if found is None else _session_from(alias, connection, found)


def updates_return_rows() -> bool:
    """Whether the sessions' database answers ``UPDATE ... RETURNING`` (``update_own_row``).

    PostgreSQL does; SQLite from 3.35, the version from which Django returns
    columns from an ``INSERT`` there too. MySQL and MariaDB have no such
    clause, and Oracle's is ``RETURNING ... INTO`` bind variables.
    """
    connection = _connection()[1]
    if connection.vendor == "postgresql":
        return True
    features = connection.features
    return connection.vendor == "sqlite" and bool(features.can_return_columns_from_insert)


def update_own(session_id: str, user_pk: Any, statuses: Sequence[str], **values: Any) -> int:
    """``Session.objects.filter(session_id=..., user_id=..., status__in=...).update(**values)``.

    Cheaper; returns the number of rows updated (0 or 1: ``session_id`` is unique).
    """
    return int(_execute_update(_BY_OWNER, (session_id, user_pk), statuses, values))


def update_own_row(
    session_id: str, user_pk: Any, statuses: Sequence[str], **values: Any
) -> Session | None:
    """``update_own()``, answering the row as it then is, in the same statement.

    The whole row (as ``own_row`` builds it), or None when no row was updated
    (none of the user's is named so, or it is in another status). Call only
    where ``updates_return_rows()``.
    """
    row = _execute_update(_BY_OWNER, (session_id, user_pk), statuses, values, returning=True)
    assert row is None or isinstance(row, Session)
    return row


@lru_cache(maxsize=16)
def _row_with_user_sql(alias: str, user_model: type[Model]) -> str:
    quote = connections[alias].ops.quote_name
    session, user = quote("session"), quote("user")
    columns = [f"{session}.{quote(_column(name))}" for name in _ROW_FIELDS]
    columns += [
        f"{user}.{quote(field.column)}"  # type: ignore[arg-type]
        for field in user_model._meta.concrete_fields
    ]
    return (
        f"SELECT {', '.join(columns)} FROM {quote(_META.db_table)} {session} "  # noqa: S608
        f"INNER JOIN {quote(user_model._meta.db_table)} {user} "
        f"ON {session}.{quote(_column('user'))} = {user}.{quote(_column_of(user_model, 'pk'))} "
        f"WHERE {session}.{quote(_column('pk'))} = %s"
    )


def row_with_user(pk: Any) -> Session | None:
    """``Session.objects.select_related("user").filter(pk=pk).first()``, cheaper.

    The whole row and its whole user (``row.user`` reads no more), built by
    ``from_db`` as the ORM builds them; None when there is no such row. Read
    from the write router's database, as every status change is written: a
    re-check must see a session ended or a user deactivated a moment ago,
    which a lagging replica may not show yet.
    """
    user_model = _META.get_field("user").related_model
    assert isinstance(user_model, type)
    assert issubclass(user_model, Model)
    alias, connection = _connection()
    if not _one_table(user_model):
        return Session.objects.using(alias).select_related("user").filter(pk=pk).first()
    with connection.cursor() as cursor:
        cursor.execute(
            _row_with_user_sql(alias, user_model),
            [_field("pk").get_db_prep_value(pk, connection)],
        )
        found = cursor.fetchone()
    if found is None:
        return None
    width = len(_ROW_FIELDS)
    row = _session_from(alias, connection, found[:width])
    user_fields = user_model._meta.concrete_fields
    user_names = tuple("pk" if field.primary_key else field.name for field in user_fields)
    user_values = _converted(found[width:], _converters(alias, user_names, user_model), connection)
    user = user_model.from_db(alias, [field.attname for field in user_fields], user_values)
    _META.get_field("user").set_cached_value(row, user)
    return row


@dataclass(frozen=True)
class ReservationRead:
    """What a start's reservation reads, under its locks, in one statement.

    ``user_active``: None when the user was not read (``with_user`` false),
    else False for a user deactivated or gone. ``switch``: the admin's kill
    switch row, None when there is none (enabled). ``rows``: as
    ``active_rows`` answers.
    """

    user_active: bool | None
    switch: bool | None
    rows: list[tuple[Any, ...]]


def reads_together() -> bool:
    """Whether the statements here can read the user, the kill switch and the sessions.

    They must be written to one database: the reservation reads each where
    it is written (a replica may lag), so its single read joins them there.
    And the user model must be one table (``_one_table``). Otherwise
    ``starting`` reads each through the ORM.
    """
    user_model = get_user_model()
    alias = sessions_database()
    return (
        router.db_for_write(user_model) == alias
        and router.db_for_write(ServiceSwitch) == alias
        and _one_table(user_model)
    )


def _one_table(model: type[Model]) -> bool:
    """Whether the model's rows are rows of one table (no multi-table inheritance).

    The statements here read one table per model. Under multi-table
    inheritance a user is a row in each table of the chain: ``is_active`` is
    a parent's column, while deletion may remove the user model's own row
    alone (``delete(keep_parents=True)``). The ORM reads such a user, and
    ``users.lock_user_rows`` locks each of its rows.
    """
    concrete = model._meta.concrete_model or model
    return not concrete._meta.parents


def user_has_is_active(user_model: type[Model]) -> bool:
    """Whether ``user_model`` stores ``is_active``.

    A custom user model need not have it: then any existing user may start.
    """
    return any(field.name == "is_active" for field in user_model._meta.concrete_fields)


def _user_activity_sql(alias: str, user_model: type[Model]) -> tuple[str, str, str]:
    """The user's row that says whether they may start: ``(active, table, primary key column)``.

    Quoted, for ``SELECT active FROM table WHERE primary key column = %s``.
    ``active`` is the ``is_active`` column, or ``1`` for a user model
    without one. The table is the user model's one table
    (``_one_table``): the row deactivation and deletion write, so a
    lock on it orders a start against both.
    """
    quote = connections[alias].ops.quote_name
    active = quote(_column_of(user_model, "is_active")) if user_has_is_active(user_model) else "1"
    return active, quote(user_model._meta.db_table), quote(_column_of(user_model, "pk"))


def _column_of(model: type[Model], name: str) -> str:
    field = model._meta.pk if name == "pk" else model._meta.get_field(name)
    column = getattr(field, "column", None)
    assert isinstance(column, str)
    return column


@lru_cache(maxsize=16)
def _user_active_sql(alias: str, user_model: type[Model], lock: bool) -> str:
    connection = connections[alias]
    active, table, pk = _user_activity_sql(alias, user_model)
    sql = f"SELECT {active} FROM {table} WHERE {pk} = %s"  # noqa: S608 (names quoted)
    # As the ORM's select_for_update(): nothing where the database has no row locks.
    if lock and connection.features.has_select_for_update:
        return f"{sql} {connection.ops.for_update_sql()}"
    return sql


def user_active(user_pk: Any, *, lock: bool) -> bool:
    """Whether the user exists and is active (any existing one, without ``is_active``).

    With ``lock``, the read takes the user row's lock (``SELECT ... FOR
    UPDATE``, where the database has row locks) until the transaction ends.
    Call only when ``reads_together()``.
    """
    alias, connection = _connection()
    user_model = get_user_model()
    pk = user_model._meta.pk
    assert pk is not None
    with connection.cursor() as cursor:
        cursor.execute(
            _user_active_sql(alias, user_model, lock), [pk.get_db_prep_value(user_pk, connection)]
        )
        found = cursor.fetchall()
    return bool(found) and bool(found[0][0])


@lru_cache(maxsize=16)
def _reservation_sql(alias: str, statuses: int, with_user: bool, user_model: type[Model]) -> str:
    quote = connections[alias].ops.quote_name
    scalars = []
    if with_user:
        active, table, pk = _user_activity_sql(alias, user_model)
        scalars.append(f"(SELECT {active} FROM {table} WHERE {pk} = %s)")  # noqa: S608
    scalars.append(
        f"(SELECT {quote(_column_of(ServiceSwitch, 'sessions_enabled'))} "  # noqa: S608
        f"FROM {quote(ServiceSwitch._meta.db_table)} "
        f"WHERE {quote(_column_of(ServiceSwitch, 'pk'))} = %s)"
    )
    row = quote("row")
    columns = ", ".join(f"{row}.{quote(_column(name))}" for name in ACTIVE_ROW_FIELDS)
    status_in = ", ".join(["%s"] * statuses)
    # One row of scalars whatever the user has, joined with their active rows.
    return (
        f"SELECT {', '.join(scalars)}, {columns} FROM (SELECT 1 AS {quote('one')}) "  # noqa: S608
        f"{quote('one')} LEFT JOIN {quote(_META.db_table)} {row} "
        f"ON {row}.{quote(_column('user'))} = %s AND {row}.{quote(_column('status'))} "
        f"IN ({status_in}) AND NOT ({row}.{quote(_column('pk'))} = %s) "
        f"ORDER BY {row}.{quote(_column('created_at'))} ASC, {row}.{quote(_column('pk'))} ASC"
    )


def reservation_read(
    user_pk: Any, statuses: Sequence[str], *, other_than: Any, with_user: bool
) -> ReservationRead:
    """The user's ``is_active`` (if ``with_user``), the switch row and ``active_rows``, at once.

    The same facts as the three reads ``_ensure_still_active``,
    ``limits.sessions_enabled`` (its row) and ``active_rows`` make one
    after the other (call only when ``reads_together()``).
    """
    alias, connection = _connection()
    user_model = get_user_model()
    params: list[Any] = []
    if with_user:
        user_pk_field = user_model._meta.pk
        assert user_pk_field is not None
        params.append(user_pk_field.get_db_prep_value(user_pk, connection))
    switch_pk = ServiceSwitch._meta.pk
    assert switch_pk is not None
    params += [
        switch_pk.get_db_prep_value(ServiceSwitch.SINGLETON_PK, connection),
        _field("user").get_db_prep_value(user_pk, connection),
        *_statuses(statuses, connection),
        _field("pk").get_db_prep_value(other_than, connection),
    ]
    sql = _reservation_sql(alias, len(statuses), with_user, user_model)
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        found = cursor.fetchall()
    scalars = 2 if with_user else 1
    first = found[0]
    user_active = (first[0] is not None and bool(first[0])) if with_user else None
    switch = first[scalars - 1]
    converters = _converters(alias, ACTIVE_ROW_FIELDS)
    rows = [
        _converted(values[scalars:], converters, connection)
        for values in found
        if values[scalars] is not None  # the LEFT JOIN's row when the user has none
    ]
    return ReservationRead(user_active, None if switch is None else bool(switch), rows)


def _statuses(statuses: Sequence[str], connection: BaseDatabaseWrapper) -> list[Any]:
    field = _field("status")
    return [field.get_db_prep_value(status, connection) for status in statuses]


# A converter of a chain: the function, the column it converts, and whether the
# function is a method of the backend's operations, to be called on the reading
# connection's own (``_convert``).
_Converter = tuple[Callable[..., Any], Any, bool]


@lru_cache(maxsize=16)
def _converters(
    alias: str, names: tuple[str, ...], model: type[Model] = Session
) -> list[list[_Converter]]:
    """Per column of ``model``, the backend's and the field's converters, with their expression.

    Kept per alias, not per connection: each thread has a connection object
    of its own (under ASGI, each request), so the backend's methods are kept
    unbound, and no thread's connection is kept alive by this cache.
    """
    connection = connections[alias]
    meta = model._meta
    chains = []
    for name in names:
        field = meta.pk if name == "pk" else meta.get_field(name)
        assert isinstance(field, Field)
        column = field.get_col(meta.db_table)
        chain: list[_Converter] = []
        # (A field's own may be the backend's too: a DurationField's where
        # the database has no interval type.)
        for converter in [
            *connection.ops.get_db_converters(column),
            *column.get_db_converters(connection),
        ]:
            if getattr(converter, "__self__", None) is connection.ops:
                chain.append((converter.__func__, column, True))
            else:
                chain.append((converter, column, False))
        chains.append(chain)
    return chains


def _converted(
    row: Sequence[Any], converters: list[list[_Converter]], connection: BaseDatabaseWrapper
) -> tuple[Any, ...]:
    return tuple(
        _convert(value, chain, connection) for value, chain in zip(row, converters, strict=True)
    )


def _convert(value: Any, chain: Iterable[_Converter], connection: BaseDatabaseWrapper) -> Any:
    for converter, expression, of_operations in chain:
        if of_operations:
            value = converter(connection.ops, value, expression, connection)
        else:
            value = converter(value, expression, connection)
    return value
