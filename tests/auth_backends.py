"""Authentication backends for tests: a site's backend failing as a directory server can."""

from __future__ import annotations

import threading
from typing import Any

from django.contrib.auth.backends import ModelBackend


class UnreachableDirectory(ModelBackend):
    """Answers ``has_perm`` as an LDAP backend whose server is down does: it raises."""

    def has_perm(self, user_obj: Any, perm: str, obj: Any = None) -> bool:
        raise ConnectionError("the directory server did not answer")


# Set by a test to let a SlowDirectory answer.
DIRECTORY_ANSWERS = threading.Event()


class SlowDirectory(ModelBackend):
    """Answers ``has_perm`` only once ``DIRECTORY_ANSWERS`` is set: a server that hangs."""

    def has_perm(self, user_obj: Any, perm: str, obj: Any = None) -> bool:
        DIRECTORY_ANSWERS.wait(30)
        return super().has_perm(user_obj, perm, obj)
