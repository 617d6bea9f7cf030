"""Transport-level stand-ins for the two upstreams in unit tests.

OpenAI: the real ``openai`` SDK builds and sends its real request; an
``httpx2.MockTransport`` answers it (``AVATURN["OPENAI_HTTP_CLIENT"]`` points
at ``openai_http_client`` below). Avaturn: the real ``requests`` session sends;
``responses`` answers at the adapter.
"""

from __future__ import annotations

import itertools
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx2
import responses

AVATURN_URL = "https://avaturn.test"
OPENAI_URL = "https://openai.test/v1"
DELETE_URL = re.compile(rf"{re.escape(AVATURN_URL)}/api/v1/sessions/[^/]+$")

Handler = Callable[[httpx2.Request], httpx2.Response]


@dataclass
class OpenAIUpstream:
    """Answers ``POST /realtime/client_secrets``; records what the SDK sent."""

    requests: list[httpx2.Request] = field(default_factory=list)
    handler: Handler | None = None
    counter: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        self.requests.append(request)
        if self.handler is not None:
            return self.handler(request)
        return self.success(request)

    def success(self, request: httpx2.Request) -> httpx2.Response:
        body = json.loads(request.content)
        seconds = body["expires_after"]["seconds"]
        return httpx2.Response(
            200,
            json={
                "value": f"ek_test_secret_{next(self.counter):04d}_abcdef",
                "expires_at": int(time.time()) + seconds,
                "session": {**body["session"], "object": "realtime.session", "id": "sess_x"},
            },
        )

    def reply(self, status: int, body: Any = None, *, raw: bytes | None = None) -> None:
        def handler(request: httpx2.Request) -> httpx2.Response:
            if raw is not None:
                return httpx2.Response(
                    status, content=raw, headers={"content-type": "application/json"}
                )
            return httpx2.Response(status, json=body if body is not None else {})

        self.handler = handler

    def raise_(self, exc: Exception) -> None:
        def handler(request: httpx2.Request) -> httpx2.Response:
            raise exc

        self.handler = handler

    def sent_json(self, index: int = -1) -> Any:
        return json.loads(self.requests[index].content)


# The SDK is built once per settings change; it reaches whichever upstream
# the current test installed through this indirection.
current_openai: OpenAIUpstream = OpenAIUpstream()


def openai_http_client() -> httpx2.Client:
    return httpx2.Client(transport=httpx2.MockTransport(lambda r: current_openai(r)))


class AvaturnUpstream:
    """``responses``-backed Avaturn: create returns fresh ids, DELETE answers 200."""

    def __init__(self, rsps: responses.RequestsMock) -> None:
        self.rsps = rsps
        self.created: list[dict[str, Any]] = []
        self.deleted: list[str] = []
        self._ids = itertools.count(1)
        self._before_create: Callable[[Any], None] | None = None
        rsps.add_callback(responses.POST, f"{AVATURN_URL}/api/v1/sessions", callback=self._create)
        rsps.add_callback(
            responses.DELETE,
            DELETE_URL,
            callback=self._delete,
        )

    def _create(self, request: Any) -> tuple[int, dict[str, str], str]:
        if self._before_create is not None:
            self._before_create(request)
        body = json.loads(request.body)
        self.created.append(body)
        n = next(self._ids)
        return 201, {}, json.dumps({"session_id": f"av-sess-{n}", "token": f"av-token-{n}"})

    def _delete(self, request: Any) -> tuple[int, dict[str, str], str]:
        session_id = request.url.rsplit("/", 1)[1]
        self.deleted.append(session_id)
        return 200, {}, json.dumps({"status": "terminated"})

    def on_create(self, status: int, body: Any = None, **kwargs: Any) -> None:
        self.rsps.replace(
            responses.POST, f"{AVATURN_URL}/api/v1/sessions", status=status, json=body, **kwargs
        )

    def before_create(self, callback: Callable[[Any], None]) -> None:
        """Run ``callback(request)`` while each create is in flight, then answer it as usual."""
        self._before_create = callback

    def on_create_raise(self, exc: Exception) -> None:
        self.rsps.replace(responses.POST, f"{AVATURN_URL}/api/v1/sessions", body=exc)

    def on_delete(self, status: int, body: Any = None, **kwargs: Any) -> None:
        self.rsps.replace(responses.DELETE, DELETE_URL, status=status, json=body, **kwargs)

    def on_delete_call(self, callback: Callable[[Any], tuple[int, dict[str, str], str]]) -> None:
        """Answer terminates with ``callback(request)``: for what happens meanwhile."""
        self.rsps.remove(responses.DELETE, DELETE_URL)
        self.rsps.add_callback(responses.DELETE, DELETE_URL, callback=callback)

    def on_delete_raise(self, exc: Exception) -> None:
        self.rsps.replace(responses.DELETE, DELETE_URL, body=exc)

    def create_calls(self) -> list[Any]:
        return [c for c in self.rsps.calls if c.request.method == "POST"]

    def delete_calls(self) -> list[Any]:
        return [c for c in self.rsps.calls if c.request.method == "DELETE"]
