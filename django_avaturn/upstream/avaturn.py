"""A small client for the Avaturn Live REST API over one pooled ``requests.Session``."""

from __future__ import annotations

import json as jsonlib
import re
import time
import traceback
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import requests
import requests.adapters
import urllib3.exceptions
from django.views.decorators.debug import sensitive_variables

from django_avaturn import __version__
from django_avaturn.exceptions import UpstreamError, UpstreamTimeout
from django_avaturn.logs import get_logger
from django_avaturn.upstream.redaction import excerpt

logger = get_logger(__name__)

SERVICE = "avaturn"
USER_AGENT = f"django-avaturn/{__version__} python-requests/{requests.__version__}"

# Idle upstream connections kept per process; more than any server's threads.
POOL_MAXSIZE = 100

# Statuses worth a second DELETE: the gateway or the service said "not now".
_RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})

# Avaturn's answers are a few hundred bytes; anything this big is not one.
MAX_ANSWER_BYTES = 1 << 20
# Reading an answer's body: a timeout or a dropped connection surfaces as
# urllib3's own exceptions (raw reads bypass requests' wrapping), a huge body
# as ValueError (see _read_until).
_READ_FAILURES = (
    TimeoutError,
    OSError,
    ValueError,
    requests.RequestException,
    urllib3.exceptions.HTTPError,
)
# A session id the API can carry: the column holds 255 characters, and a URL
# path segment (sessions/<id>/) neither a slash, control characters, nor
# the dot segments a browser resolves away.
_ADDRESSABLE_ID = re.compile(r"(?!\.{1,2}$)[^/\x00-\x1f\x7f]{1,255}")
# In a create answer too broken to parse, the id of the session it created.
_SESSION_ID_IN_TEXT = re.compile(rb'"session_id"\s*:\s*"([A-Za-z0-9_.:\-]{1,255})"')


@dataclass(frozen=True)
class _Answer:
    status_code: int
    content: bytes

    @property
    def ok(self) -> bool:
        return 200 <= self.status_code < 300


@dataclass(frozen=True)
class CreatedSession:
    session_id: str
    token: str

    def __repr__(self) -> str:
        # The token is the browser's credential for the session: keep it out of logs.
        return f"CreatedSession(session_id={self.session_id!r}, token='[redacted]')"


class PooledClient:
    """One upstream's JSON API over one pooled ``requests.Session``.

    ``requests`` applies its read timeout to each socket read, so an answer
    dripping a byte at a time would never time out. Every call therefore also
    has a deadline for the whole answer: connect timeout plus read timeout.
    Errors are ``UpstreamError``/``UpstreamTimeout`` naming ``service``, with
    a scrubbed excerpt of the answer.
    """

    service = SERVICE

    def __init__(
        self,
        *,
        base_url: str,
        api_key: str,
        connect_timeout: float,
        read_timeout: float,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._timeout = (connect_timeout, read_timeout)
        self._deadline = connect_timeout + read_timeout
        self._http = requests.Session()
        # requests keeps only 10 idle connections per host: a process with more
        # threads than that (gunicorn --threads 32) discarded the rest after each
        # call and opened a new connection (and TLS handshake) the next time.
        adapter = requests.adapters.HTTPAdapter(pool_maxsize=POOL_MAXSIZE)
        self._http.mount("https://", adapter)
        self._http.mount("http://", adapter)
        # requests re-reads proxy and CA-bundle variables from the environment on
        # every call (about half a millisecond each); read them once instead.
        environment = self._http.merge_environment_settings(self.base_url, {}, None, None, None)
        self._http.proxies.update(environment["proxies"])
        self._http.verify = environment["verify"]
        self._http.trust_env = False
        self._http.headers.update(
            {
                "Authorization": f"Bearer {api_key}",
                "User-Agent": USER_AGENT,
                "Accept": "application/json",
                **(headers or {}),
            }
        )

    def __repr__(self) -> str:
        return f"<{type(self).__name__} base_url={self.base_url!r}>"

    def close(self) -> None:
        self._http.close()

    @sensitive_variables("json")
    def _send(
        self,
        method: str,
        path: str,
        operation: str,
        *,
        json: dict[str, Any] | None = None,
        accept_statuses: tuple[int, ...] = (),
        read_body: bool = True,
        names_session: bool = False,
    ) -> _Answer:
        """One request, its whole answer read within the deadline.

        ``names_session``: a 2xx answer cut short (the deadline, a dropped
        connection) that already named a session raises ``IncompleteSession``,
        so the caller can end what Avaturn created.
        """
        deadline = time.monotonic() + self._deadline
        # Every error below is raised unchained (``from None``): the frames of
        # requests and urllib3 under this one hold the request's headers (the
        # API key) and body (the client secret), and Django's error pages and
        # reporters print the variables of a cause's frames too.
        try:
            response = self._http.request(
                method, self.base_url + path, json=json, timeout=self._timeout, stream=True
            )
        except requests.Timeout:
            raise UpstreamTimeout(service=self.service, operation=operation) from None
        except requests.RequestException as exc:
            lost = _ConnectionLost if _may_have_arrived(exc) else UpstreamError
            raise lost(service=self.service, operation=operation) from None
        except Exception as exc:
            # Not a failure requests knows (a bug in an adapter or below it).
            _log_unexpected(self.service, operation, exc)
            raise _UnexpectedFailure(service=self.service, operation=operation) from None
        accepted = response.ok or response.status_code in accept_statuses
        parts: list[bytes] = []
        try:
            content = _read_until(response, deadline, parts)
        except _READ_FAILURES as exc:
            response.close()  # the connection is in an unknown state: never reuse it
            if accepted and not read_body:
                # The status says it all (a DELETE): a slow body cannot undo it.
                return _Answer(response.status_code, b"")
            named = _SESSION_ID_IN_TEXT.search(b"".join(parts)) if names_session else None
            if accepted and named is not None:
                raise IncompleteSession(
                    named.group(1).decode("ascii"), response.status_code, "answer cut short"
                ) from None
            if accepted and isinstance(exc, (TimeoutError, urllib3.exceptions.TimeoutError)):
                raise UpstreamTimeout(service=self.service, operation=operation) from None
            if accepted:
                raise UpstreamError(
                    service=self.service,
                    operation=operation,
                    upstream_status=response.status_code,
                    body_excerpt="answer cut short",
                ) from None
            content = b""  # an error answer: its status is what matters
        else:
            # Read to the end: the connection goes back to the pool for the next call.
            response.raw.release_conn()
        if accepted:
            return _Answer(response.status_code, content)
        raise UpstreamError(
            service=self.service,
            operation=operation,
            upstream_status=response.status_code,
            body_excerpt=excerpt(content, extra_secrets=_engine_secrets(json)),
        )

    def _json(self, response: _Answer, operation: str) -> dict[str, Any]:
        try:
            data = jsonlib.loads(response.content)
        except (ValueError, RecursionError):
            # (Nested too deep, it is a RecursionError, whose traceback is noise.)
            # No excerpt: an accepted answer is where credentials are handed out
            # (Avaturn's session token, Cartesia's access token), in shapes no
            # pattern of ours knows, and half of one is still one.
            raise UpstreamError(
                service=self.service,
                operation=operation,
                upstream_status=response.status_code,
                body_excerpt=f"unparseable answer ({len(response.content)} bytes)",
            ) from None
        if not isinstance(data, dict):
            raise UpstreamError(
                service=self.service,
                operation=operation,
                upstream_status=response.status_code,
                body_excerpt="answer is not a JSON object",
            )
        return data


class AvaturnClient(PooledClient):
    """Create and terminate Avaturn Live sessions, and queue their speech.

    ``create_session`` is never retried: a lost answer may still have created
    a (billed) session, and a retry would create a second one. Terminating is
    idempotent, so ``terminate_session`` retries connection errors and 5xx.
    ``create_task`` is not retried either: a retry could say the text twice.
    """

    def __init__(
        self,
        *,
        base_url: str,
        api_key: str,
        connect_timeout: float,
        read_timeout: float,
        terminate_retries: int = 2,
        retry_backoff: float = 0.25,
    ) -> None:
        super().__init__(
            base_url=base_url,
            api_key=api_key,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
        )
        self._terminate_retries = terminate_retries
        self._retry_backoff = retry_backoff

    # The payload carries the OpenAI client secret: kept off Django's error pages.
    @sensitive_variables("payload")
    def create_session(self, payload: dict[str, Any]) -> CreatedSession:
        operation = "create session"
        try:
            response = self._send(
                "POST", "/api/v1/sessions", operation, json=payload, names_session=True
            )
        except UpstreamTimeout as exc:
            _unknown_outcome(exc, payload, "no answer in time")
            raise
        except _UnexpectedFailure as exc:
            _unknown_outcome(exc, payload, "an unexpected failure, perhaps after sending")
            raise
        except IncompleteSession:
            raise
        except UpstreamError as exc:
            status = exc.upstream_status
            if status is not None and (status >= 500 or 200 <= status < 300):
                # A 5xx may come after the session was created; a 2xx cut short
                # before naming it certainly does.
                _unknown_outcome(exc, payload, f"a {status} answer it could not read")
            elif isinstance(exc, _ConnectionLost):
                _unknown_outcome(exc, payload, "a connection dropped after sending")
            raise
        try:
            data = self._json(response, operation)
        except UpstreamError as exc:
            # A 2xx too broken to parse still created a session: end it if it names one.
            found = _SESSION_ID_IN_TEXT.search(response.content)
            if found is not None:
                raise IncompleteSession(
                    found.group(1).decode("ascii"), response.status_code, "unparseable answer"
                ) from None
            _unknown_outcome(exc, payload, "an unparseable answer")
            raise
        session_id = data.get("session_id")
        token = data.get("token")
        if not isinstance(session_id, str) or not session_id:
            raise _unknown_outcome(
                UpstreamError(
                    service=SERVICE,
                    operation=operation,
                    upstream_status=response.status_code,
                    body_excerpt="answer lacks session_id",
                ),
                payload,
                "an answer without session_id",
            )
        if not _ADDRESSABLE_ID.fullmatch(session_id):
            # Our table could not hold it or our URLs carry it, so nobody could
            # end it through the API: end it now, and fail the start.
            self._end_unaddressable(session_id, payload)
            raise UpstreamError(
                service=SERVICE,
                operation=operation,
                upstream_status=response.status_code,
                body_excerpt="answer has a session_id our API cannot address",
            )
        if not isinstance(token, str) or not token:
            # Avaturn created a session we cannot use: the caller must end it.
            raise IncompleteSession(session_id, response.status_code)
        return CreatedSession(session_id=session_id, token=token)

    def _end_unaddressable(self, session_id: str, payload: dict[str, Any]) -> None:
        try:
            self.terminate_session(session_id)
        except UpstreamError:
            # repr: control characters must not forge log lines.
            logger.error(
                "Avaturn session %s could not be recorded (an id the API cannot address) nor "
                "terminated; it ends by itself within user_absent_timeout=%ss; end it by hand.",
                excerpt(repr(session_id)),
                payload.get("user_absent_timeout"),
            )

    @sensitive_variables("text")
    def create_task(self, session_id: str, text: str) -> str:
        """Queue ``text`` for the avatar to speak; the task's id. A 404 is ``UpstreamError``."""
        operation = "create task"
        path = f"/api/v1/sessions/{quote(session_id, safe='')}/tasks"
        answer = self._send("POST", path, operation, json={"text": text})
        task_id = self._json(answer, operation).get("task_id")
        if not isinstance(task_id, str) or not task_id:
            raise UpstreamError(
                service=SERVICE,
                operation=operation,
                upstream_status=answer.status_code,
                body_excerpt="answer lacks task_id",
            )
        return task_id

    def terminate_session(self, session_id: str) -> bool:
        """End a session now. True if it was ended, False if it was already gone (404)."""
        operation = "terminate session"
        path = f"/api/v1/sessions/{quote(session_id, safe='')}"
        attempt = 0
        while True:
            try:
                response = self._send(
                    "DELETE", path, operation, accept_statuses=(404,), read_body=False
                )
            except UpstreamError as exc:
                retryable = (
                    exc.upstream_status is None or exc.upstream_status in _RETRYABLE_STATUSES
                )
                if not retryable or attempt >= self._terminate_retries:
                    raise
                attempt += 1
                logger.info(
                    "Retrying Avaturn terminate of %s (attempt %d): %s",
                    excerpt(repr(session_id)),
                    attempt + 1,
                    exc.describe(),
                )
                time.sleep(self._retry_backoff * (2 ** (attempt - 1)))
                continue
            return response.status_code != 404


class _UnexpectedFailure(UpstreamError):
    """The request failed in a way requests does not know: it may have been sent."""


class _ConnectionLost(UpstreamError):
    """The connection failed after it was made: the request may have reached Avaturn."""


class IncompleteSession(UpstreamError):
    """Avaturn created a session, named it, but the answer is unusable (no token, cut short)."""

    def __init__(
        self, session_id: str, upstream_status: int, why: str = "answer lacks token"
    ) -> None:
        super().__init__(
            service=SERVICE,
            operation="create session",
            upstream_status=upstream_status,
            body_excerpt=why,
        )
        self.session_id = session_id


def _read_until(response: requests.Response, deadline: float, parts: list[bytes]) -> bytes:
    """The whole body, or ``TimeoutError`` once ``deadline`` passes (or ``ValueError`` if huge).

    ``read1`` returns after one socket read, so the deadline is checked
    between reads; each read is bounded by the read timeout. What arrived
    before a failure stays in ``parts``: a cut-short answer may name a session.
    """
    size = 0
    while True:
        if time.monotonic() > deadline:
            raise TimeoutError("the answer did not arrive in time")
        chunk = response.raw.read1(65536, decode_content=True)
        if not chunk:
            return b"".join(parts)
        size += len(chunk)
        if size > MAX_ANSWER_BYTES:
            raise ValueError("the answer is too large")
        parts.append(chunk)


def _may_have_arrived(failure: BaseException | None) -> bool:
    """Whether a request that failed on its connection may have reached Avaturn.

    Only a connection that was never made (refused, unreachable) proves it
    did not; one that dropped or reset after the request went out does not.
    """
    if not isinstance(failure, requests.ConnectionError) or isinstance(
        failure, requests.ConnectTimeout
    ):
        return False
    reason = failure.args[0] if failure.args else None
    # requests wraps urllib3's MaxRetryError, whose reason is the real failure.
    reason = getattr(reason, "reason", reason)
    return not isinstance(reason, urllib3.exceptions.NewConnectionError)


def _engine_secrets(payload: dict[str, Any] | None) -> list[str]:
    """The credentials a create body carries, to scrub from an answer that echoes them."""
    engine = (payload or {}).get("conversation_engine")
    if not isinstance(engine, dict):
        return []
    found = [engine.get("client_secret"), engine.get("access_token")]
    headers = engine.get("headers")
    if isinstance(headers, dict):
        found.extend(headers.values())
    # (The URL too: a signed per-session URL is a credential.)
    found.append(engine.get("url"))
    return [value for value in found if isinstance(value, str) and len(value) >= 6]


def _log_unexpected(service: str, operation: str, exc: Exception) -> None:
    # The traceback as text (code lines, not the frames' variables, which
    # hold the request body) and the exception's type, not its message.
    stack = "".join(traceback.format_tb(exc.__traceback__))
    logger.error(
        "%s %s failed with an unexpected %s:\n%s", service, operation, type(exc).__name__, stack
    )


def _unknown_outcome(exc: UpstreamError, payload: dict[str, Any], what: str) -> UpstreamError:
    """Mark ``exc`` as leaving a session that may be running (``may_be_running``), and log it."""
    exc.may_be_running = True
    # Avaturn may have created (and may bill) a session whose id we never
    # learnt. It has no endpoint to list sessions, so nobody can end it now:
    # it ends by itself once no browser joins (user_absent_timeout) or at
    # max_duration. Loud, because it costs money.
    logger.error(
        "Avaturn create session got %s: a session may be running that cannot be "
        "terminated; it ends by itself within user_absent_timeout=%ss (max_duration=%ss).",
        what,
        payload.get("user_absent_timeout"),
        payload.get("max_duration"),
    )
    return exc
