"""The widget in a real browser, with the real Avaturn web SDK, against the
loopback fake of both upstreams.

Run with ``pytest -m browser``; ``.ci/install-browser-deps`` installs chromium,
playwright and the SDK. (The documentation's screenshots come from
``scripts/screenshots.py``.)
"""

from __future__ import annotations

from typing import Any

import pytest

from django_avaturn.models import ACTIVE_STATUSES, Session
from django_avaturn.testing import AVATURN_CREATE, AVATURN_TERMINATE, SDK_SESSION
from tests.e2e.browser import (
    Traffic,
    open_signed_in,
    press_start_until_live,
    status_text,
    wait_for,
    watch_page,
    widget_state,
    with_standin_sdk,
)
from tests.helpers import AvaturnOverrides

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

ENDED_STATUSES = {"ended", "ending"}


def start_session(page: Any, e2e: Any, traffic: Traffic) -> dict[str, Any]:
    """Press Start; return our API's answer once the SDK has asked the fake for it."""
    with page.expect_response(
        lambda response: (
            response.url.endswith("/avaturn/sessions/") and response.request.method == "POST"
        )
    ) as answer:
        page.click("[data-avaturn-start]")
    assert answer.value.status == 201, answer.value.text()
    minted: dict[str, Any] = answer.value.json()
    try:
        wait_for(page, lambda: e2e.fake.requests_for(SDK_SESSION), what="the SDK's session request")
    except AssertionError as error:
        raise AssertionError(
            f"{error}; widget {widget_state(page)!r}: {status_text(page)!r}; "
            f"console: {traffic.console}; errors: {traffic.page_errors}; "
            f"blocked: {traffic.blocked}; "
            f"fake: {[(r.route, r.method, r.path) for r in e2e.fake.requests]}; "
            f"browser: {[(r.method, r.url) for r in traffic.requests]}"
        ) from None
    return minted


def assert_ended_everywhere(page: Any, e2e: Any, session_id: str) -> None:
    wait_for(
        page,
        lambda: any(
            request.path.rstrip("/").endswith(session_id)
            for request in e2e.fake.requests_for(AVATURN_TERMINATE)
        ),
        what="the upstream DELETE",
    )
    assert session_id not in e2e.fake.live_session_ids()
    session = wait_for(
        page,
        lambda: Session.objects.filter(session_id=session_id, status__in=ENDED_STATUSES).first(),
        what="the ended row",
    )
    assert session.ended_at is not None or session.status == "ending"


def close_tab_then_assert_ended(page: Any, e2e: Any, session_id: str) -> None:
    context = page.context
    page.close()  # pagehide: dispose() and a keepalive DELETE
    other = context.new_page()  # keeps Playwright's event loop turning
    assert_ended_everywhere(other, e2e, session_id)


def test_start_reaches_the_sdk_with_our_token_then_times_out_clearly(
    e2e: Any, live_server: Any, browser_context: Any, user: Any
) -> None:
    page, traffic = open_signed_in(e2e, live_server, browser_context, user)
    assert widget_state(page) == "idle"

    minted = start_session(page, e2e, traffic)

    # The SDK asked the fake for the session with exactly the token we minted.
    (sdk_request,) = e2e.fake.requests_for(SDK_SESSION)
    assert sdk_request.headers["x-session-token"] == minted["token"]
    assert minted["api_host"] == e2e.fake.url
    assert widget_state(page) == "connecting"
    # Downloaded once: the preload, the integrity-checked script and import()
    # all share one fetch.
    assert [r.url for r in traffic.requests if r.url.endswith("/main.js")] == [
        e2e.settings.AVATURN["SDK_URL"]
    ]
    # The SDK got as far as loading Daily's call machine (held, never served).
    wait_for(page, lambda: traffic.held, what="the call machine request")

    # Offline the room join never completes: the widget's own timeout ends it.
    page.wait_for_selector('[data-avaturn-widget][data-state="error"]', timeout=10_000)
    assert status_text(page) == "The avatar did not connect in time. Please try again."
    assert_ended_everywhere(page, e2e, minted["session_id"])
    # The start button is back, usable, and the stage was emptied.
    assert page.is_enabled("[data-avaturn-start]")
    assert page.eval_on_selector("[data-avaturn-stage]", "el => el.childElementCount") == 0


def test_stop_ends_the_session_at_once(
    e2e: Any, live_server: Any, browser_context: Any, user: Any, avaturn: AvaturnOverrides
) -> None:
    avaturn(WIDGET_INIT_TIMEOUT=60)
    page, _traffic = open_signed_in(e2e, live_server, browser_context, user)
    posts: list[str] = []
    page.on(
        "request",
        lambda request: (
            posts.append(request.url)
            if request.method == "POST" and request.url.endswith("/avaturn/sessions/")
            else None
        ),
    )
    # A double click is still one session, and its second click must not
    # land on Stop: the Start button is disabled at once and stays in place.
    page.dblclick("[data-avaturn-start]")
    wait_for(page, lambda: e2e.fake.requests_for(SDK_SESSION), what="the SDK's session request")
    assert len(posts) == 1
    (session,) = Session.objects.filter(user=user)
    assert widget_state(page) == "connecting"
    handle = page.evaluate(
        "() => { const h = document.querySelector('[data-avaturn-widget]').avaturn;"
        " return {state: h.state, sessionId: h.sessionId, hasHead: !!h.head}; }"
    )
    assert handle == {"state": "connecting", "sessionId": session.session_id, "hasHead": True}

    page.click("[data-avaturn-stop]")
    page.wait_for_selector('[data-avaturn-widget][data-state="ended"]')
    assert status_text(page) == "The conversation has ended."
    assert_ended_everywhere(page, e2e, session.session_id)
    # Ended, not merely disposed: the widget stopped talking to the SDK's host.
    assert (
        page.evaluate("() => document.querySelector('[data-avaturn-widget]').avaturn.head") is None
    )


def test_closing_the_tab_ends_the_session(
    e2e: Any, live_server: Any, browser_context: Any, user: Any, avaturn: AvaturnOverrides
) -> None:
    avaturn(WIDGET_INIT_TIMEOUT=60)
    page, traffic = open_signed_in(e2e, live_server, browser_context, user)
    minted = start_session(page, e2e, traffic)
    close_tab_then_assert_ended(page, e2e, minted["session_id"])


def test_a_widget_taken_off_the_page_and_put_back_still_ends_its_sessions(
    e2e: Any, live_server: Any, browser_context: Any, user: Any, avaturn: AvaturnOverrides
) -> None:
    avaturn(WIDGET_INIT_TIMEOUT=60)
    page, traffic = open_signed_in(e2e, live_server, browser_context, user)
    first = start_session(page, e2e, traffic)
    # Taken off the page (a client-side swap): its session ends.
    page.evaluate(
        "() => { window.parked = document.querySelector('[data-avaturn-widget]');"
        " window.parked.remove(); }"
    )
    assert_ended_everywhere(page, e2e, first["session_id"])
    # Put back and started again: leaving the page must end this one too.
    page.evaluate("() => document.body.append(window.parked)")
    second = start_session(page, e2e, traffic)
    assert second["session_id"] != first["session_id"]
    close_tab_then_assert_ended(page, e2e, second["session_id"])


def test_no_key_reaches_the_page_its_traffic_or_the_console(
    e2e: Any, live_server: Any, browser_context: Any, user: Any
) -> None:
    page, traffic = open_signed_in(e2e, live_server, browser_context, user)
    start_session(page, e2e, traffic)
    page.wait_for_selector('[data-avaturn-widget][data-state="error"]', timeout=10_000)
    keys = [e2e.settings.AVATURN["API_KEY"], e2e.settings.AVATURN["OPENAI_API_KEY"]]
    # The OpenAI client secret is a key too, for its lifetime.
    keys += [secret.value for secret in e2e.fake.secrets_issued.values()]
    assert all(keys)
    seen = [page.content(), *traffic.texts()]
    for key in keys:
        assert not any(key in text for text in seen), "a key reached the browser"


def test_strict_csp_page_works_without_violations(
    e2e: Any, live_server: Any, browser_context: Any, user: Any
) -> None:
    page, traffic = open_signed_in(e2e, live_server, browser_context, user, path="/strict-csp/")
    page.evaluate(
        "() => { window.violations = [];"
        " document.addEventListener('securitypolicyviolation',"
        " e => window.violations.push(e.violatedDirective + ' ' + e.blockedURI)); }"
    )
    # The stylesheet applied (a style attribute would have been blocked).
    assert page.eval_on_selector("#strict", "el => getComputedStyle(el).display") == "flex"
    minted = start_session(page, e2e, traffic)
    (sdk_request,) = e2e.fake.requests_for(SDK_SESSION)
    assert sdk_request.headers["x-session-token"] == minted["token"]
    page.wait_for_selector("#strict[data-state='error']", timeout=10_000)
    assert page.evaluate("() => window.violations") == []
    assert not [line for line in traffic.console if "Content Security Policy" in line]


def test_integrity_mismatch_refuses_the_sdk_and_starts_nothing(
    e2e: Any, live_server: Any, browser_context: Any, user: Any, avaturn: AvaturnOverrides
) -> None:
    wrong = "sha384-" + "A" * 64
    avaturn(SDK_INTEGRITY=wrong)
    page, traffic = open_signed_in(e2e, live_server, browser_context, user)
    page.click("[data-avaturn-start]")
    page.wait_for_selector('[data-avaturn-widget][data-state="error"]', timeout=10_000)
    assert status_text(page) == "The avatar player could not be loaded."
    # The browser refused the file and the SDK never ran, even though the
    # failed modulepreload would have let a bare import() fetch it again.
    assert any("integrity" in line and "blocked" in line for line in traffic.console)
    assert e2e.fake.requests_for(SDK_SESSION) == []
    # A player that cannot run costs nothing: no session was asked for.
    assert not [r for r in traffic.requests if r.url.endswith("/avaturn/sessions/")]
    assert e2e.fake.requests_for(AVATURN_CREATE) == []
    assert not Session.objects.exists()


def test_an_unreachable_sdk_starts_nothing_and_a_later_start_retries(
    e2e: Any, live_server: Any, browser_context: Any, user: Any
) -> None:
    # As behind an ad blocker or with the CDN down: the SDK's URL fails to load.
    context, _traffic = browser_context
    blocked = {"on": True}

    def sdk_route(route: Any) -> None:
        if blocked["on"]:
            route.abort()
        else:
            route.continue_()

    context.route(e2e.settings.AVATURN["SDK_URL"], sdk_route)
    page, traffic = open_signed_in(e2e, live_server, browser_context, user)
    page.click("[data-avaturn-start]")
    page.wait_for_selector('[data-avaturn-widget][data-state="error"]', timeout=10_000)
    assert status_text(page) == "The avatar player could not be loaded."
    assert not [r for r in traffic.requests if r.url.endswith("/avaturn/sessions/")]
    assert e2e.fake.requests_for(AVATURN_CREATE) == []

    blocked["on"] = False
    minted = start_session(page, e2e, traffic)
    assert Session.objects.get().session_id == minted["session_id"]


def test_signed_out_visitor_gets_a_clear_message(
    e2e: Any, live_server: Any, browser_context: Any
) -> None:
    context, traffic = browser_context
    page = context.new_page()
    watch_page(page, traffic)
    page.goto(live_server.url + "/strict-csp/?hello=1")
    page.wait_for_function("() => !!document.querySelector('#strict')?.avaturn")
    page.click("[data-avaturn-start]")
    page.wait_for_selector("#strict[data-state='error']")
    assert status_text(page, "#strict") == "Please sign in to talk with the avatar."
    # A link to LOGIN_URL that brings the visitor back to this page.
    link = page.locator("#strict [data-avaturn-status] a")
    assert link.get_attribute("href") == "/accounts/login/?next=/strict-csp/%3Fhello%3D1"
    assert link.text_content() == "Please sign in to talk with the avatar."
    assert e2e.fake.requests == []


def test_the_sign_in_link_is_there_without_the_templates_messages(
    e2e: Any, live_server: Any, browser_context: Any
) -> None:
    """A site's own widget template may drop the messages: the script's fallback links too."""
    context, traffic = browser_context
    page = context.new_page()
    watch_page(page, traffic)
    page.goto(live_server.url + "/strict-csp/")
    page.wait_for_function("() => !!document.querySelector('#strict')?.avaturn")
    # As a template without the messages would render the widget.
    page.evaluate("document.querySelector('#strict template[data-avaturn-messages]').remove()")
    page.evaluate(
        "(() => { const w = document.querySelector('#strict'); const copy = w.cloneNode(true);"
        " copy.id = 'copy'; w.replaceWith(copy); })()"
    )
    page.wait_for_function("() => !!document.querySelector('#copy')?.avaturn")
    page.click("#copy [data-avaturn-start]")
    page.wait_for_selector("#copy[data-state='error']")
    link = page.locator("#copy [data-avaturn-status] a")
    assert link.get_attribute("href") == "/accounts/login/?next=/strict-csp/"
    assert link.text_content() == "Please sign in to talk with the avatar."


def test_a_start_ended_by_staff_meanwhile_says_it_ended(
    e2e: Any, live_server: Any, browser_context: Any, user: Any
) -> None:
    from django_avaturn.models import EndReason, SessionStatus
    from django_avaturn.services import end_session

    e2e.fake.set_latency(AVATURN_CREATE, 1.5)
    page, _traffic = open_signed_in(e2e, live_server, browser_context, user)
    with page.expect_response(lambda r: r.url.endswith("/avaturn/sessions/")) as answer:
        page.click("[data-avaturn-start]")
        starting = wait_for(
            page,
            lambda: Session.objects.filter(status=SessionStatus.STARTING).first(),
            what="the starting row",
        )
        end_session(starting, reason=EndReason.ADMIN)
    assert (answer.value.status, answer.value.json()["code"]) == (409, "session_ended")
    page.wait_for_selector('[data-avaturn-widget][data-state="error"]')
    assert status_text(page) == "The conversation has ended."
    error = page.evaluate("() => document.querySelector('[data-avaturn-widget]').avaturn.state")
    assert error == "error"
    assert e2e.fake.live_session_ids() == set()


def _ended_within(fake: Any, latency: float, seconds: float) -> Any:
    """The fake's one session, ended at most ``seconds`` after its create answered."""
    (created,) = fake.sessions.values()
    assert not created.live, "the session still runs upstream"
    answered = created.created_at + latency  # the fake holds its answer for the latency
    assert created.ended_at - answered <= seconds, created.ended_at - answered
    return created


def test_leaving_the_page_while_connecting_ends_the_start_when_its_create_returns(
    e2e: Any, live_server: Any, browser_context: Any, user: Any
) -> None:
    from django_avaturn.models import EndReason, SessionStatus

    latency = 2.0
    e2e.fake.set_latency(AVATURN_CREATE, latency)
    page, _traffic = open_signed_in(e2e, live_server, browser_context, user)
    page.click("[data-avaturn-start]")
    wait_for(page, lambda: e2e.fake.requests_for(AVATURN_CREATE), what="the create in flight")
    assert widget_state(page) == "connecting"

    # Navigating away fires pagehide while the start's answer is still to come.
    page.goto(live_server.url + "/accounts/login/")

    created = wait_for(
        page,
        lambda: [s for s in e2e.fake.sessions.values() if not s.live],
        timeout=latency + 10,
        what="the created session to be terminated",
    )
    _ended_within(e2e.fake, latency, 5)
    # (Playwright does not report a leaving page's keepalive request: the row tells.)
    row = wait_for(
        page,
        lambda: Session.objects.filter(status=SessionStatus.ENDED).first(),
        what="the ended row",
    )
    assert (row.session_id, row.end_reason) == (created[0].session_id, EndReason.ABANDONED)
    assert e2e.fake.live_session_ids() == set()


def test_a_start_whose_answer_is_dropped_is_abandoned_by_the_page(
    e2e: Any, live_server: Any, browser_context: Any, user: Any
) -> None:
    from django_avaturn.models import EndReason, SessionStatus

    latency = 1.0
    e2e.fake.set_latency(AVATURN_CREATE, latency)
    page, _traffic = open_signed_in(e2e, live_server, browser_context, user)

    def proxy_drops_the_answer(route: Any) -> None:
        if route.request.method != "POST":
            route.continue_()
            return
        route.fetch()  # the server starts the session...
        route.abort("connectionreset")  # ...and the page never hears of it

    page.route("**/avaturn/sessions/", proxy_drops_the_answer)
    page.click("[data-avaturn-start]")

    page.wait_for_selector('[data-avaturn-widget][data-state="error"]')
    assert status_text(page) == "Could not reach the server. Check your connection and try again."
    wait_for(
        page,
        lambda: Session.objects.filter(status=SessionStatus.ENDED).exists(),
        what="the abandoned session to end",
    )
    _ended_within(e2e.fake, latency, 5)
    (row,) = Session.objects.all()
    assert row.end_reason == EndReason.ABANDONED
    assert e2e.fake.live_session_ids() == set()


def test_the_standin_sdk_refused_a_token_ends_the_session(
    e2e: Any, live_server: Any, browser_context: Any, user: Any
) -> None:
    # As the real SDK would fail to join: the widget gives up and ends the session.
    with_standin_sdk(e2e)
    e2e.fake.fail(SDK_SESSION, status=401)
    page, _traffic = open_signed_in(e2e, live_server, browser_context, user)
    page.click("[data-avaturn-start]")
    page.wait_for_selector('[data-avaturn-widget][data-state="error"]')
    wait_for(
        page,
        lambda: not Session.objects.filter(status__in=ACTIVE_STATUSES).exists(),
        what="the session to end",
    )
    assert e2e.fake.live_session_ids() == set()


def test_live_session_with_a_stub_sdk_heartbeats_tracks_the_mic_and_forwards_events(
    e2e: Any, live_server: Any, browser_context: Any, user: Any
) -> None:
    # The real SDK cannot go live offline; a stand-in with its surface can.
    with_standin_sdk(e2e)
    page, traffic = open_signed_in(e2e, live_server, browser_context, user)
    page.evaluate(
        "() => { window.seen = [];"
        " for (const name of ['state', 'transcript', 'avatar_started_speaking',"
        " 'local_audio_change', 'ce_events.realtime.response_transcript'])"
        " document.addEventListener('avaturn:' + name,"
        " e => window.seen.push([e.type, e.detail && e.detail.state || e.detail])); }"
    )
    with page.expect_response(lambda r: r.url.endswith("/avaturn/sessions/")) as answer:
        page.click("[data-avaturn-start]")
    minted = answer.value.json()
    page.wait_for_selector('[data-avaturn-widget][data-state="live"]')
    (session,) = Session.objects.filter(user=user)
    assert page.evaluate("() => window.stubHeads[0].options") == {
        "sessionToken": minted["token"],
        "apiHost": e2e.fake.url,
        "audioSource": True,
        "immediatelyJoin": True,
    }
    assert page.is_hidden("[data-avaturn-start]")
    assert status_text(page) == "Live: speak to the avatar."
    # The stand-in joined with the token: the fake named the session it belongs to.
    assert f"session {minted['session_id']} is live" in page.inner_text(".stub-video")

    # Heartbeats reach the backend while live (HEARTBEAT_INTERVAL is 1 s here).
    wait_for(
        page,
        lambda: Session.objects.filter(pk=session.pk, last_seen_at__isnull=False).exists(),
        what="a heartbeat",
    )

    # Mute, then unmute: the widget sets the state instead of flipping it.
    page.click("[data-avaturn-mic]")
    assert page.get_attribute("[data-avaturn-mic]", "aria-pressed") == "true"
    page.click("[data-avaturn-mic]")
    assert page.get_attribute("[data-avaturn-mic]", "aria-pressed") == "false"
    assert page.evaluate("() => window.stubHeads[0].toggles") == [False, True]
    assert page.evaluate("() => window.stubHeads[0].localAudio") is True
    # Asking for the state it is already in changes nothing.
    page.evaluate(
        "() => document.querySelector('[data-avaturn-widget]').avaturn.setMicrophone(true)"
    )
    assert page.evaluate("() => window.stubHeads[0].toggles") == [False, True]

    page.evaluate(
        "() => { const head = window.stubHeads[0];"
        " head.emit('avatar_started_speaking', {type: 'avatar_started_speaking'});"
        " head.emit('ce_events.realtime.response_transcript',"
        " {transcript: 'Hello there', timestamp: 1}); }"
    )
    seen = page.evaluate("() => window.seen")
    assert ["avaturn:state", "connecting"] in seen
    assert ["avaturn:state", "live"] in seen
    assert ["avaturn:avatar_started_speaking", {"type": "avatar_started_speaking"}] in seen
    assert [
        "avaturn:ce_events.realtime.response_transcript",
        {"transcript": "Hello there", "timestamp": 1},
    ] in seen
    assert [
        "avaturn:transcript",
        {"role": "avatar", "transcript": "Hello there", "timestamp": 1},
    ] in seen

    # The SDK's idle timeout ends our session too.
    page.evaluate("() => window.stubHeads[0].emit('idle', {data: null})")
    page.wait_for_selector('[data-avaturn-widget][data-state="ended"]')
    assert status_text(page) == "The conversation ended after a period of inactivity."
    assert page.evaluate("() => window.stubHeads[0].disposed") is True
    assert_ended_everywhere(page, e2e, session.session_id)
    assert not traffic.page_errors


@pytest.mark.parametrize(
    ("event", "detail", "state", "message"),
    [
        (
            "error",
            {"code": "internal_error"},
            "error",
            "Something went wrong. Please try again.",
        ),
        ("dispose", None, "ended", "The conversation has ended."),
    ],
)
def test_the_sdk_failing_or_ending_the_call_ends_the_session(
    e2e: Any,
    live_server: Any,
    browser_context: Any,
    user: Any,
    event: str,
    detail: Any,
    state: str,
    message: str,
) -> None:
    # Nobody can use the session once the SDK's call has failed or ended: left
    # alone, the widget went on heartbeating a session that billed until
    # Avaturn noticed the visitor was gone.
    with_standin_sdk(e2e)
    page, _traffic = open_signed_in(e2e, live_server, browser_context, user)
    with page.expect_response(lambda r: r.url.endswith("/avaturn/sessions/")) as answer:
        page.click("[data-avaturn-start]")
    session_id = answer.value.json()["session_id"]
    page.wait_for_selector('[data-avaturn-widget][data-state="live"]')

    page.evaluate("([name, detail]) => window.stubHeads[0].emit(name, detail)", [event, detail])

    page.wait_for_selector(f'[data-avaturn-widget][data-state="{state}"]')
    assert status_text(page) == message
    assert_ended_everywhere(page, e2e, session_id)


def test_transcripts_are_stored_when_the_site_enables_them(
    e2e: Any, live_server: Any, browser_context: Any, user: Any, avaturn: AvaturnOverrides
) -> None:
    from django_avaturn.models import Transcript

    with_standin_sdk(e2e)
    avaturn(TRANSCRIPTS_ENABLED=True)
    page, traffic = open_signed_in(e2e, live_server, browser_context, user)
    press_start_until_live(page)
    page.evaluate(
        "() => { const head = window.stubHeads[0];"
        " head.emit('ce_events.realtime.input_transcript',"
        " {transcript: 'What is Django?', timestamp: 1764000000000});"
        " head.emit('ce_events.realtime.response_transcript', {transcript: '  '});"
        " head.emit('ce_events.realtime.response_transcript',"
        " {transcript: 'A web framework.'}); }"
    )
    wait_for(page, lambda: Transcript.objects.count() == 2, what="two transcript lines")
    # Two concurrent POSTs: their order of arrival is not the test's business.
    lines = set(Transcript.objects.values_list("role", "text"))
    assert lines == {("user", "What is Django?"), ("avatar", "A web framework.")}
    assert not traffic.page_errors


def test_a_late_heartbeat_answer_about_a_stopped_session_spares_the_next_one(
    e2e: Any, live_server: Any, browser_context: Any, user: Any
) -> None:
    with_standin_sdk(e2e)
    page, _traffic = open_signed_in(e2e, live_server, browser_context, user)
    held: list[Any] = []

    def hold_the_first_heartbeat(route: Any) -> None:
        if held:
            route.continue_()
        else:
            held.append(route)

    page.route("**/heartbeat/", hold_the_first_heartbeat)
    press_start_until_live(page)
    wait_for(page, lambda: held, what="a heartbeat in flight")
    page.click("[data-avaturn-stop]")
    press_start_until_live(page)
    (second,) = Session.objects.filter(status__in=ACTIVE_STATUSES)

    # The first session's heartbeat answers now: that session has ended.
    held[0].fulfill(
        status=409,
        content_type="application/json",
        body='{"code": "session_ended", "detail": "This avatar session has ended."}',
    )
    page.wait_for_timeout(500)

    assert page.get_attribute("[data-avaturn-widget]", "data-state") == "live"
    second.refresh_from_db()
    assert second.status == "live"


def test_a_session_replaced_from_another_tab_says_so(
    e2e: Any, live_server: Any, browser_context: Any, user: Any
) -> None:
    with_standin_sdk(e2e)
    first, _traffic = open_signed_in(e2e, live_server, browser_context, user)
    press_start_until_live(first)

    second = browser_context[0].new_page()
    second.goto(live_server.url + "/")
    press_start_until_live(second)

    # The first tab learns it at its next heartbeat (HEARTBEAT_INTERVAL is 1 s here).
    first.wait_for_selector('[data-avaturn-widget][data-state="ended"]')
    assert status_text(first) == "A newer conversation replaced this one."


def test_stop_whose_terminate_fails_is_retried_by_the_page(
    e2e: Any, live_server: Any, browser_context: Any, user: Any, avaturn: AvaturnOverrides
) -> None:
    with_standin_sdk(e2e)
    avaturn(TERMINATE_RETRIES=0)
    page, _traffic = open_signed_in(e2e, live_server, browser_context, user)
    press_start_until_live(page)
    e2e.fake.fail(AVATURN_TERMINATE, status=500, times=1)

    with page.expect_response(lambda r: r.request.method == "DELETE") as first:
        page.click("[data-avaturn-stop]")
    assert first.value.status == 502  # the row stays live for a retry

    # The page asks again 2 s later, and that one gets through. The fake ends the
    # session as it answers; the server records the end once it has that answer.
    wait_for(page, lambda: not e2e.fake.live_session_ids(), what="the retried end", timeout=10)
    wait_for(
        page,
        lambda: Session.objects.get().status == "ended",
        what="the retried end recorded",
        timeout=10,
    )
    (row,) = Session.objects.all()
    assert (row.status, row.end_reason) == ("ended", "client")
    assert len(e2e.fake.requests_for(AVATURN_TERMINATE)) == 2


def test_stop_after_the_csrf_token_changed_in_another_tab_still_ends_the_session(
    e2e: Any, live_server: Any, browser_context: Any, user: Any
) -> None:
    # Signing in again in another tab rotates the CSRF cookie; the token
    # rendered into this page when it loaded is stale from then on.
    with_standin_sdk(e2e)
    page, _traffic = open_signed_in(e2e, live_server, browser_context, user)
    press_start_until_live(page)
    from django.middleware.csrf import _get_new_csrf_string

    page.context.add_cookies(
        [{"name": "csrftoken", "value": _get_new_csrf_string(), "url": live_server.url}]
    )

    with page.expect_response(lambda r: r.request.method == "DELETE") as answer:
        page.click("[data-avaturn-stop]")
    # (Not the body in the message: reading a keepalive answer's body hangs.)
    assert answer.value.status == 204
    (row,) = Session.objects.all()
    assert (row.status, row.end_reason) == ("ended", "client")
    assert not e2e.fake.live_session_ids()


def test_a_heartbeat_refused_after_signing_out_elsewhere_ends_the_call_and_says_why(
    e2e: Any, live_server: Any, browser_context: Any, user: Any
) -> None:
    with_standin_sdk(e2e)
    page, _traffic = open_signed_in(e2e, live_server, browser_context, user)
    press_start_until_live(page)
    # Signed out in another tab: the session cookie is gone (the sign-out
    # receiver ends the session on the server; here it is simply forgotten).
    page.context.clear_cookies(name="sessionid")

    # The next heartbeat (HEARTBEAT_INTERVAL is 1 s here) is refused: the
    # widget can no longer act for this visitor, so it stops saying so.
    page.wait_for_selector('[data-avaturn-widget][data-state="ended"]')
    assert status_text(page) == "Please sign in to talk with the avatar."
    link = page.locator("[data-avaturn-widget] [data-avaturn-status] a")
    assert link.get_attribute("href") == "/accounts/login/?next=/"


def test_with_only_test_mode_the_widget_goes_live_against_the_in_process_fake(
    e2e: Any, live_server: Any, browser_context: Any, user: Any, monkeypatch: Any
) -> None:
    from django_avaturn import test_mode

    monkeypatch.delenv("AVATURN_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    e2e.settings.AVATURN = {"TEST_MODE": True}
    fake = test_mode.fake_upstream()
    fake.reset()
    page, _traffic = open_signed_in(e2e, live_server, browser_context, user)
    assert page.get_attribute("[data-avaturn-widget]", "data-sdk-url") == fake.standin_sdk_url

    press_start_until_live(page)

    (row,) = Session.objects.all()
    assert fake.live_session_ids() == {row.session_id}
    assert e2e.fake.requests == []  # the fixture's own fake: TEST_MODE needs none
    page.click("[data-avaturn-stop]")
    wait_for(page, lambda: not fake.live_session_ids(), what="the fake's session to end")


def test_the_engines_messages_become_events_and_cards_and_the_page_can_send_one(
    e2e: Any, live_server: Any, browser_context: Any, user: Any
) -> None:
    # What a site engine's tool sends the page (sdk.message.send), played by
    # the fake as Avaturn passes it on: the stand-in SDK delivers it as the
    # real one delivers an app message, and shows it.
    with_standin_sdk(e2e)
    page, traffic = open_signed_in(e2e, live_server, browser_context, user)
    page.evaluate(
        "() => { window.messages = [];"
        " document.addEventListener('avaturn:message', e => window.messages.push("
        "{detail: e.detail, bubbles: e.bubbles, composed: e.composed,"
        " from: e.target.id})); }"
    )
    press_start_until_live(page)
    (session,) = Session.objects.filter(user=user)
    widget_id = page.get_attribute("[data-avaturn-widget]", "id")

    booking = {"title": "Your next booking", "when": "Tuesday 10:00", "seats": 2}
    e2e.fake.send_browser_message(
        session.session_id, {"type": "django_avaturn.message", "data": booking}
    )
    # An app message of another type is not ours to re-dispatch.
    e2e.fake.send_browser_message(session.session_id, {"type": "other.app", "data": {"x": 1}})
    page.wait_for_selector(".stub-message >> nth=1")
    cards = page.locator(".stub-message").all_inner_texts()
    assert "title: Your next booking" in cards[0]
    assert "seats: 2" in cards[0]
    assert page.evaluate("() => window.messages") == [
        {"detail": booking, "bubbles": True, "composed": True, "from": widget_id}
    ]

    # The page's message to its own conversation goes to the session API.
    # (The endpoint is answered here by the browser's route: this checks what
    # the widget sends, the API's tests what the server does with it.)
    sent: list[Any] = []

    def answer(route: Any) -> None:
        sent.append(route.request)
        if len(sent) == 1:
            route.fulfill(status=202, json={"status": "accepted"})
        else:
            route.fulfill(status=429, json={"code": "throttled", "detail": "Slow down."})

    page.route("**/messages/", answer)
    assert (
        page.evaluate(
            "() => document.querySelector('[data-avaturn-widget]').avaturn"
            ".sendMessage({kind: 'filter', value: 'red'}).then(() => 'sent')"
        )
        == "sent"
    )
    (request,) = sent
    assert request.method == "POST"
    assert request.url == f"{live_server.url}/avaturn/sessions/{session.session_id}/messages/"
    assert request.post_data_json == {"data": {"kind": "filter", "value": "red"}}
    cookies = {c["name"]: c["value"] for c in page.context.cookies()}
    expected_token = cookies.get("csrftoken") or page.get_attribute(
        "[data-avaturn-widget]", "data-csrf-token"
    )
    assert expected_token
    assert request.headers["x-csrftoken"] == expected_token
    refused = page.evaluate(
        "() => document.querySelector('[data-avaturn-widget]').avaturn"
        ".sendMessage({kind: 'again'}).catch(e => [e.name, e.code, e.status, e.detail])"
    )
    assert refused == ["MessageError", "throttled", 429, "Slow down."]

    # Once the conversation ended: no request, a clear refusal, and polling stops.
    page.click("[data-avaturn-stop]")
    page.wait_for_selector('[data-avaturn-widget][data-state="ended"]')
    assert (
        page.evaluate(
            "() => document.querySelector('[data-avaturn-widget]').avaturn"
            ".sendMessage({kind: 'late'}).catch(e => e.code)"
        )
        == "not_live"
    )
    assert len(sent) == 2
    assert not traffic.page_errors
