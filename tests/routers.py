"""Database routers the tests install with ``settings.DATABASE_ROUTERS``."""

from __future__ import annotations

from typing import Any


class ReadsFromAReplica:
    """Sends reads of this app's models to ``replica``, an alias these tests never configure.

    Whatever reads them through the read router fails loudly under it;
    whatever must see the latest writes reads where they are written.
    Everything else (the user, Django's sessions) is the default database's.
    """

    def db_for_read(self, model: type[Any], **hints: Any) -> str | None:
        return "replica" if model._meta.app_label == "django_avaturn" else None

    def db_for_write(self, model: type[Any], **hints: Any) -> str | None:
        return None


class SwitchReadsFromAReplica:
    """Sends reads of the kill switch alone to ``replica``, an alias never configured.

    The admin's pages, which list sessions through the read router, still
    open under it; a read of the switch through the read router fails.
    """

    def db_for_read(self, model: type[Any], **hints: Any) -> str | None:
        return "replica" if model._meta.model_name == "serviceswitch" else None

    def db_for_write(self, model: type[Any], **hints: Any) -> str | None:
        return None


class EverythingOnOther:
    """Every model read from and written to ``other``: a site whose one database is not ``default``.

    Its tests ask for both databases (``django_db(databases=...)``); both
    have every table, so whatever still goes to ``default`` goes unnoticed
    unless a test looks there.
    """

    def db_for_read(self, model: type[Any], **hints: Any) -> str | None:
        return "other"

    def db_for_write(self, model: type[Any], **hints: Any) -> str | None:
        return "other"

    def allow_relation(self, first: Any, second: Any, **hints: Any) -> bool | None:
        return True
