"""The API's shortcuts past DRF's machinery answer what that machinery answers."""

from __future__ import annotations

from typing import Any

import pytest
from django.http import Http404
from django.test import RequestFactory
from django.utils import timezone
from rest_framework import exceptions
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.renderers import BrowsableAPIRenderer, JSONRenderer
from rest_framework.request import Request

from django_avaturn.api.negotiation import SingleRendererNegotiation
from django_avaturn.api.renderers import AsciiJSONRenderer
from django_avaturn.api.serializers import StartedSessionSerializer, started_body
from django_avaturn.models import Engine

ACCEPTS = [
    None,
    "*/*",
    "application/json",
    "application/json; indent=4",
    "application/*",
    "text/html",
    "text/html, */*;q=0.1",
    "application/xml",
    "",
    "*/*; charset=utf-8",
]
QUERIES = ["", "format=json", "format=api", "other=1"]


def _answer(
    negotiation: Any, accept: str | None, query: str, renderers: list[Any], suffix: Any
) -> Any:
    headers = {} if accept is None else {"HTTP_ACCEPT": accept}
    path = "/avaturn/sessions/" + (f"?{query}" if query else "")
    request = Request(RequestFactory().post(path, **headers))
    try:
        renderer, media_type = negotiation.select_renderer(request, renderers, suffix)
    except exceptions.APIException as exc:
        return type(exc), exc.status_code
    except Http404:
        return Http404
    return type(renderer), media_type


@pytest.mark.parametrize("suffix", [None, "json", "api"])
@pytest.mark.parametrize("query", QUERIES)
@pytest.mark.parametrize("accept", ACCEPTS)
@pytest.mark.parametrize(
    "renderers",
    [[AsciiJSONRenderer], [JSONRenderer], [JSONRenderer, BrowsableAPIRenderer]],
    ids=["ascii-json", "json", "two"],
)
def test_the_same_renderer_and_media_type_as_drf(
    accept: str | None, query: str, suffix: str | None, renderers: list[Any]
) -> None:
    instances = [cls() for cls in renderers]
    ours = _answer(SingleRendererNegotiation(), accept, query, instances, suffix)
    assert ours == _answer(DefaultContentNegotiation(), accept, query, instances, suffix)


@pytest.mark.parametrize("tz", ["UTC", "Asia/Kolkata"])
@pytest.mark.parametrize("datetime_format", [None, "%Y-%m-%d %H:%M"])
def test_the_start_answer_is_what_its_serializer_writes(
    settings: Any, tz: str, datetime_format: str | None
) -> None:
    if datetime_format is not None:
        settings.REST_FRAMEWORK = {"DATETIME_FORMAT": datetime_format}
    now = timezone.now()
    with timezone.override(tz):
        for expires_at in (None, now, now.replace(microsecond=0)):
            for engine in (Engine.OPENAI_REALTIME, "site", Engine.CARTESIA.value):
                values = {
                    "session_id": "abc",
                    "token": "tok",
                    "expires_at": expires_at,
                    "api_host": "https://api.avaturn.live",
                    "engine": engine,
                }
                assert started_body(**values) == StartedSessionSerializer(values).data
    assert list(started_body(**values)) == list(StartedSessionSerializer().fields)
