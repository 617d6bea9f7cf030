"""Schemathesis against the example project's published OpenAPI schema.

The schema is loaded from the example's own ``/api/schema/`` and every
operation is called in-process through Django's WSGI handler (the full
middleware stack: sessions, CSRF, authentication), signed in with a session
cookie and a CSRF header. Both upstreams are the loopback fake over real HTTP,
healthy, so no answer may be a 5xx, and every answer must match the schema's
status codes, content types and bodies.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import pytest

from tests.helpers import AvaturnOverrides

schemathesis = pytest.importorskip(
    "schemathesis", reason="schemathesis is not installed (pip install -e '.[test]')"
)
pytest.importorskip(
    "drf_spectacular", reason="drf-spectacular is not installed (pip install -e '.[schema]')"
)

from django.core.cache import cache  # noqa: E402
from django.core.handlers.wsgi import WSGIHandler  # noqa: E402
from django.core.signals import request_finished, request_started  # noqa: E402
from django.db import close_old_connections  # noqa: E402
from django.test import Client, override_settings  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from django_avaturn import services  # noqa: E402
from django_avaturn.models import Session  # noqa: E402
from django_avaturn.testing import FakeUpstream  # noqa: E402
from example_project import settings as example_settings  # noqa: E402

pytestmark = [pytest.mark.schema, pytest.mark.django_db]

# Not the auth checks: the cookie schemathesis would vary is always replaced by
# a valid one here (test_security.py covers anonymous and CSRF-less requests).
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]

# Enough to reach every status a healthy fake allows, bounded for a 2-core machine.
MAX_EXAMPLES = 25


class SignedIn:
    """A signed-in visitor's cookies and the CSRF header a browser script would send."""

    def __init__(self, session_key: str) -> None:
        token = secrets.token_hex(16)
        self.cookies = {"sessionid": session_key, "csrftoken": token}
        self.headers = {"X-CSRFToken": token}


@pytest.fixture
def signed_in(user: Any) -> SignedIn:
    client = Client()
    client.force_login(user)
    return SignedIn(client.cookies["sessionid"].value)


EXAMPLE_URLCONF = "example_project.urls"
APP = WSGIHandler()


def _published_schema() -> Any:
    # Loaded at collection (schemathesis' lazy fixture loader needs a pytest < 9
    # internal); fetching the schema touches no database.
    with override_settings(ROOT_URLCONF=EXAMPLE_URLCONF):
        return schemathesis.openapi.from_wsgi("/api/schema/", APP)


schema = _published_schema()


@pytest.fixture
def example_api(
    live_fake: FakeUpstream, settings: Any, avaturn: AvaturnOverrides
) -> Iterator[None]:
    """The example project's URLs and AVATURN settings, pointed at the fake."""
    settings.ROOT_URLCONF = EXAMPLE_URLCONF
    example = {
        key: value
        for key, value in example_settings.AVATURN.items()
        if key not in {"API_URL", "OPENAI_BASE_URL", "API_KEY", "OPENAI_API_KEY"}
    }
    # The example's settings and its default throttle, with transcripts on (the
    # example leaves them off) so that endpoint's success path is exercised too.
    avaturn(**{**example, "START_THROTTLE_RATE": "10/minute", "TRANSCRIPTS_ENABLED": True})
    cache.clear()
    # As Django's test client does: the handler would otherwise close the test's
    # connection (and its transaction) after every answer.
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    try:
        yield
    finally:
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)
        # The throttle counts in the cache, and later tests reuse user ids.
        cache.clear()


@pytest.fixture
def started(example_api: None, user: Any) -> str:
    """One ended and one live session, so lists and details have rows to show."""
    services.start_session(user)
    # The example's cap is one live session per user: this start replaces the first.
    return str(services.start_session(user).session.session_id)


@schema.parametrize()
@schema.given(own_session=st.booleans())
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_api_conforms_to_its_schema(
    case: Any, own_session: bool, user: Any, started: str, signed_in: SignedIn
) -> None:
    if own_session and "session_id" in (case.path_parameters or {}):
        # Half the time, the caller's newest session: random ids only ever reach a 404.
        newest = Session.objects.for_user(user).exclude(session_id=None).first()
        case.path_parameters["session_id"] = newest.session_id if newest else started
    case.call_and_validate(headers=signed_in.headers, cookies=signed_in.cookies, checks=CHECKS)
