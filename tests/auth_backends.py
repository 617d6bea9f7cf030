"""Authentication backends for tests: a site's backend failing as a directory server can."""

from __future__ import annotations

import threading
from typing import Any

from django.contrib.auth.backends import ModelBackend


class UnreachableDirectory(ModelBackend):
    """Answers ``has_perm`` as an LDAP backend whose server is down does: it raises."""

    def has_perm(self, user_obj: Any, perm: str, obj: Any = None) -> bool:
        raise ConnectionError("the directory server did not answer")


class TimingOutDirectory(ModelBackend):
    """Answers ``has_perm`` as an LDAP backend whose own socket timed out does."""

    def has_perm(self, user_obj: Any, perm: str, obj: Any = None) -> bool:
        raise TimeoutError("the directory server timed out")


# Set by a test to let a SlowDirectory answer; ASKED is set at each question.
DIRECTORY_ANSWERS = threading.Event()
ASKED = threading.Event()
QUESTIONS: list[str] = []


class SlowDirectory(ModelBackend):
    """Answers ``has_perm`` only once ``DIRECTORY_ANSWERS`` is set: a server that hangs."""

    def has_perm(self, user_obj: Any, perm: str, obj: Any = None) -> bool:
        QUESTIONS.append(perm)
        ASKED.set()
        DIRECTORY_ANSWERS.wait(30)
        return super().has_perm(user_obj, perm, obj)
