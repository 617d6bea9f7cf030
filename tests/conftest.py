from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import responses

from django_avaturn.upstream.clients import reset_clients
from tests import upstreams

pytest_plugins = ("tests.live_fake",)


@pytest.fixture(autouse=True)
def _fresh_clients() -> Iterator[None]:
    reset_clients()
    yield
    reset_clients()


@pytest.fixture
def openai_upstream() -> Iterator[upstreams.OpenAIUpstream]:
    upstream = upstreams.OpenAIUpstream()
    upstreams.current_openai = upstream
    yield upstream
    upstreams.current_openai = upstreams.OpenAIUpstream()


@pytest.fixture
def avaturn_upstream() -> Iterator[upstreams.AvaturnUpstream]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        yield upstreams.AvaturnUpstream(rsps)


@pytest.fixture
def upstream(
    openai_upstream: upstreams.OpenAIUpstream, avaturn_upstream: upstreams.AvaturnUpstream
) -> Any:
    """Both upstreams answering successfully unless a test says otherwise."""

    class Both:
        openai = openai_upstream
        avaturn = avaturn_upstream

    return Both


@pytest.fixture
def user(django_user_model: Any) -> Any:
    return django_user_model.objects.create_user(email="ada@example.com", password="pw")


@pytest.fixture
def other_user(django_user_model: Any) -> Any:
    return django_user_model.objects.create_user(email="bob@example.com", password="pw")


@pytest.fixture
def api_client(user: Any) -> Any:
    from rest_framework.test import APIClient

    client = APIClient(enforce_csrf_checks=True)
    client.force_login(user)
    return client
