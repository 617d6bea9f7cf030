"""Site tools: the registry, and the runner's calls end to end (real threads, rows, permissions)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import threading
import time
import warnings
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth.models import Permission
from django.db import DatabaseError, connections, transaction
from django.urls import reverse

from django_avaturn.engine import ToolContext, ToolError, protocol, tool, tools
from django_avaturn.engine.tools import (
    BROWSER_MESSAGE_MAX_BYTES,
    BrowserMessageRefused,
    ToolRegistry,
    ToolRunner,
    load_registry,
    tools_in,
)
from django_avaturn.exceptions import NotConfigured
from django_avaturn.models import SessionStatus, ToolCall, ToolCallStatus
from tests import auth_backends
from tests import engine_tools_example as example
from tests.helpers import live, logged_in, run_coroutine, staff
from tests.live_fake import wait_until

pytestmark = pytest.mark.django_db(transaction=True)

EXAMPLE = "tests.engine_tools_example"


# The thread the last ``run`` ran its event loop on (the socket's loop, as tools see it).
LOOP_THREAD: dict[str, Any] = {}


def run(coroutine: Coroutine[Any, Any, Any]) -> Any:
    async def on_loop() -> Any:
        LOOP_THREAD["ident"] = threading.get_ident()
        LOOP_THREAD["name"] = threading.current_thread().name
        return await coroutine

    return run_coroutine(on_loop())


class Browser:
    """The host's send_to_browser: an async callable, as the bridge's is."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.loop_threads: set[int] = set()

    async def __call__(self, data: dict[str, Any]) -> None:
        self.loop_threads.add(threading.get_ident())
        await asyncio.sleep(0)
        self.sent.append(data)


@pytest.fixture
def session(user: Any) -> Any:
    return live(user, "sess-tools", engine="site")


@pytest.fixture
def browser() -> Browser:
    return Browser()


def example_runner(
    session: Any,
    send_to_browser: Callable[[dict[str, Any]], object],
    *,
    record_arguments: bool = False,
    timeout: float = 5,
) -> ToolRunner:
    """A runner of the example module's tools, for ``session``."""
    return ToolRunner(
        load_registry([EXAMPLE]),
        session=session,
        user=session.user,
        timeout=timeout,
        record_arguments=record_arguments,
        send_to_browser=send_to_browser,
    )


@pytest.fixture
def runner(session: Any, browser: Browser) -> ToolRunner:
    return example_runner(session, browser, record_arguments=False)


@pytest.fixture
def recording(session: Any, browser: Browser) -> ToolRunner:
    """The example's runner with ``RECORD_TOOL_ARGUMENTS`` on."""
    return example_runner(session, browser, record_arguments=True)


def runner_of(function: Any, session: Any, browser: Browser, *, timeout: float) -> ToolRunner:
    """A runner of the one ``@tool`` ``function``, for ``session``."""
    return ToolRunner(
        ToolRegistry([function.avaturn_tool]),
        session=session,
        user=session.user,
        timeout=timeout,
        record_arguments=False,
        send_to_browser=browser,
    )


def call(runner: ToolRunner, call_id: str, name: str, arguments: Any = None) -> Any:
    text = arguments if isinstance(arguments, str) else json.dumps(arguments or {})
    return json.loads(run(runner(call_id, name, text)))


def row(call_id: str) -> ToolCall:
    return ToolCall.objects.get(call_id=call_id)


# ---------------------------------------------------------------------- the registry


def test_load_registry_collects_a_modules_tools_in_realtime_shape() -> None:
    registry = load_registry([EXAMPLE])
    assert "whoami" in registry
    assert registry.get("add") is example.add.avaturn_tool  # type: ignore[attr-defined]
    assert registry.get("nope") is None
    definitions = {d["name"]: d for d in registry.definitions()}
    assert len(definitions) == len(registry) == 15
    assert definitions["add"] == {
        "type": "function",
        "name": "add",
        "description": "Add two whole numbers.",
        "parameters": {
            "type": "object",
            "properties": {
                "a": {"type": "integer", "description": "The first number."},
                "b": {"type": "integer", "description": "The second number."},
            },
            "required": ["a"],
            "additionalProperties": False,
        },
    }


def test_a_tool_reexported_by_a_second_module_counts_once() -> None:
    registry = load_registry([EXAMPLE, "tests.engine_tools_reexport"])
    assert [spec.name for spec in registry].count("add") == 1


def test_two_tools_with_one_name_are_refused_naming_both() -> None:
    with pytest.raises(NotConfigured) as raised:
        load_registry([EXAMPLE, "tests.engine_tools_duplicate"])
    message = str(raised.value)
    assert "'whoami'" in message
    assert "tests.engine_tools_example.whoami" in message
    assert "tests.engine_tools_duplicate.another_whoami" in message


def test_a_module_that_cannot_be_imported_is_named() -> None:
    with pytest.raises(NotConfigured) as raised:
        load_registry(["tests.no_such_tools"])
    assert "'tests.no_such_tools'" in str(raised.value)
    assert "ModuleNotFoundError" in str(raised.value)


def test_a_module_whose_tool_is_unsupported_is_named_with_the_reason() -> None:
    with pytest.raises(NotConfigured) as raised:
        load_registry(["tests.engine_tools_unsupported"])
    message = str(raised.value)
    assert "'tests.engine_tools_unsupported'" in message
    assert "TypeError" in message
    assert "parameter 'names'" in message
    assert "not a supported tool parameter type" in message


def test_a_module_without_tools_is_refused() -> None:
    with pytest.raises(NotConfigured, match="has no @tool functions"):
        load_registry(["tests.helpers"])


def test_another_decorator_over_tool_is_refused() -> None:
    with pytest.raises(NotConfigured, match=r"engine_tools_wrapped\.hidden: put @tool outermost"):
        load_registry(["tests.engine_tools_wrapped"])


def test_a_registry_refuses_a_second_tool_of_one_name() -> None:
    @tool(name="add")
    def other_add(ctx: ToolContext) -> int:
        """Another add."""
        return 0

    with pytest.raises(NotConfigured):
        ToolRegistry([example.add.avaturn_tool, other_add.avaturn_tool])  # type: ignore[attr-defined]


def test_tools_in_lists_the_modules_tools() -> None:
    names = {spec.name for spec in tools_in(example)}
    assert {"whoami", "add", "slow_sync", "show_card_async"} <= names


# ---------------------------------------------------------------------- calls that answer


def test_a_sync_tool_runs_in_a_thread_as_the_sessions_user(
    runner: ToolRunner, session: Any
) -> None:
    answer = call(runner, "call-1", "whoami")
    assert answer == {
        "result": {
            "email": "ada@example.com",
            "session": session.pk,
            "call_id": "call-1",
            "thread": "avaturn-tool-whoami",
        }
    }
    recorded = row("call-1")
    assert (recorded.tool, recorded.status, recorded.session_id) == (
        "whoami",
        ToolCallStatus.OK,
        session.pk,
    )
    assert recorded.arguments is None
    assert recorded.duration_ms >= 0


def test_an_async_tool_runs_on_the_loop(runner: ToolRunner) -> None:
    answer = call(runner, "call-a", "whoami_async")
    assert answer == {"result": {"email": "ada@example.com", "thread": LOOP_THREAD["name"]}}
    assert row("call-a").status == ToolCallStatus.OK


def test_arguments_are_recorded_only_when_the_site_opts_in(
    runner: ToolRunner, recording: ToolRunner
) -> None:
    assert call(recording, "rec-1", "add", {"a": 2, "b": 3}) == {"result": 5}
    assert call(runner, "rec-2", "add", {"a": 2}) == {"result": 2}
    assert call(recording, "rec-3", "add", "{not json") == {
        "error": (
            "The arguments are not valid JSON (Expecting property name enclosed in double "
            "quotes: line 1 column 2 (char 1)). Send a JSON object."
        )
    }
    assert row("rec-1").arguments == {"a": 2, "b": 3}
    assert row("rec-2").arguments is None
    assert row("rec-3").arguments == "{not json"
    assert row("rec-3").status == ToolCallStatus.INVALID


def test_empty_arguments_are_an_empty_object(runner: ToolRunner) -> None:
    assert call(runner, "empty", "whoami", "")["result"]["call_id"] == "empty"


def test_a_result_json_cannot_hold_fails(
    runner: ToolRunner, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="django_avaturn.engine.tools"):
        answer = call(runner, "set", "unserialisable")
    assert answer == {"error": "The tool failed. Tell the user it could not be done now."}
    assert row("set").status == ToolCallStatus.FAILED
    assert "'unserialisable' failed with builtins.TypeError" in caplog.text


# ---------------------------------------------------------------------- refusals and failures


def test_a_tool_error_is_given_to_the_model(runner: ToolRunner) -> None:
    answer = call(runner, "te", "cancel_order", {"order": "A-17"})
    assert answer == {"error": "Order A-17 has already shipped; it cannot be cancelled."}
    assert row("te").status == ToolCallStatus.ERROR


def test_another_exception_is_logged_without_its_message_and_the_model_told_only_it_failed(
    runner: ToolRunner, caplog: pytest.LogCaptureFixture
) -> None:
    private = "Ada's card ends 4242"
    with caplog.at_level(logging.DEBUG):
        answer = call(runner, "boom", "explode", {"note": private})
    assert answer == {"error": "The tool failed. Tell the user it could not be done now."}
    assert row("boom").status == ToolCallStatus.FAILED
    [record] = [r for r in caplog.records if r.name == "django_avaturn.engine.tools"]
    text = record.getMessage() + (record.exc_text or "")
    assert "'explode' failed with builtins.ValueError" in text
    assert "engine_tools_example.py" in text  # where it was raised
    assert private not in caplog.text
    assert "4242" not in caplog.text
    assert record.exc_info is None


@tool
def sends_too_much(ctx: ToolContext, note: str) -> str:
    """Lets send_to_browser's refusal through."""
    ctx.send_to_browser({"note": note, "blob": "x" * 5000})
    return "sent"


@tool
async def counts_users_on_the_loop(ctx: ToolContext, note: str) -> int:
    """ORM work in an async tool, which Django refuses."""
    return type(ctx.user).objects.filter(pk=ctx.user.pk).count()


@pytest.mark.parametrize(
    ("function", "says"),
    [
        (
            sends_too_much,
            "django_avaturn.engine.tools.BrowserMessageRefused: send_to_browser()'s data is ",
        ),
        (
            counts_users_on_the_loop,
            "django.core.exceptions.SynchronousOnlyOperation: You cannot call this from an "
            "async context",
        ),
    ],
)
def test_a_failure_whose_message_names_no_value_is_logged_with_it(
    session: Any,
    browser: Browser,
    caplog: pytest.LogCaptureFixture,
    function: Any,
    says: str,
) -> None:
    """Our own refusals and Django's SynchronousOnlyOperation say what to fix; the note,
    which the tool was given, appears nowhere."""
    private = "Ada's card ends 4242"
    runner = runner_of(function, session, browser, timeout=5)
    with caplog.at_level(logging.ERROR, logger="django_avaturn.engine.tools"):
        answer = call(runner, "fixed", function.avaturn_tool.name, {"note": private})
    assert answer == {"error": "The tool failed. Tell the user it could not be done now."}
    [record] = [r for r in caplog.records if r.name == "django_avaturn.engine.tools"]
    assert says in record.getMessage()
    assert "(its message is not logged)" not in record.getMessage()
    assert "4242" not in caplog.text


_kept_senders: list[Any] = []


@tool
def keeps_its_sender(ctx: ToolContext, note: str) -> str:
    """Calls the send_to_browser of the call before it, whose call has ended."""
    if _kept_senders:
        _kept_senders.pop()({"note": note})
    _kept_senders.append(ctx.send_to_browser)
    return "kept"


def test_send_to_browser_kept_past_its_call_is_refused_and_logged_with_why(
    session: Any, browser: Browser, caplog: pytest.LogCaptureFixture
) -> None:
    _kept_senders.clear()
    runner = runner_of(keeps_its_sender, session, browser, timeout=5)
    assert call(runner, "first", "keeps_its_sender", {"note": "hello"}) == {"result": "kept"}
    with caplog.at_level(logging.ERROR, logger="django_avaturn.engine.tools"):
        answer = call(runner, "second", "keeps_its_sender", {"note": "Ada's card ends 4242"})
    assert answer == {"error": "The tool failed. Tell the user it could not be done now."}
    assert row("second").status == ToolCallStatus.FAILED
    assert browser.sent == []
    [record] = [r for r in caplog.records if r.name == "django_avaturn.engine.tools"]
    assert (
        "django_avaturn.engine.tools.SendToBrowserClosed: This tool call has ended; "
        "send_to_browser() is closed." in record.getMessage()
    )
    assert "4242" not in caplog.text


def test_an_unknown_tool_is_invalid_and_recorded(runner: ToolRunner) -> None:
    answer = call(runner, "unk", "delete_everything", {})
    assert answer["error"].startswith("There is no tool named 'delete_everything'. The tools are: ")
    assert "'whoami'" in answer["error"]
    recorded = row("unk")
    assert (recorded.tool, recorded.status) == ("delete_everything", ToolCallStatus.INVALID)


def test_an_argument_of_the_wrong_type_is_invalid_and_the_tool_not_run(
    runner: ToolRunner,
) -> None:
    answer = call(runner, "bad", "add", {"a": "two"})
    assert answer == {
        "error": "Invalid arguments: a: expected an integer, got a string. Call add again, "
        "corrected."
    }
    assert example.RUNS["bad"] == 0
    assert row("bad").status == ToolCallStatus.INVALID


def test_arguments_that_are_not_an_object_are_invalid(runner: ToolRunner) -> None:
    assert call(runner, "arr", "add", "[1, 2]") == {"error": "The arguments must be a JSON object."}


def test_a_deactivated_user_is_refused_mid_session(runner: ToolRunner, user: Any) -> None:
    assert call(runner, "before", "add", {"a": 1}) == {"result": 1}
    type(user).objects.filter(pk=user.pk).update(is_active=False)
    answer = call(runner, "after", "add", {"a": 1})
    assert answer == {"error": "The user's account is not active; the tool cannot run."}
    assert example.RUNS["after"] == 0
    assert row("after").status == ToolCallStatus.DENIED


@pytest.mark.parametrize("status", [SessionStatus.ENDING, SessionStatus.ENDED])
def test_a_session_no_longer_live_is_refused(runner: ToolRunner, session: Any, status: str) -> None:
    type(session).objects.filter(pk=session.pk).update(status=status)
    answer = call(runner, f"ended-{status}", "add", {"a": 1})
    assert answer == {"error": "This conversation has ended; the tool cannot run."}
    assert example.RUNS[f"ended-{status}"] == 0
    assert row(f"ended-{status}").status == ToolCallStatus.DENIED


def test_a_starting_session_may_call(runner: ToolRunner, session: Any) -> None:
    type(session).objects.filter(pk=session.pk).update(status=SessionStatus.STARTING)
    assert call(runner, "starting", "add", {"a": 4}) == {"result": 4}


def test_a_tools_permission_is_checked_on_every_call(runner: ToolRunner, user: Any) -> None:
    answer = call(runner, "perm-1", "recorded_calls")
    assert answer == {"error": "The user is not allowed to use this tool. Tell them so."}
    assert row("perm-1").status == ToolCallStatus.DENIED
    # Granted mid-conversation: the next call sees it (the user is read anew).
    user.user_permissions.add(
        Permission.objects.get(content_type__app_label="django_avaturn", codename="view_toolcall")
    )
    assert call(runner, "perm-2", "recorded_calls") == {"result": 1}
    assert row("perm-2").status == ToolCallStatus.OK


@pytest.mark.parametrize(
    ("backend", "error"),
    [
        ("UnreachableDirectory", "ConnectionError"),
        # Its own timeout, not ours: a failure like any other, on every Python.
        ("TimingOutDirectory", "TimeoutError"),
    ],
)
def test_a_recheck_that_fails_is_answered_and_recorded_as_failed(
    runner: ToolRunner,
    settings: Any,
    caplog: pytest.LogCaptureFixture,
    backend: str,
    error: str,
) -> None:
    """The re-check's own failure (here the site's permission backend) is the call's."""
    settings.AUTHENTICATION_BACKENDS = [f"tests.auth_backends.{backend}"]
    with caplog.at_level(logging.ERROR, logger="django_avaturn.engine.tools"):
        answer = call(runner, "recheck-1", "recorded_calls")
    assert answer == {"error": "The tool failed. Tell the user it could not be done now."}
    assert row("recheck-1").status == ToolCallStatus.FAILED
    assert f"re-check a call of site tool 'recorded_calls': {error}" in caplog.text
    assert "directory server" not in caplog.text


def slow_directory_runner(
    session: Any, browser: Browser, settings: Any, *, timeout: float
) -> ToolRunner:
    """The example's runner, with ``SlowDirectory`` answering ``has_perm``."""
    settings.AUTHENTICATION_BACKENDS = ["tests.auth_backends.SlowDirectory"]
    auth_backends.QUESTIONS.clear()
    auth_backends.ASKED.clear()
    return example_runner(session, browser, timeout=timeout)


def test_a_recheck_stuck_on_the_database_thread_times_out_without_holding_up_the_next(
    session: Any,
    browser: Browser,
    settings: Any,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A permission backend that hangs: each call is still answered, its re-check timed out."""
    runner = slow_directory_runner(session, browser, settings, timeout=0.2)
    not_checked = {
        "error": "The tool could not be checked within 0.2 seconds. Tell the user it could "
        "not be done just now."
    }
    monkeypatch.setattr(tools, "RECORD_WAIT", 0.3)
    auth_backends.DIRECTORY_ANSWERS.clear()
    try:
        with caplog.at_level(logging.WARNING, logger="django_avaturn.engine.tools"):
            began = time.monotonic()
            assert call(runner, "stuck-1", "recorded_calls") == not_checked
            # Queued behind the stuck step: the record, then this call's re-check.
            assert call(runner, "stuck-2", "recorded_calls") == not_checked
            waited = time.monotonic() - began
        assert waited < (0.2 + tools.RECORD_WAIT) * 2 + 1
        assert "re-check a call of site tool 'recorded_calls' within 0.2 s" in caplog.text
        assert "recorded late" in caplog.text
    finally:
        auth_backends.DIRECTORY_ANSWERS.set()
    # Once the backend answers, the queued records are written; the second
    # re-check, abandoned before the thread reached it, never asks the backend.
    assert wait_until(lambda: ToolCall.objects.filter(call_id__startswith="stuck-").count() == 2)
    assert {row.status for row in ToolCall.objects.filter(call_id__startswith="stuck-")} == {
        ToolCallStatus.TIMEOUT
    }
    assert auth_backends.QUESTIONS == ["django_avaturn.view_toolcall"]


@pytest.mark.parametrize("turns", range(4))
def test_a_call_cancelled_as_its_recheck_answers_is_cancelled_not_answered(
    runner: ToolRunner, monkeypatch: pytest.MonkeyPatch, turns: int
) -> None:
    """Its conversation ended: whatever the moment, the call must not carry on to the tool.

    Cancelled 0 to 3 turns of the loop after its re-check's step settled: the moments
    that answer reaches the waiting call. (Before Python 3.12, ``asyncio.wait_for``
    could return the answer there instead of the cancellation.)
    """
    submit = tools._DB_STEPS.submit
    requested: list[bool] = []
    cancelling: list[Any] = []

    def submit_then_cancel(func: Any, **options: Any) -> Any:
        step = submit(func, **options)
        if not requested and not cancelling:  # the call's first step: its re-check
            cancelling.append(step)
            caller = asyncio.current_task()
            assert caller is not None
            loop = asyncio.get_running_loop()

            def cancel_after(remaining: int) -> None:
                if remaining:
                    loop.call_soon(cancel_after, remaining - 1)
                else:
                    runner.close()  # as the consumer ends a conversation: closed, then cancelled
                    requested.append(caller.cancel())

            step.add_done_callback(lambda _: cancel_after(turns))
        return step

    monkeypatch.setattr(tools._DB_STEPS, "submit", submit_then_cancel)
    call_id = f"cancel-{turns}"

    async def scenario() -> asyncio.Future[str]:
        task = asyncio.ensure_future(runner(call_id, "add", json.dumps({"a": 1})))
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return task

    assert run(scenario()).cancelled()
    assert requested == [True]
    # Recorded as cut off, by a thread of its own (nothing may be awaited once cancelled).
    assert wait_until(lambda: ToolCall.objects.filter(call_id=call_id).exists())
    assert row(call_id).status == ToolCallStatus.CANCELLED


@tool
async def waits_for_ever(ctx: ToolContext) -> str:
    """Runs until it is cancelled."""
    await asyncio.sleep(3600)
    return "never"


def test_a_call_its_conversation_cut_off_is_recorded_cut_off_not_failed(
    session: Any, browser: Browser, caplog: pytest.LogCaptureFixture
) -> None:
    """Stop (or expiry, or staff) ended the conversation while the tool ran: the tool
    raised nothing, so nothing is logged, and its record says it was cut off."""
    runner = runner_of(waits_for_ever, session, browser, timeout=60)

    async def scenario() -> None:
        task = asyncio.ensure_future(runner("cut-1", "waits_for_ever", "{}"))
        await asyncio.sleep(0.3)
        # As the consumer ends a conversation: the runner closed, then its calls cancelled.
        runner.close()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    with caplog.at_level(logging.WARNING, logger="django_avaturn.engine.tools"):
        run(scenario())
    assert wait_until(lambda: ToolCall.objects.filter(call_id="cut-1").exists())
    assert row("cut-1").status == ToolCallStatus.CANCELLED
    assert caplog.records == []


def test_a_call_cancelled_while_its_conversation_goes_on_is_recorded_failed(
    session: Any, browser: Browser
) -> None:
    """Not cut off by an end (the runner is open): a cancellation of the tool's own."""
    runner = runner_of(waits_for_ever, session, browser, timeout=60)

    async def scenario() -> None:
        task = asyncio.ensure_future(runner("own-1", "waits_for_ever", "{}"))
        await asyncio.sleep(0.3)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    run(scenario())
    assert wait_until(lambda: ToolCall.objects.filter(call_id="own-1").exists())
    assert row("own-1").status == ToolCallStatus.FAILED


def test_a_recheck_abandoned_by_its_ended_conversation_is_skipped(
    session: Any, browser: Browser, settings: Any
) -> None:
    """Queued behind a stuck step, a cancelled call's re-check never runs."""
    runner = slow_directory_runner(session, browser, settings, timeout=5)
    auth_backends.DIRECTORY_ANSWERS.clear()

    async def scenario() -> None:
        stuck = asyncio.ensure_future(runner("skip-1", "recorded_calls", "{}"))
        while not auth_backends.ASKED.is_set():  # noqa: ASYNC110 (a thread sets it)
            await asyncio.sleep(0.01)
        queued = asyncio.ensure_future(runner("skip-2", "recorded_calls", "{}"))
        await asyncio.sleep(0.05)
        queued.cancel()
        # Awaited before the stuck step is released: released first, the thread could
        # begin the queued re-check before the loop ran the cancelled call's withdrawal,
        # and a step the thread has begun runs.
        with contextlib.suppress(asyncio.CancelledError):
            await queued
        auth_backends.DIRECTORY_ANSWERS.set()
        await stuck

    try:
        run(scenario())
    finally:
        auth_backends.DIRECTORY_ANSWERS.set()
    assert wait_until(lambda: ToolCall.objects.filter(call_id__startswith="skip-").count() == 2)
    assert auth_backends.QUESTIONS == ["django_avaturn.view_toolcall"]


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_arguments_beyond_json_are_invalid_and_the_tool_not_run(
    recording: ToolRunner, number: str
) -> None:
    answer = call(recording, "inf-1", "ratio", f'{{"x": {number}}}')
    assert answer["error"].startswith("The arguments are not valid JSON")
    assert example.RUNS["inf-1"] == 0
    assert (row("inf-1").status, row("inf-1").arguments) == (
        ToolCallStatus.INVALID,
        f'{{"x": {number}}}',
    )


def test_arguments_nested_too_deeply_are_invalid_and_the_tool_not_run(runner: ToolRunner) -> None:
    """Python's JSON raises RecursionError for them, which is no ValueError."""
    answer = call(runner, "deep-1", "ratio", "[" * 100_000 + "]" * 100_000)
    assert answer == {"error": "The arguments are nested too deeply. Send a flat JSON object."}
    assert example.RUNS["deep-1"] == 0
    assert row("deep-1").status == ToolCallStatus.INVALID


def test_a_result_of_nan_fails_rather_than_giving_the_model_invalid_json(
    runner: ToolRunner,
) -> None:
    assert call(runner, "nan-1", "ratio", {"x": 0}) == {
        "error": "The tool failed. Tell the user it could not be done now."
    }
    assert row("nan-1").status == ToolCallStatus.FAILED


def test_a_nul_in_the_arguments_is_recorded_replaced(recording: ToolRunner) -> None:
    """PostgreSQL's jsonb and text refuse NUL: the call's record must not be lost to one."""
    assert call(recording, "nul-\x00", "echo", {"text": "a\x00b"}) == {"result": "a\x00b"}
    # Unescaped, it is not JSON: the raw text is what is kept.
    answer = call(recording, "nul-2", "echo", '{"text": "a\x00b"}')
    assert answer["error"].startswith("The arguments are not valid JSON")
    recorded = row("nul-\ufffd")
    assert (recorded.status, recorded.arguments) == (ToolCallStatus.OK, {"text": "a\ufffdb"})
    assert (row("nul-2").status, row("nul-2").arguments) == (
        ToolCallStatus.INVALID,
        '{"text": "a\ufffdb"}',
    )


def test_a_tool_thread_that_cannot_start_gives_back_its_slot(
    runner: ToolRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    start = threading.Thread.start

    def no_thread_for_tools(thread: threading.Thread) -> None:
        # The tools' own threads; the database thread starts as ever.
        if thread.name.startswith("avaturn-tool-") and thread.name != tools._DB_STEPS.name:
            raise RuntimeError("can't start new thread")
        start(thread)

    monkeypatch.setattr(threading.Thread, "start", no_thread_for_tools)
    for attempt in range(tools.MAX_TOOL_THREADS + 1):
        answer = call(runner, f"nothread-{attempt}", "add", {"a": 1})
        assert answer == {"error": "The tool failed. Tell the user it could not be done now."}
    monkeypatch.setattr(threading.Thread, "start", start)
    # Every slot is free again: a tool runs.
    assert call(runner, "thread-again", "add", {"a": 1}) == {"result": 1}


def test_a_sync_tool_past_its_timeout_is_answered_without_waiting_for_its_thread(
    runner: ToolRunner,
) -> None:
    example.SLOW_RELEASE.clear()
    example.SLOW_FINISHED.clear()
    try:
        answer = call(runner, "slow", "slow_sync")
        assert example.SLOW_STARTED.is_set()
        # The thread cannot be killed: it is still running, and was not waited for.
        assert not example.SLOW_FINISHED.is_set()
    finally:
        example.SLOW_RELEASE.set()
    assert answer == {
        "error": "The tool did not answer within 0.2 seconds. Tell the user it could not be "
        "done just now."
    }
    recorded = row("slow")
    assert recorded.status == ToolCallStatus.TIMEOUT
    assert recorded.duration_ms >= 200
    assert example.SLOW_FINISHED.wait(10)


def test_one_conversations_stuck_tools_leave_the_other_conversations_their_threads(
    runner: ToolRunner, user: Any, browser: Browser, caplog: pytest.LogCaptureFixture
) -> None:
    """A model made to call a hanging tool again and again (a prompt injection, say) takes
    at most its conversation's share of the process's threads."""
    other = example_runner(live(user, "sess-other", engine="site"), browser)
    example.SLOW_RELEASE.clear()
    try:
        for attempt in range(tools.MAX_TOOL_THREADS_PER_SESSION):
            answer = call(runner, f"stuck-{attempt}", "slow_sync")
            assert answer["error"].startswith("The tool did not answer within 0.2 seconds.")
        # Its threads are all stuck: its next call is refused at once...
        with caplog.at_level(logging.ERROR):
            assert call(runner, "one-more", "add", {"a": 1}) == {"error": tools.TOOL_FAILED}
        assert "its 4 tool threads are busy" in caplog.text
        # ...and another conversation's tools still run.
        assert call(other, "elsewhere", "add", {"a": 1}) == {"result": 1}
    finally:
        example.SLOW_RELEASE.set()
    # The stuck threads return their slots as they finish.
    assert wait_until(
        lambda: (
            call(runner, f"again-{time.monotonic()}", "add", {"a": 2})
            != {"error": tools.TOOL_FAILED}
        )
    )


def test_an_answer_too_long_for_the_model_is_not_sent_to_it(
    session: Any, browser: Browser, caplog: pytest.LogCaptureFixture
) -> None:
    """OpenAI bills a tool's answer as input: past TOOL_RESULT_MAX_CHARS it is not sent."""

    @tool
    def lookup(ctx: ToolContext, size: int) -> str:
        """Answers ``size`` characters."""
        return "x" * size

    @tool
    def lookup_text(ctx: ToolContext, size: int) -> str:
        """Answers ``size`` characters of Chinese text."""
        return "中" * size

    @tool
    def refuse(ctx: ToolContext, size: int) -> str:
        """Raises a ToolError of ``size`` characters."""
        raise ToolError("x" * size)

    runner = ToolRunner(
        ToolRegistry([lookup.avaturn_tool, lookup_text.avaturn_tool, refuse.avaturn_tool]),
        session=session,
        user=session.user,
        timeout=5,
        record_arguments=False,
        send_to_browser=browser,
    )
    fits = tools.TOOL_RESULT_MAX_CHARS - len('{"result": ""}')
    assert call(runner, "fits", "lookup", {"size": fits}) == {"result": "x" * fits}
    # Counted as the model reads it: a character each, not a \uXXXX escape.
    assert call(runner, "text", "lookup_text", {"size": fits}) == {"result": "中" * fits}
    with caplog.at_level(logging.ERROR):
        answer = call(runner, "too-long", "lookup", {"size": fits + 1})
    assert answer == {"error": tools.TOOL_FAILED}
    assert f"answered {tools.TOOL_RESULT_MAX_CHARS + 1} characters" in caplog.text
    assert row("too-long").status == ToolCallStatus.FAILED
    # A ToolError's message is the model's to read too: cut to the same length.
    refused = call(runner, "refused", "refuse", {"size": 3 * tools.TOOL_RESULT_MAX_CHARS})
    assert refused == {"error": "x" * tools.TOOL_RESULT_MAX_CHARS}


def test_a_conversation_whose_user_is_deleted_logs_no_failure_for_what_it_cannot_record(
    runner: ToolRunner, session: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """The row goes with its user: a call's record and a transcript line have nowhere to go.

    Said as such, not as a database failure or a full transcript.
    """
    from django_avaturn.engine.consumer import store_transcript

    session.user.delete()  # (its terminate fails here: no upstream in these tests)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        call(runner, "after-deletion", "add", {"a": 1})
        store_transcript(session, "user", "hello")
    assert not ToolCall.objects.exists()
    assert "is gone (its user deleted)" in caplog.text
    assert "full" not in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_an_async_tool_past_its_timeout_is_cancelled(runner: ToolRunner) -> None:
    async def scenario() -> str:
        output = await runner("slow-a", "slow_async", "{}")
        await asyncio.sleep(0.05)  # the cancelled task's turn to see its cancellation
        return output

    answer = json.loads(run(scenario()))
    assert answer["error"].startswith("The tool did not answer within 0.2 seconds.")
    assert example.CANCELLED == ["slow-a"]
    assert row("slow-a").status == ToolCallStatus.TIMEOUT


def test_the_runners_timeout_applies_to_tools_without_their_own(
    session: Any, browser: Browser
) -> None:
    @tool
    async def sleepy(ctx: ToolContext) -> str:
        """Sleeps."""
        await asyncio.sleep(30)
        return "late"

    runner = runner_of(sleepy, session, browser, timeout=0.1)
    assert call(runner, "sleepy", "sleepy")["error"].startswith(
        "The tool did not answer within 0.1 seconds."
    )


def test_a_call_whose_conversation_ends_while_its_record_waits_is_still_recorded(
    session: Any, browser: Browser
) -> None:
    """The tool ran (it may have acted): its record is written although the bridge
    cancelled the call while the record waited behind another database step."""
    gate = threading.Event()
    ran = asyncio.Event()

    @tool
    async def acts(ctx: ToolContext) -> str:
        """Acts, then the database thread is busy with someone else's step."""
        tools._DB_STEPS.submit(lambda: gate.wait(10))
        ran.set()
        return "done"

    runner = runner_of(acts, session, browser, timeout=5)

    async def scenario() -> None:
        task = asyncio.ensure_future(runner("acted", "acts", "{}"))
        await asyncio.wait_for(ran.wait(), 5)
        await asyncio.sleep(0.05)  # the call is now awaiting its record
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        gate.set()

    try:
        run(scenario())
    finally:
        gate.set()
    assert wait_until(lambda: ToolCall.objects.filter(call_id="acted").exists())
    assert row("acted").status == ToolCallStatus.OK


def test_a_sync_tool_failing_after_its_timeout_is_still_logged(
    session: Any, browser: Browser, caplog: pytest.LogCaptureFixture
) -> None:
    """Nobody waits for its answer any more, but it may have done part of its work."""
    release = threading.Event()

    @tool
    def overruns(ctx: ToolContext) -> str:
        """Overruns, then fails."""
        release.wait(10)
        detail = "-".join(("half", "done"))
        raise RuntimeError(detail)

    runner = runner_of(overruns, session, browser, timeout=0.1)

    async def scenario() -> str:
        answer = await runner("late", "overruns", "{}")
        release.set()
        await asyncio.sleep(0.3)  # the thread's failure reaches the loop
        return answer

    with caplog.at_level(logging.ERROR, logger="django_avaturn.engine.tools"):
        try:
            answer = json.loads(run(scenario()))
        finally:
            release.set()
    assert answer["error"].startswith("The tool did not answer within 0.1 seconds.")
    assert "Site tool 'overruns' failed with builtins.RuntimeError" in caplog.text
    assert "half-done" not in caplog.text


# ---------------------------------------------------------------------- idempotency


def test_a_call_id_seen_before_returns_its_first_outcome_without_running_again(
    runner: ToolRunner,
) -> None:
    async def scenario() -> list[str]:
        first = await runner("same", "add", '{"a": 1, "b": 1}')
        again = await runner("same", "add", '{"a": 1, "b": 1}')
        # Two at once: one run, both get its answer.
        both = await asyncio.gather(
            runner("twice", "add", '{"a": 5}'), runner("twice", "add", '{"a": 5}')
        )
        return [first, again, *both]

    outputs = [json.loads(output) for output in run(scenario())]
    assert outputs == [{"result": 2}, {"result": 2}, {"result": 5}, {"result": 5}]
    assert example.RUNS["same"] == 1
    assert example.RUNS["twice"] == 1
    assert ToolCall.objects.filter(call_id="same").count() == 1
    assert ToolCall.objects.filter(call_id="twice").count() == 1


def test_a_refused_call_id_is_not_run_when_repeated(runner: ToolRunner) -> None:
    async def scenario() -> tuple[str, str]:
        return await runner("r", "add", '{"a": "x"}'), await runner("r", "add", '{"a": 1}')

    first, second = run(scenario())
    assert first == second
    assert example.RUNS["r"] == 0


# ---------------------------------------------------------------------- send_to_browser


def test_a_sync_tool_sends_to_the_browser_from_its_thread(
    runner: ToolRunner, browser: Browser
) -> None:
    assert call(runner, "card", "show_card", {"title": "Your order"}) == {"result": "shown"}
    assert browser.sent == [{"card": "Your order", "n": 1}, {"card": "Your order", "n": 2}]
    # Delivered on the socket's loop, not the tool's thread.
    assert browser.loop_threads == {LOOP_THREAD["ident"]}


def test_an_async_tool_sends_to_the_browser(runner: ToolRunner, browser: Browser) -> None:
    assert call(runner, "card-a", "show_card_async", {"title": "Map"}) == {"result": "shown"}
    assert browser.sent == [{"card": "Map", "n": 1}, {"card": "Map", "n": 2}]


def test_a_sync_send_to_browser_of_the_host_works_too(session: Any) -> None:
    sent: list[dict[str, Any]] = []
    runner = example_runner(session, sent.append)
    assert call(runner, "card-s", "show_card", {"title": "T"}) == {"result": "shown"}
    assert sent == [{"card": "T", "n": 1}, {"card": "T", "n": 2}]


class StuckBrowser:
    """A browser socket that takes no message: each send waits until it is cancelled."""

    def __init__(self) -> None:
        self.began: list[dict[str, Any]] = []
        self.cancelled = 0

    async def __call__(self, data: dict[str, Any]) -> None:
        self.began.append(data)
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise


def test_closing_the_runner_drops_the_messages_still_on_their_way(
    session: Any, caplog: pytest.LogCaptureFixture
) -> None:
    stuck = StuckBrowser()
    runner = example_runner(session, stuck)

    async def scenario() -> str:
        output = await runner("card-stuck", "show_card_async", json.dumps({"title": "T"}))
        await asyncio.sleep(0.01)  # the first message is being sent, the second waits its turn
        runner.close()  # the conversation ended
        await asyncio.sleep(0.01)
        return output

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert json.loads(run(scenario())) == {"result": "shown"}
        gc.collect()
    assert stuck.began == [{"card": "T", "n": 1}]
    assert stuck.cancelled == 1
    # And nothing runs once closed.
    assert json.loads(run(runner("card-late", "show_card_async", json.dumps({"title": "U"})))) == {
        "error": "This conversation has ended; the tool cannot run."
    }
    assert stuck.began == [{"card": "T", "n": 1}]
    # The second was dropped before it began: neither an error nor a coroutine never awaited.
    assert "failed" not in caplog.text
    assert [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)] == []


def test_a_sync_tool_sending_after_the_runner_closed_sends_nothing(
    session: Any, browser: Browser, caplog: pytest.LogCaptureFixture
) -> None:
    """The conversation ended while a sync tool's thread ran: what it sends then reaches
    the loop after the close, and is dropped there without an error."""
    example.HELD_STARTED.clear()
    example.HELD_RELEASE.clear()
    runner = example_runner(session, browser)

    async def scenario() -> str:
        call = asyncio.ensure_future(
            runner("card-held", "show_card_when_released", json.dumps({"title": "T"}))
        )
        assert await asyncio.to_thread(example.HELD_STARTED.wait, 5)
        runner.close()
        example.HELD_RELEASE.set()
        output = await call
        await asyncio.sleep(0.05)  # time for a send, had one been made
        return output

    assert json.loads(run(scenario())) == {"result": "shown"}
    assert browser.sent == []
    assert "failed" not in caplog.text


def test_closing_the_runner_cancels_the_futures_its_sends_returned(session: Any) -> None:
    """A host's send_to_browser may return a future: a dropped one is cancelled too."""
    futures: list[asyncio.Future[None]] = []

    def send(data: dict[str, Any]) -> asyncio.Future[None]:
        futures.append(asyncio.get_running_loop().create_future())  # never answered
        return futures[-1]

    runner = example_runner(session, send)

    async def scenario() -> None:
        await runner("card-future", "show_card_async", json.dumps({"title": "T"}))
        await asyncio.sleep(0.01)  # the first is awaited, the second waits its turn
        runner.close()
        await asyncio.sleep(0.01)

    run(scenario())
    assert len(futures) == 2
    assert [future.cancelled() for future in futures] == [True, True]


@pytest.mark.parametrize(
    ("what", "answer"),
    [
        (
            "big",
            f"BrowserMessageRefused: send_to_browser()'s data is 5011 bytes as JSON; one "
            f"message holds at "
            f"most {BROWSER_MESSAGE_MAX_BYTES}. Send a link or an id rather than the content.",
        ),
        (
            "object",
            "BrowserMessageRefused: send_to_browser()'s data must be JSON-serialisable: "
            "Object of type "
            "object is not JSON serializable",
        ),
        ("list", "BrowserMessageRefused: send_to_browser() takes a dict, not list."),
        (
            "surrogate",
            "BrowserMessageRefused: send_to_browser()'s data is not valid text: a lone "
            "surrogate at character 9 of its JSON.",
        ),
    ],
)
def test_send_to_browser_refuses_what_a_message_cannot_carry(
    runner: ToolRunner, browser: Browser, what: str, answer: str
) -> None:
    assert call(runner, f"too-{what}", "show_too_much", {"what": what}) == {"result": answer}
    assert browser.sent == []


@pytest.mark.parametrize("character", ["a", "é", "中", "😀"])
def test_a_browser_message_at_the_cap_is_a_frame_the_cap_was_chosen_for(
    session: Any, character: str
) -> None:
    """Measured as it is sent (UTF-8, unescaped): the frame is the cap plus the envelope,
    whatever the text's script."""
    one = len(character.encode())
    data = {"text": character * ((BROWSER_MESSAGE_MAX_BYTES - len('{"text":""}')) // one)}
    sent: list[dict[str, Any]] = []
    ctx = ToolContext(user=session.user, session=session, call_id="t1", deliver=sent.append)
    ctx.send_to_browser(data)  # at the cap: accepted
    frame = protocol.browser_message(sent[0]).encode()
    envelope = len(protocol.browser_message({}).encode()) - len("{}")
    measured = len(json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode())
    assert BROWSER_MESSAGE_MAX_BYTES - 4 <= measured <= BROWSER_MESSAGE_MAX_BYTES
    assert len(frame) == envelope + measured
    with pytest.raises(BrowserMessageRefused):
        ctx.send_to_browser({"text": data["text"] + character})


def test_a_tool_context_can_be_made_for_a_tools_own_unit_test(session: Any) -> None:
    sent: list[dict[str, Any]] = []
    ctx = ToolContext(user=session.user, session=session, call_id="t1", deliver=sent.append)
    assert example.show_card(ctx, "Direct") == "shown"
    assert sent == [{"card": "Direct", "n": 1}, {"card": "Direct", "n": 2}]
    with pytest.raises(ToolError, match="already shipped"):
        example.cancel_order(ctx, "B-2")


# ---------------------------------------------------------------------- the admin


def test_the_session_admin_shows_its_tool_calls_read_only(
    session: Any, user: Any, django_user_model: Any
) -> None:
    ToolCall.objects.create(
        session=session, call_id="c-1", tool="whoami", status=ToolCallStatus.OK, duration_ms=12
    )
    ToolCall.objects.create(
        session=session,
        call_id="c-2",
        tool="find_order",
        status=ToolCallStatus.DENIED,
        duration_ms=3,
        # A model could be talked into putting anything in its arguments.
        arguments={"order": "A-17", "note": "sk-test-openai-0123456789"},
    )
    other = live(user, "sess-other", engine="openai-realtime")
    viewer = staff(django_user_model, "staff@example.com", "view_session", "view_toolcall")
    client = logged_in(viewer)

    page = client.get(reverse("admin:django_avaturn_session_change", args=(session.pk,)))
    assert page.status_code == 200
    html = page.content.decode()
    assert "Tool calls" in html
    assert "whoami" in html
    assert "find_order" in html
    assert "Denied (user, session or permission)" in html
    assert "A-17" in html
    assert "sk-test-openai-0123456789" not in html
    assert "[redacted]" in html
    assert 'name="tool_calls-TOTAL_FORMS"' in html
    assert "tool_calls-0-DELETE" not in html  # nothing to delete, change or add

    page = client.get(reverse("admin:django_avaturn_session_change", args=(other.pk,)))
    assert page.status_code == 200
    assert "Tool calls" not in page.content.decode()


# ---------------------------------------------------------------------- the database


def test_a_call_runs_while_the_shared_database_thread_is_busy(runner: ToolRunner) -> None:
    """A call's check and record never wait on the one thread that thread-sensitive calls
    share (sockets authenticated, sessions ended): the tools' steps have a thread of
    their own."""
    release = threading.Event()

    async def test() -> Any:
        # The process's shared thread, held as another conversation's slow step would.
        held = asyncio.ensure_future(sync_to_async(release.wait, thread_sensitive=True)())
        try:
            return await asyncio.wait_for(runner("busy", "add", '{"a": 2, "b": 3}'), 5)
        finally:
            release.set()
            await held

    assert json.loads(run(test())) == {"result": 5}
    assert row("busy").status == ToolCallStatus.OK


def test_the_database_thread_keeps_its_connection_between_steps_and_closes_it_when_idle(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Opening and closing a connection per step was most of a step's cost: while steps
    keep coming they share one, and the thread closes it once none has come for a while."""
    monkeypatch.setattr(tools._DB_STEPS, "idle", 0.2)

    def step() -> tuple[Any, Any]:
        ToolCall.objects.exists()  # a query: the connection is open
        wrapper = connections["default"]
        return wrapper, wrapper.connection

    async def steps() -> list[tuple[Any, Any]]:
        return [await tools._run_db(step, within=5), await tools._run_db(step, within=5)]

    (wrapper, first), (same_wrapper, second) = run(steps())
    assert same_wrapper is wrapper
    assert first is not None
    assert second is first
    assert wait_until(lambda: not tools._DB_STEPS.running())
    assert wrapper.connection is None


@pytest.mark.parametrize("spoil", ["unusable after an error", "autocommit left off"])
def test_a_connection_a_step_left_unusable_is_closed_before_the_next_step(
    monkeypatch: pytest.MonkeyPatch, spoil: str
) -> None:
    """As ``close_old_connections`` does between a consumer's calls."""

    def spoiling_step() -> Any:
        ToolCall.objects.exists()
        wrapper = connections["default"]
        opened = wrapper.connection
        if spoil == "autocommit left off":
            transaction.set_autocommit(False)
            return opened
        # How a dropped connection answers Django's check after the error.
        monkeypatch.setattr(type(wrapper), "is_usable", lambda self: False)
        with wrapper.cursor() as cursor, contextlib.suppress(DatabaseError):
            cursor.execute("SELECT * FROM no_such_table")
        assert wrapper.errors_occurred
        return opened

    def next_step() -> Any:
        ToolCall.objects.exists()
        return connections["default"].connection

    async def steps() -> tuple[Any, Any]:
        return await tools._run_db(spoiling_step, within=5), await tools._run_db(
            next_step, within=5
        )

    spoiled, fresh = run(steps())
    assert spoiled is not None
    assert fresh is not None
    assert fresh is not spoiled


def test_a_steps_exception_reaches_its_caller_and_the_next_step_runs() -> None:
    def failing() -> None:
        raise ValueError("step failed")

    async def steps() -> Any:
        with pytest.raises(ValueError, match="step failed"):
            await tools._run_db(failing, within=5)
        return await tools._run_db(lambda: ToolCall.objects.count(), within=5)

    assert run(steps()) == 0


def test_a_database_thread_that_could_not_start_starts_for_the_next_step(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    steps = tools._DatabaseThread("avaturn-test-db", idle=0.05)
    start = threading.Thread.start
    ran: list[str] = []

    def no_thread(thread: threading.Thread) -> None:
        raise RuntimeError("can't start new thread")

    async def scenario() -> None:
        monkeypatch.setattr(threading.Thread, "start", no_thread)
        with pytest.raises(RuntimeError):
            steps.submit(lambda: ran.append("refused"))
        monkeypatch.setattr(threading.Thread, "start", start)
        await asyncio.wait_for(steps.submit(lambda: ran.append("next")), timeout=5)

    asyncio.run(scenario())
    # The refused step failed for its caller and never runs later.
    assert ran == ["next"]
