"""The site engine's socket: Avaturn's ``external`` engine connects here.

``SiteEngineConsumer`` authenticates the socket before accepting it (the
token in the URL, the secret in ``X-Avaturn-Engine-Secret``, see
``tokens``), opens OpenAI Realtime (``realtime.connect_realtime``), and
runs the ``Bridge`` between the two with the site's tools (``ToolRunner``).
It joins its session's channel-layer group (``layer``), so the rest of the
site can end the call, have the avatar speak, or pass the model a message
from the visitor's page, from any process.

Whichever side ends, both sockets close and the row records why:

- Avaturn closes (the visitor left, ``max_duration``, a terminate): OpenAI is
  closed; the row ends ``engine_closed`` with the close code in its detail (a
  server shutting down closes the socket with 1012, and the detail says so).
  Avaturn never reopens the socket, so its session is terminated; if that
  fails the row stays ending for the expiry command (``engine_closed`` is not
  a reason whose asker retries), never live again.
- OpenAI closes or fails: Avaturn's socket is closed (4011, which ends the
  Avaturn session); the row ends ``upstream_error`` with the reason.
- The site ends the session (Stop, staff, the kill switch, expiry, a newer
  start): ``transitions`` tells the group once the end is committed, and both
  sockets close at once (1000); the row already says why.
- The server cancels the consumer (daphne's shutdown and close timeout): the
  row ends ``engine_closed`` and OpenAI is closed all the same.
- A handler fails (a bug of ours): as when OpenAI fails, but the row ends
  ``site_error``, with the error in its detail; the exception then reaches
  the server.
- The server's loop stops with the conversation running (daphne's shutdown
  may skip the cancelling): ``shutdown`` ends the row ``engine_closed`` at
  the process's exit.

Every end of the row goes through ``ending.end_session``, which terminates
the Avaturn session too (usually answered "already gone"): nothing is left
running whichever way the call ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Awaitable, Iterable
from typing import Any, NamedTuple

from channels.db import database_sync_to_async
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer
from channels.layers import get_channel_layer
from django.db import Error
from django.utils import timezone
from websockets.exceptions import ConnectionClosed

from django_avaturn.conf import avaturn_settings
from django_avaturn.engine import layer, shutdown, tokens
from django_avaturn.engine.bridge import Bridge, EndCause
from django_avaturn.engine.realtime import connect_realtime
from django_avaturn.engine.tools import ToolRunner, load_registry
from django_avaturn.exceptions import AvaturnError, TranscriptFull
from django_avaturn.logs import get_logger
from django_avaturn.models import EndReason, Engine, Session
from django_avaturn.sessions import ending, transcripts, transitions
from django_avaturn.upstream.redaction import excerpt

logger = get_logger(__name__)

# What the socket's closing log line says of a site's end whose reason it was not told.
_ENDED_BY_THE_SITE = "ended by the site"
# Policy violation: what every refusal closes with, before accept (HTTP 403).
REFUSED = 1008
# The socket's ends, as Avaturn sees them.
SITE_ENDED = 1000
# 1011 ("internal error") in the private range: daphne lets an application close
# only with 1000 or 3000-4999. Any close ends the Avaturn session.
UPSTREAM_FAILED = 4011
# What uvicorn and daphne close their sockets with when they shut down.
SERVER_SHUTDOWN = 1012
# A frame refused (a protocol error, text that is not UTF-8, one past a size
# limit): by the server (uvicorn hands its own close code to the application)
# or by Avaturn; daphne drops the connection instead (1006).
REFUSED_A_FRAME = frozenset({1002, 1007, 1009})
# Seconds between tries to read the channel layer after it failed.
LAYER_RETRY = 1.0
# How long an end waits for the bridge's tool tasks to wind down.
STOP_WAIT = 5.0
# Seconds between cancels of a pump that has not stopped (``_cancel_until_done``).
RECANCEL_AFTER = 0.5
# A close frame's reason holds at most 123 bytes.
MAX_CLOSE_REASON = 123


def authenticate(token: str, headers: Any) -> Session:
    """The row this socket may serve, marked connected; ``tokens.Refused`` otherwise.

    In order: the token's signature and age, the row it names (a site
    engine row, starting or live, whose user is active), the secret against
    the row's hash, then the single use (``transitions.mark_engine_connected``),
    so that a refused attempt never uses the token up.
    """
    pk = tokens.session_pk(token)
    row = Session.objects.primary().select_related("user").filter(pk=pk).first()
    if row is None:
        raise tokens.Refused(f"session row {pk} does not exist")
    if row.engine != Engine.SITE:
        raise tokens.Refused(f"session row {pk} is not a site engine session")
    if row.status not in transitions.CAPPED_STATUSES:
        raise tokens.Refused(f"session row {pk} is {row.status}")
    if not tokens.secret_matches(tokens.secret_from_headers(headers), row.engine_secret_hash):
        raise tokens.Refused(f"the {tokens.SECRET_HEADER} header of session row {pk} is wrong")
    if not isinstance(row.engine_plan, dict):
        # Written with the secret's hash: a row without it was not made by a start.
        raise tokens.Refused(f"session row {pk} has no engine plan")
    if not row.user.is_active:
        raise tokens.Refused(f"the user of session row {pk} is not active")
    if not transitions.mark_engine_connected(pk):
        raise tokens.Refused(f"the token of session row {pk} was used already (or it ended)")
    return row


class RowEnd(NamedTuple):
    """What ``end_row`` did: whether the row's end was recorded, and what the row says."""

    recorded: bool
    # The row's end reason: the one asked for, or an earlier end's; "(row gone)"
    # for a row deleted with its user; the one asked for when not recorded.
    reason: str


def end_row(pk: int, reason: str, detail: str) -> RowEnd:
    """End row ``pk`` for ``reason`` (terminating its Avaturn session); never raises.

    The row may have ended first (a Stop whose terminate made Avaturn close the
    socket): it keeps that reason. Not recorded when Avaturn or the database
    failed: the row is left as that failure left it (ending, or live), for the
    process's exit (``shutdown``) and the expiry command.
    """
    try:
        row = Session.objects.primary().filter(pk=pk).first()
        if row is None:
            return RowEnd(True, "(row gone)")
        ending.end_session(row, reason=reason, detail=detail)
    except AvaturnError as exc:
        logger.warning("Could not end session row %s after its engine socket closed: %s", pk, exc)
        return RowEnd(False, reason)
    except Exception:
        logger.exception("Could not end session row %s after its engine socket closed", pk)
        return RowEnd(False, reason)
    return RowEnd(True, row.end_reason)


def _still_running(pk: int) -> bool:
    return Session.objects.primary().filter(pk=pk, status__in=transitions.CAPPED_STATUSES).exists()


def store_transcript(row: Session, role: str, text: str) -> None:
    text = text.strip()[: avaturn_settings.TRANSCRIPT_MAX_LENGTH]
    if not text:
        return
    try:
        stored = transcripts.store_line(row, role=role, text=text, spoken_at=timezone.now())
    except TranscriptFull:
        logger.info("The transcript of session row %s is full; a line was dropped", row.pk)
        return
    if stored is None:
        logger.info("Session row %s is gone (its user deleted); a line was dropped", row.pk)


class AvaturnGone(Exception):
    """Sending to Avaturn failed: its socket is gone (the server's exception is chained)."""


# What a server raises from a send once the client has gone: uvicorn's
# ``ClientDisconnected`` (an ``OSError``), ``websockets``' ``ConnectionClosed``.
_SEND_FAILURES = (OSError, ConnectionClosed)


class _AvaturnSide:
    """The bridge's view of Avaturn's socket: this consumer's sends."""

    def __init__(self, consumer: SiteEngineConsumer) -> None:
        self._consumer = consumer

    async def send_bytes(self, data: bytes) -> None:
        # The server's send itself, not Channels' two wrappers around it: fifty a second
        # per conversation for the audio alone.
        try:
            await self._consumer.base_send({"type": "websocket.send", "bytes": data})
        except _SEND_FAILURES as exc:
            raise AvaturnGone(_describe(exc)) from exc

    async def send_text(self, text: str) -> None:
        try:
            await self._consumer.base_send({"type": "websocket.send", "text": text})
        except _SEND_FAILURES as exc:
            raise AvaturnGone(_describe(exc)) from exc


class SiteEngineConsumer(AsyncWebsocketConsumer):  # type: ignore[misc]  # Channels is untyped
    """One conversation: Avaturn's socket, OpenAI's, and the bridge between them."""

    row: Session | None = None
    bridge: Bridge | None = None
    runner: ToolRunner | None = None
    realtime: Any = None
    bridge_task: asyncio.Task[None] | None = None
    finished: bool = False
    _joining: asyncio.Task[None] | None = None
    _ending: asyncio.Task[None] | None = None  # what _finish started, once it has

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Set once Avaturn's socket is gone (websocket.disconnect) or the conversation ended.
        self._settled = asyncio.Event()

    # ------------------------------------------------------------------ connecting

    async def connect(self) -> None:
        token = str(self.scope.get("url_route", {}).get("kwargs", {}).get("token", ""))
        try:
            row = await database_sync_to_async(authenticate)(token, self.scope.get("headers", []))
        except tokens.Refused as refusal:
            # Never the token or the secret: only why.
            logger.warning("Refused a site engine socket: %s.", refusal)
            await self.close(code=REFUSED)
            return
        except Error as exc:
            # Normally before the token's single use: a retry once the database is
            # back may connect.
            logger.error(
                "Refused a site engine socket: the database failed while checking it (%s).",
                _describe(exc),
            )
            await self.close(code=UPSTREAM_FAILED)
            return
        self.row = row
        shutdown.running(row.pk)
        # Joined before accept, then the row read again: an end the site sent between
        # the authentication and the join went to an empty group.
        joined = await self._join_group(row.pk)
        await self.accept()
        logger.info("Site engine socket connected for session row %s", row.pk)
        if self.channel_layer is None:
            logger.warning(
                "No channel layer: the site cannot end session row %s's engine at once, "
                "nor send it messages (set CHANNEL_LAYERS).",
                row.pk,
            )
        elif not joined:
            self._joining = asyncio.create_task(self._keep_joining(row.pk))
        elif await self._ended_before_join(row.pk):
            return
        # Frames Avaturn sends meanwhile wait in this consumer's queue: nothing is lost.
        try:
            await self._open(row)
        except Exception as exc:
            detail = _describe(exc)
            logger.warning("Site engine of session row %s could not start: %s", row.pk, detail)
            await self._finish(
                EndReason.UPSTREAM_ERROR,
                f"The site engine could not open OpenAI Realtime: {detail}",
                close_code=UPSTREAM_FAILED,
                close_reason="The engine could not reach OpenAI.",
            )

    async def _join_group(self, pk: int) -> bool:
        """Join the session's channel-layer group; False if the layer failed (logged)."""
        if self.channel_layer is None:
            return False
        try:
            await self.channel_layer.group_add(layer.group_name(pk), self.channel_name)
        except Exception as exc:
            logger.warning(
                "Could not join session row %s's channel-layer group (retrying every %g s): %s",
                pk,
                LAYER_RETRY,
                _describe(exc),
            )
            return False
        return True

    async def _keep_joining(self, pk: int) -> None:
        """Until the group is joined: meanwhile the site's ends reach the conversation only
        through Avaturn's terminate, and ``say()`` and the page's messages not at all."""
        while True:
            await asyncio.sleep(LAYER_RETRY)
            if self.finished:
                return
            if await self._join_group(pk):
                await self._ended_before_join(pk)
                return

    async def _ended_before_join(self, pk: int) -> bool:
        """Once joined: an end the site recorded before went to an empty group, so the row
        is read again; ended, the conversation ends as the group would have told it."""
        if await database_sync_to_async(_still_running)(pk):
            return False
        await self._site_ended()
        return True

    async def _open(self, row: Session) -> None:
        plan: dict[str, Any] = row.engine_plan or {}
        options = avaturn_settings.SITE_ENGINE
        registry = load_registry(list(plan.get("tools") or []))
        session_config: dict[str, Any] = plan.get("realtime_session") or {}
        self.realtime = await connect_realtime(
            model=str(session_config.get("model") or avaturn_settings.MODEL),
            session_config=session_config,
            tools=registry.definitions(),
            websocket_url=options["OPENAI_WEBSOCKET_URL"],
        )
        if self.finished:  # the site ended it meanwhile
            await self._close_realtime()
            return

        def send_to_browser(data: dict[str, Any]) -> Awaitable[None] | None:
            # On the loop (the runner forwards a sync tool's messages there): the send
            # it awaits, in the order the tool sent them, and logs if it fails.
            if self.bridge is not None and not self.finished:
                return self.bridge.send_to_browser(data)
            return None

        self.runner = runner = ToolRunner(
            registry,
            session=row,
            user=row.user,
            timeout=options["TOOL_TIMEOUT"],
            record_arguments=options["RECORD_TOOL_ARGUMENTS"],
            send_to_browser=send_to_browser,
        )
        self.bridge = Bridge(
            _AvaturnSide(self),
            self.realtime,
            run_tool=runner,
            on_transcript=self._transcript if avaturn_settings.TRANSCRIPTS_ENABLED else None,
            tool_notice_after=options["TOOL_NOTICE_AFTER"],
        )
        self.bridge_task = asyncio.create_task(self._run_bridge(self.bridge))

    async def _transcript(self, role: str, text: str) -> None:
        if self.row is not None:
            # Not on the thread every consumer's database work shares: the bridge awaits this.
            await database_sync_to_async(store_transcript, thread_sensitive=False)(
                self.row, role, text
            )

    async def _run_bridge(self, bridge: Bridge) -> None:
        try:
            cause = await bridge.run()
        except AvaturnGone as gone:
            await self._avaturn_gone(str(gone))
            return
        except Exception as exc:
            logger.exception("The site engine's bridge failed")
            cause, detail = EndCause.OPENAI_FAILED, f"The bridge failed: {_describe(exc)}"
        else:
            detail = getattr(bridge, "end_detail", "") or ""
        if cause is EndCause.STOPPED:
            return
        if cause is EndCause.OPENAI_CLOSED:
            detail = detail or "OpenAI Realtime closed the connection."
        else:
            detail = detail or "OpenAI Realtime failed."
        await self._finish(
            EndReason.UPSTREAM_ERROR,
            detail,
            close_code=UPSTREAM_FAILED,
            close_reason=detail,
        )

    # ------------------------------------------------------------------ Avaturn's frames

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """Channels' ``AsyncConsumer.__call__``, without a task per message.

        The same contract: one handler runs at a time (Avaturn's socket and the channel
        layer alike), and ``StopConsumer`` from a handler ends the consumer. Channels
        waits on a fresh task per message (``await_many_dispatch``), so each of Avaturn's
        frames cost several turns of the event loop, and with many conversations on one
        loop those turns, not the CPU, capped the frames a conversation could forward.
        Here each source is read by a loop of its own that takes every message already
        queued at once, and a lock (taken without a turn when free) keeps the handlers
        one at a time. Avaturn's binary frames (its audio) go from the pump straight to
        the bridge, under the same lock.
        """
        self.scope = scope
        self.channel_layer = get_channel_layer(self.channel_layer_alias)
        self.base_send = send
        sources = [receive]
        if self.channel_layer is not None:
            self.channel_name = await self.channel_layer.new_channel()
            self.channel_receive = functools.partial(self.channel_layer.receive, self.channel_name)
            sources.append(self.channel_receive)
        one_at_a_time = asyncio.Lock()

        async def pump(source: Any) -> None:
            while True:
                message = await source()
                if message["type"] == "websocket.receive" and message.get("text") is None:
                    # Avaturn's audio, straight to the bridge: none of Channels' handler
                    # lookup and wrappers per frame. Dropped before the bridge is up (a
                    # refused socket) and once the conversation has ended.
                    data = message.get("bytes")
                    async with one_at_a_time:
                        bridge = self.bridge
                        if data is not None and bridge is not None and not self.finished:
                            await bridge.feed_audio(data)
                    continue
                async with one_at_a_time:
                    await self.dispatch(message)

        async def pump_layer(source: Any) -> None:
            # The layer's store failing (Redis down, a read timing out) must not end a
            # conversation Avaturn still holds: the site's ends then reach it through
            # Avaturn's terminate instead, until the layer answers again.
            while True:
                try:
                    message = await source()
                except Exception as exc:
                    logger.warning(
                        "Site engine socket: the channel layer failed (%s); retrying in %g s.",
                        _describe(exc),
                        LAYER_RETRY,
                    )
                    await asyncio.sleep(LAYER_RETRY)
                    continue
                if message.get("type") == layer.END and self.bridge is not None:
                    # At once, without the lock: a handler holding it may be waiting on
                    # a send to OpenAI that its stalled socket will not take for as long
                    # as the keepalive allows. Ending is idempotent, and every handler
                    # turns to a no-op once the bridge is stopped. Before the bridge is
                    # up, ``connect`` holds the lock and must finish its accept first.
                    await self.dispatch(message)
                    continue
                async with one_at_a_time:
                    await self.dispatch(message)

        pumps = [asyncio.ensure_future(pump(receive))]
        if len(sources) > 1:
            pumps.append(asyncio.ensure_future(pump_layer(sources[1])))
        failure: Exception | None = None
        try:
            done, _ = await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                with contextlib.suppress(StopConsumer):
                    task.result()
        except Exception as exc:  # a handler's bug: raised on once the conversation ended
            failure = exc
            raise
        finally:
            try:
                await _cancel_until_done(pumps)
            finally:
                # Also when this is cancelled again while the pumps wind down: ``_finish``
                # starts the ending before its first await.
                await self._end_whatever_happened(failure)

    async def _end_whatever_happened(self, failure: Exception | None) -> None:
        """The consumer is stopping: end the conversation if nothing has, and wait for the
        end (a handler's, which the pumps' cancellation left running, or this one)."""
        if self.row is not None and not self.finished:
            if failure is not None:
                detail = f"The engine failed: {_describe(failure)}"
                await self._finish(
                    EndReason.SITE_ERROR,
                    detail,
                    close_code=UPSTREAM_FAILED,
                    close_reason="The engine failed.",
                )
            else:
                # Cancelled: daphne stops an application that way, without a disconnect
                # first, on shutdown or after its close timeout.
                await self._finish(
                    EndReason.ENGINE_CLOSED,
                    "The server stopped the conversation without a close from Avaturn.",
                )
        if self._ending is not None:
            await asyncio.shield(self._ending)

    async def dispatch(self, message: dict[str, Any]) -> None:
        """Avaturn's text frames straight to ``receive`` (its audio never comes here: the
        pump hands it to the bridge); every other message as Channels does.

        Channels' ``dispatch`` first awaits ``aclose_old_connections()``, a hop through the
        one thread that every ``database_sync_to_async`` call of the process shares: fifty
        hops a second per conversation for the audio alone, queued behind every other
        conversation's database work. A frame's handling touches no database (the bridge
        never does), and this consumer's own database work all goes through
        ``database_sync_to_async``, which closes stale connections before and after each
        call: nothing is left for the per-frame hop to close.
        """
        if message["type"] == "websocket.receive":
            await self.websocket_receive(message)
        else:
            await super().dispatch(message)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        """One of Avaturn's JSON messages (its audio goes from the pump to the bridge)."""
        bridge = self.bridge
        if bridge is None or self.finished or text_data is None:
            return
        try:
            await bridge.feed_message(text_data)
        except Exception as exc:
            # A bug of ours on a message Avaturn sent: end the call cleanly (both
            # sockets, the row) rather than let the pump die with the sockets open.
            logger.exception("The site engine failed on a message from Avaturn")
            await self._finish(
                EndReason.SITE_ERROR,
                f"The engine failed on a message from Avaturn: {_describe(exc)}",
                close_code=UPSTREAM_FAILED,
                close_reason="The engine failed.",
            )

    async def _avaturn_gone(self, failure: str) -> None:
        """A send to Avaturn failed: Avaturn's side ended, whichever message comes first.

        The server delivers ``websocket.disconnect`` (with Avaturn's close code) once
        its socket is gone; ``disconnect`` ends the row with it. Should none come within
        ``STOP_WAIT``, the row ends ``engine_closed`` all the same, with the failed send in its
        detail. Never ``upstream_error``: OpenAI did nothing wrong.
        """
        if self.finished:
            return  # the disconnect (or the site's end) came first
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._settled.wait(), STOP_WAIT)
        await self._finish(
            EndReason.ENGINE_CLOSED,
            f"Avaturn's engine socket closed while the engine sent to it ({failure}).",
        )

    async def disconnect(self, code: int) -> None:
        self._settled.set()
        if self.row is None:
            return  # refused before accept
        if code == SERVER_SHUTDOWN:
            detail = "The server shut down (1012) while the conversation ran."
        elif code in REFUSED_A_FRAME:
            detail = (
                f"The engine socket closed ({code}): a frame was refused, by the server "
                "or by Avaturn."
            )
        else:
            detail = f"Avaturn closed the engine socket ({code})."
        await self._finish(EndReason.ENGINE_CLOSED, detail)

    # ------------------------------------------------------------------ the channel layer

    async def avaturn_engine_end(self, event: dict[str, Any]) -> None:
        reason = event.get("reason")
        await self._site_ended(reason if reason in EndReason.values else _ENDED_BY_THE_SITE)

    async def _site_ended(self, reason: str = _ENDED_BY_THE_SITE) -> None:
        """The site ended the session (for ``reason``, the row's, when the message named
        it): the row says why; close both sockets now."""
        await self._finish(
            None, close_code=SITE_ENDED, close_reason="The session ended.", site_reason=reason
        )

    async def avaturn_engine_page(self, event: dict[str, Any]) -> None:
        """The visitor's page sent its conversation a message (the messages endpoint)."""
        data = event.get("data")
        if self.bridge is not None and not self.finished and isinstance(data, dict):
            await self.bridge.page_message(data, respond=event.get("respond") is True)

    async def avaturn_engine_say(self, event: dict[str, Any]) -> None:
        text = event.get("text")
        if self.bridge is not None and not self.finished and isinstance(text, str):
            await self.bridge.say(text)

    # ------------------------------------------------------------------ ending

    async def _finish(
        self,
        reason: str | None,
        detail: str = "",
        *,
        close_code: int | None = None,
        close_reason: str = "",
        site_reason: str = _ENDED_BY_THE_SITE,
    ) -> None:
        """End the conversation once: the bridge, OpenAI, Avaturn's socket (if asked), the row.

        Later calls return at once. The ending runs as a task of its own, started before
        the first await: cancelling the caller (a pump the consumer's stop cancels;
        daphne cancelling the consumer) does not cut it short, and ``__call__`` waits
        for it before it returns (unless cancelled while it waits: the end still runs).
        """
        if self.finished:
            return
        self.finished = True
        self._settled.set()
        caller = asyncio.current_task()
        if self._joining is not None and self._joining is not caller:
            self._joining.cancel()
        if self.runner is not None:
            self.runner.close()  # before any await: nothing may cancel it away
        self._ending = asyncio.ensure_future(
            self._end(reason, detail, close_code, close_reason, caller, site_reason)
        )
        # Its failure is logged here: its awaiters may all have been cancelled.
        self._ending.add_done_callback(_log_ending_failure)
        await asyncio.shield(self._ending)

    async def _end(
        self,
        reason: str | None,
        detail: str,
        close_code: int | None,
        close_reason: str,
        caller: asyncio.Task[Any] | None,
        site_reason: str,
    ) -> None:
        bridge, task = self.bridge, self.bridge_task
        # The site's own end (``reason`` None) recorded the row, as ``site_reason``, before
        # telling the consumer; any other end is recorded below (not recorded: the
        # process's exit retries it).
        end = RowEnd(True, site_reason)
        try:
            if bridge is not None:
                with contextlib.suppress(Exception):
                    await bridge.stop()
            if task is not None and task is not caller:
                try:
                    await asyncio.wait_for(task, STOP_WAIT)
                except (asyncio.TimeoutError, Exception):
                    task.cancel()
            await self._close_realtime()
            if close_code is not None:
                reason_bytes = close_reason.encode("utf-8")[:MAX_CLOSE_REASON]
                try:
                    await self.close(code=close_code, reason=reason_bytes.decode("utf-8", "ignore"))
                except Exception as exc:  # the socket is gone already, or the server refused
                    logger.info("Closing Avaturn's engine socket failed: %s", _describe(exc))
        finally:
            # Whatever failed above, OpenAI's socket is closed and the row ends. Off the
            # shared database thread: the terminate may wait on Avaturn for its timeout.
            try:
                with contextlib.suppress(BaseException):  # (a no-op once closed above)
                    await self._close_realtime()
                if reason is not None and self.row is not None:
                    end = await database_sync_to_async(end_row, thread_sensitive=False)(
                        self.row.pk, reason, detail
                    )
                if self.row is not None and end.recorded:
                    shutdown.done(self.row.pk)
            finally:
                if self.row is not None:
                    await self._leave_group(self.row.pk)
        logger.info(
            "Site engine socket of session row %s closed (%s)",
            self.row.pk if self.row is not None else "?",
            end.reason if end.recorded else f"{end.reason}, not recorded",
        )

    async def _leave_group(self, pk: int) -> None:
        """Leave the row's group, last: a layer that is down may take its timeout to say so.

        Also when no join is known to have worked: a retried join cancelled by the end
        may have taken effect before its answer came back. Leaving a group one is not
        in changes nothing.
        """
        if self.channel_layer is not None:
            with contextlib.suppress(Exception):
                await self.channel_layer.group_discard(layer.group_name(pk), self.channel_name)

    async def _close_realtime(self) -> None:
        realtime, self.realtime = self.realtime, None
        if realtime is not None:
            try:
                await realtime.close()
            except Exception as exc:
                logger.info("Closing OpenAI Realtime failed: %s", _describe(exc))


async def _cancel_until_done(tasks: Iterable[asyncio.Future[Any]]) -> None:
    """Cancel the tasks and wait for them to end, cancelling again each ``RECANCEL_AFTER``.

    One cancel may not stop a pump: before Python 3.12, ``asyncio.wait_for`` loses a
    cancel that lands as the operation it waits on completes (CPython gh-86296).
    redis-py sends each command through it (with ``socket_timeout`` set), and
    channels_redis's ``receive`` then reads on; the consumer would never return,
    nor would the server's shutdown. Their failures, if any, are not raised here.
    """
    pending = {task for task in tasks if not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=RECANCEL_AFTER)


def _log_ending_failure(ending: asyncio.Future[None]) -> None:
    if not ending.cancelled() and (failure := ending.exception()) is not None:
        logger.error("Ending the site engine's conversation failed", exc_info=failure)


def _describe(exc: BaseException) -> str:
    return excerpt(f"{type(exc).__name__}: {exc}")
