"""``AVATURN["TEST_MODE"]``: one setting, the app talks to the loopback fake, never unnoticed."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.core.checks import Error, Warning, run_checks
from django.template import Context, Template
from django.test import RequestFactory

from django_avaturn import test_mode
from django_avaturn.conf import TEST_MODE_SETTINGS, avaturn_settings
from django_avaturn.engine.routing import websocket_urlpatterns
from django_avaturn.models import Session, SessionStatus
from django_avaturn.testing import (
    AVATURN_CREATE,
    AVATURN_TERMINATE,
    DEFAULT_AVATURN_API_KEY,
    DEFAULT_OPENAI_API_KEY,
    OPENAI_CLIENT_SECRET,
    FakeUpstream,
)
from tests.helpers import (
    LIST_URL,
    AvaturnOverrides,
    csrf_delete,
    csrf_post,
    run_coroutine,
)
from tests.live_fake import wait_until

# What a site might have configured: under TEST_MODE it must never leave the process.
SITE_KEYS = {"API_KEY": "av-site-real-key-0123456789", "OPENAI_API_KEY": "sk-site-real-0123456789"}


@pytest.fixture
def fake(settings: Any, monkeypatch: pytest.MonkeyPatch) -> FakeUpstream:
    """TEST_MODE on, with nothing else configured: no keys in AVATURN or the environment."""
    monkeypatch.delenv("AVATURN_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    settings.AVATURN = {"TEST_MODE": True}
    upstream = test_mode.fake_upstream()
    upstream.reset()
    return upstream


def avaturn_messages(*, deploy: bool = False) -> list[Any]:
    return [
        m
        for m in run_checks(include_deployment_checks=deploy, databases=[])
        if m.id.startswith("django_avaturn.")
    ]


@pytest.mark.django_db(transaction=True)
def test_a_start_with_only_test_mode_goes_live_against_the_fake(
    fake: FakeUpstream, api_client: Any
) -> None:
    response = csrf_post(api_client, LIST_URL, {})

    assert response.status_code == 201, response.content
    body = response.json()
    assert body["api_host"] == fake.url
    row = Session.objects.get()
    assert (row.session_id, row.status) == (body["session_id"], SessionStatus.LIVE)
    assert fake.live_session_ids() == {body["session_id"]}
    # The token the browser gets is the one the fake's SDK endpoint takes.
    joined = requests.get(
        f"{body['api_host']}/_sdk/v0/sessions",
        headers={"X-Session-Token": body["token"]},
        timeout=5,
    )
    assert (joined.status_code, joined.json()["id"]) == (200, body["session_id"])

    ended = csrf_delete(api_client, f"{LIST_URL}{body['session_id']}/")

    assert ended.status_code == 204
    assert fake.live_session_ids() == set()
    assert len(fake.requests_for(AVATURN_TERMINATE)) == 1


@pytest.mark.django_db(transaction=True)
def test_the_sites_own_keys_never_leave_the_process(
    fake: FakeUpstream, api_client: Any, settings: Any
) -> None:
    settings.AVATURN = {"TEST_MODE": True, **SITE_KEYS, "API_URL": "https://api.avaturn.live"}

    response = csrf_post(api_client, LIST_URL, {})

    assert response.status_code == 201, response.content
    (secret,) = fake.requests_for(OPENAI_CLIENT_SECRET)
    (create,) = fake.requests_for(AVATURN_CREATE)
    assert secret.headers["authorization"] == f"Bearer {DEFAULT_OPENAI_API_KEY}"
    assert create.headers["authorization"] == f"Bearer {DEFAULT_AVATURN_API_KEY}"
    for request in fake.requests:
        sent = repr(request.headers) + request.body.decode()
        assert not any(key in sent for key in SITE_KEYS.values())


def test_the_widget_loads_the_fakes_stand_in_sdk(fake: FakeUpstream) -> None:
    html = Template("{% load avaturn %}{% avaturn_head %}").render(
        Context({"request": RequestFactory().get("/")})
    )
    assert f'data-sdk-url="{fake.standin_sdk_url}"' in html
    assert "integrity=" not in html


def test_the_fake_supplies_every_test_mode_setting(fake: FakeUpstream) -> None:
    # SITE_ENGINE's part comes from the fake Realtime server, started only when read.
    assert set(test_mode.fake_settings()) == TEST_MODE_SETTINGS - {"SITE_ENGINE"}
    assert avaturn_settings.raw("API_URL") == fake.url
    assert avaturn_settings.configured("API_URL") == "https://api.avaturn.live"


@pytest.mark.django_db(transaction=True)
def test_a_malformed_test_mode_refuses_starts(
    avaturn: AvaturnOverrides, api_client: Any, upstream: Any
) -> None:
    avaturn(TEST_MODE="yes")
    response = csrf_post(api_client, LIST_URL, {})
    assert (response.status_code, response.json()["code"]) == (503, "not_configured")
    assert upstream.avaturn.created == []
    assert not Session.objects.exists()


@pytest.fixture
def no_fake_yet(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """This process as if no fake had been started yet; any it starts is stopped after."""
    monkeypatch.setattr(test_mode, "_fake", None)
    yield
    if test_mode._fake is not None:
        test_mode._fake.stop()


def test_starting_the_fake_is_logged(
    no_fake_yet: None, settings: Any, caplog: pytest.LogCaptureFixture
) -> None:
    settings.AVATURN = {"TEST_MODE": True}
    with caplog.at_level(logging.WARNING, logger="django_avaturn.test_mode"):
        url = avaturn_settings.raw("API_URL")
        avaturn_settings.raw("OPENAI_API_KEY")
    assert [r.getMessage() for r in caplog.records] == [
        f"AVATURN['TEST_MODE'] is on: sessions go to a loopback fake of Avaturn and OpenAI "
        f"at {url}, not to the real services."
    ]


def test_off_it_starts_nothing(no_fake_yet: None) -> None:
    assert avaturn_settings.raw("API_URL") == "https://avaturn.test"
    assert test_mode._fake is None


def test_the_checks_start_no_fake(no_fake_yet: None, settings: Any) -> None:
    settings.AVATURN = {"TEST_MODE": True}
    settings.DEBUG = True
    avaturn_messages(deploy=True)
    assert test_mode._fake is None


def test_test_mode_with_debug_off_is_e006(settings: Any, monkeypatch: Any) -> None:
    monkeypatch.delenv("AVATURN_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    # No keys: TEST_MODE does not need them, so no W001/W002 either.
    settings.AVATURN = {"TEST_MODE": True}
    settings.DEBUG = False
    assert avaturn_messages() == [
        Error(
            "AVATURN['TEST_MODE'] is on with DEBUG off: avatar sessions go to a loopback fake "
            "of Avaturn and OpenAI, and visitors get a stand-in avatar.",
            hint="Remove TEST_MODE from production settings. A test run that wants it "
            "(Django's test runner turns DEBUG off) adds 'django_avaturn.E006' to "
            "SILENCED_SYSTEM_CHECKS.",
            id="django_avaturn.E006",
        )
    ]


def test_test_mode_is_never_silently_on_w009(settings: Any, avaturn: AvaturnOverrides) -> None:
    avaturn(TEST_MODE=True)
    settings.DEBUG = True
    assert avaturn_messages() == [
        Warning(
            "AVATURN['TEST_MODE'] is on: avatar sessions go to a loopback fake of Avaturn "
            "and OpenAI, not to the real services.",
            hint="Remove TEST_MODE to talk to the real services.",
            id="django_avaturn.W009",
        )
    ]


def test_deploy_check_names_the_fakes_keys_and_loopback_urls_w010(
    settings: Any, avaturn: AvaturnOverrides
) -> None:
    with FakeUpstream() as local:
        avaturn(**local.settings(), CARTESIA=local.cartesia_settings())
    settings.AVATURN["SDK_API_HOST"] = "http://[::1]:8765"
    settings.AVATURN["SITE_ENGINE"] = {"OPENAI_WEBSOCKET_URL": "ws://localhost:8766/v1"}
    settings.DEBUG = False
    assert avaturn_messages(deploy=True) == [
        Warning(
            "DEBUG is off, but AVATURN is set up for the loopback fake of the upstreams: "
            "AVATURN['API_KEY'] is its public test key; "
            "AVATURN['OPENAI_API_KEY'] is its public test key; "
            "AVATURN['CARTESIA']['API_KEY'] is its public test key; "
            "AVATURN['API_URL'] is on loopback (127.0.0.1); "
            "AVATURN['OPENAI_BASE_URL'] is on loopback (127.0.0.1); "
            "AVATURN['SDK_API_HOST'] is on loopback (::1); "
            "AVATURN['SDK_URL'] is on loopback (127.0.0.1); "
            "AVATURN['CARTESIA']['API_URL'] is on loopback (127.0.0.1); "
            "AVATURN['SITE_ENGINE']['OPENAI_WEBSOCKET_URL'] is on loopback (localhost).",
            hint="Production needs the real keys and the real upstream URLs (the defaults). "
            "If a proxy of your own listens on loopback, add 'django_avaturn.W010' to "
            "SILENCED_SYSTEM_CHECKS.",
            id="django_avaturn.W010",
        )
    ]
    # Only with --deploy, and only with DEBUG off.
    assert avaturn_messages() == []
    settings.DEBUG = True
    assert avaturn_messages(deploy=True) == []


@pytest.mark.parametrize(
    ("name", "value"),
    [("API_KEY", f"{DEFAULT_AVATURN_API_KEY}\n"), ("API_URL", "http://localhost:9000")],
)
def test_deploy_check_one_setting_of_the_fakes_is_enough(
    settings: Any, avaturn: AvaturnOverrides, name: str, value: str
) -> None:
    avaturn(**{name: value})
    settings.DEBUG = False
    (message,) = avaturn_messages(deploy=True)
    assert message.id == "django_avaturn.W010"
    assert f"AVATURN['{name}']" in message.msg


def test_deploy_check_is_clean_for_real_upstreams(settings: Any) -> None:
    settings.DEBUG = False
    assert avaturn_messages(deploy=True) == []


@pytest.fixture
def no_fake_realtime_yet() -> Iterator[None]:
    if test_mode._realtime is not None:
        test_mode._realtime.stop()
    test_mode._realtime = None
    yield
    if test_mode._realtime is not None:
        test_mode._realtime.stop()
    test_mode._realtime = None


def test_the_site_engines_fake_realtime_takes_the_key_test_mode_uses(
    fake: FakeUpstream, no_fake_realtime_yet: None, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="django_avaturn.test_mode"):
        realtime = test_mode.fake_realtime()
    assert test_mode.fake_realtime() is realtime and realtime.running
    assert realtime.api_key == avaturn_settings.raw("OPENAI_API_KEY") == fake.openai_api_key
    assert realtime.websocket_base_url.startswith("ws://127.0.0.1:")
    assert [r.getMessage() for r in caplog.records] == [
        "AVATURN['TEST_MODE'] is on: the site engine talks to a loopback fake of OpenAI "
        f"Realtime at {realtime.websocket_base_url}, not to the real service."
    ]


SITE_ENGINE = {
    "PUBLIC_URL": "wss://avatar.example.com",
    "TOOLS": ["tests.engine_tools_example"],
    # A site's own setting: under TEST_MODE the engine must not open it.
    "OPENAI_WEBSOCKET_URL": "wss://realtime.example.com/v1",
}


def test_the_site_engines_openai_socket_goes_to_the_fake_realtime(
    fake: FakeUpstream, no_fake_realtime_yet: None, settings: Any
) -> None:
    settings.AVATURN = {"TEST_MODE": True, "ENGINE": "site", "SITE_ENGINE": SITE_ENGINE}

    site_engine = avaturn_settings.SITE_ENGINE

    assert site_engine["OPENAI_WEBSOCKET_URL"] == test_mode.fake_realtime().websocket_base_url
    # The rest of the section is the site's.
    assert (site_engine["PUBLIC_URL"], site_engine["TOOLS"]) == (
        SITE_ENGINE["PUBLIC_URL"],
        tuple(SITE_ENGINE["TOOLS"]),
    )
    assert avaturn_settings.configured("SITE_ENGINE") == SITE_ENGINE


def test_reading_other_settings_starts_no_fake_realtime(
    fake: FakeUpstream, no_fake_realtime_yet: None
) -> None:
    for name in TEST_MODE_SETTINGS - {"SITE_ENGINE"}:
        avaturn_settings.raw(name)
    assert test_mode._realtime is None


@pytest.mark.django_db(transaction=True)
def test_a_site_engine_conversation_in_test_mode_stays_on_loopback(
    fake: FakeUpstream, no_fake_realtime_yet: None, settings: Any, api_client: Any
) -> None:
    """Start, Avaturn's connection to the socket (as the fake's create recorded it), the
    engine's OpenAI socket: all on the fakes, with the fakes' keys."""
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    settings.AVATURN = {"TEST_MODE": True, "ENGINE": "site", "SITE_ENGINE": SITE_ENGINE}
    response = csrf_post(api_client, LIST_URL, {})
    assert response.status_code == 201, response.content
    (create,) = fake.requests_for(AVATURN_CREATE)
    engine = create.json["conversation_engine"]
    path = urlsplit(engine["url"]).path
    headers = [(name.lower().encode(), value.encode()) for name, value in engine["headers"].items()]
    realtime = test_mode.fake_realtime()

    async def avaturn_joins_and_leaves() -> None:
        avaturn = WebsocketCommunicator(URLRouter(websocket_urlpatterns), path, headers=headers)
        assert (await avaturn.connect(5))[0] is True
        deadline = time.monotonic() + 5
        while realtime.open_connections != 1:
            assert time.monotonic() < deadline, "the engine did not open OpenAI"
            await asyncio.sleep(0.01)
        await avaturn.disconnect(timeout=5)
        assert not avaturn.future.cancelled(), "the consumer did not return"

    run_coroutine(avaturn_joins_and_leaves())

    (opened,) = realtime.connections
    assert opened.headers["authorization"] == f"Bearer {DEFAULT_OPENAI_API_KEY}"
    assert realtime.wait_until(lambda: realtime.open_connections == 0)
    row = Session.objects.get()
    assert wait_until(lambda: Session.objects.get(pk=row.pk).status == SessionStatus.ENDED)
