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
