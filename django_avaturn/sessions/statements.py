"""The session path's hottest statements, written once per shape instead of built per call.

A start and an end run a handful of single-row statements whose shape never
changes: a conditional ``UPDATE`` of one row by primary key and status, the
read of the user's active rows. Built through the ORM each time, every one
of them spent 200 to 400 µs of Python building and compiling the query for
some 20 to 40 µs in SQLite (``python -m benchmarks.profile``). Here the SQL
text of each shape is made once per database alias from the model's own
metadata (quoted by the backend, ``%s`` placeholders as every Django backend
takes), and the values go through the fields' own ``get_db_prep_save`` and,
read back, through the backend's converters, as the ORM does. Semantics are
the ORM's: no signals (``QuerySet.update`` sends none), the row count as the
answer, the write router's database.

Only ``transitions`` (status changes) and ``starting`` (the reservation's
read) use these; anything not on the start and end path stays plain ORM.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import Any

from django.db import connections, router
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import Field

from django_avaturn.models import Session

_META = Session._meta


def _connection() -> tuple[str, BaseDatabaseWrapper]:
    alias = router.db_for_write(Session)
    return alias, connections[alias]


def _field(name: str) -> Field[Any, Any]:
    field = _META.pk if name == "pk" else _META.get_field(name)
    assert isinstance(field, Field)
    return field


def _column(name: str) -> str:
    column = _field(name).column
    assert column is not None
    return column


@lru_cache(maxsize=64)
def _update_sql(alias: str, columns: tuple[str, ...], statuses: int) -> str:
    connection = connections[alias]
    quote = connection.ops.quote_name
    assignments = ", ".join(f"{quote(_column(name))} = %s" for name in columns)
    status_in = ", ".join(["%s"] * statuses)
    return (
        f"UPDATE {quote(_META.db_table)} SET {assignments} "  # noqa: S608 (names quoted)
        f"WHERE {quote(_column('pk'))} = %s AND {quote(_column('status'))} "
        f"IN ({status_in})"
    )


def update_row(pk: Any, statuses: Sequence[str], **values: Any) -> int:
    """``Session.objects.filter(pk=pk, status__in=statuses).update(**values)``, cheaper.

    Returns the number of rows updated (0 or 1), as ``update`` does.
    """
    alias, connection = _connection()
    names = tuple(values)
    params = [_field(name).get_db_prep_save(values[name], connection) for name in names]
    params += [_field("pk").get_db_prep_value(pk, connection), *_statuses(statuses, connection)]
    with connection.cursor() as cursor:
        cursor.execute(_update_sql(alias, names, len(statuses)), params)
        return int(cursor.rowcount)


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


def _statuses(statuses: Sequence[str], connection: BaseDatabaseWrapper) -> list[Any]:
    field = _field("status")
    return [field.get_db_prep_value(status, connection) for status in statuses]


@lru_cache(maxsize=16)
def _converters(alias: str, names: tuple[str, ...]) -> list[list[tuple[Any, Any]]]:
    """Per column, the backend's and the field's converters with the expression they take."""
    connection = connections[alias]
    chains = []
    for name in names:
        column = _field(name).get_col(_META.db_table)
        found = [
            *connection.ops.get_db_converters(column),
            *column.get_db_converters(connection),
        ]
        chains.append([(converter, column) for converter in found])
    return chains


def _converted(
    row: Sequence[Any], converters: list[list[tuple[Any, Any]]], connection: BaseDatabaseWrapper
) -> tuple[Any, ...]:
    return tuple(
        _convert(value, chain, connection) for value, chain in zip(row, converters, strict=True)
    )


def _convert(value: Any, chain: Iterable[tuple[Any, Any]], connection: BaseDatabaseWrapper) -> Any:
    for converter, expression in chain:
        value = converter(value, expression, connection)
    return value
