"""The quickstart's broker: a new OpenAI client and a new HTTP client on every request.

Same authentication (session cookie + CSRF), same upstream calls and payload
shape as ``django_avaturn``; no database row, no cap, no cleanup. Everything
it leaves out only makes it cheaper, so the comparison favours the baseline.
"""

from __future__ import annotations

import openai
import requests
from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.http import require_http_methods


def _conf() -> dict[str, str]:
    conf = settings.AVATURN
    return {
        "api_url": str(conf["API_URL"]),
        "api_key": str(conf["API_KEY"]),
        "openai_key": str(conf["OPENAI_API_KEY"]),
        "openai_url": str(conf["OPENAI_BASE_URL"]),
    }


def start_with(client: openai.OpenAI, http: requests.Session) -> JsonResponse:
    """The start both comparison brokers make; they differ in where the clients come from."""
    conf = _conf()
    secret = client.realtime.client_secrets.create(
        expires_after={"anchor": "created_at", "seconds": 600},
        session={"type": "realtime", "model": "gpt-realtime", "instructions": "Be brief."},
    )
    answer = http.post(
        conf["api_url"] + "/api/v1/sessions",
        headers={"Authorization": f"Bearer {conf['api_key']}"},
        json={"conversation_engine": {"type": "openai-realtime", "client_secret": secret.value}},
        timeout=20,
    )
    answer.raise_for_status()
    data = answer.json()
    return JsonResponse({"session_id": data["session_id"], "token": data["token"]}, status=201)


def end_with(http: requests.Session, session_id: str) -> HttpResponse:
    conf = _conf()
    answer = http.delete(
        f"{conf['api_url']}/api/v1/sessions/{session_id}",
        headers={"Authorization": f"Bearer {conf['api_key']}"},
        timeout=20,
    )
    if answer.status_code not in (200, 204, 404):
        answer.raise_for_status()
    return HttpResponse(status=204)


@login_required
@require_http_methods(["POST"])
def start(request: HttpRequest) -> JsonResponse:
    conf = _conf()
    client = openai.OpenAI(api_key=conf["openai_key"], base_url=conf["openai_url"])
    # A session used once and closed: what requests.post() does.
    with requests.Session() as http:
        return start_with(client, http)


@login_required
@require_http_methods(["DELETE"])
def end(request: HttpRequest, session_id: str) -> HttpResponse:
    with requests.Session() as http:
        return end_with(http, session_id)
