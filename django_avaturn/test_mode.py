"""``AVATURN["TEST_MODE"]``: the app talks to a loopback fake instead of Avaturn and OpenAI.

One setting, in the manner of django-anymail's test backend: the first time
this process needs an upstream (a start, the widget's SDK URL), it starts a
:class:`~django_avaturn.testing.FakeUpstream` on a free loopback port, and
every setting in ``conf.TEST_MODE_SETTINGS`` (the upstream URLs, the keys,
the browser SDK's URL) comes from that fake instead of ``AVATURN``; the site
engine's OpenAI Realtime URL from a :class:`~django_avaturn.testing.FakeRealtime`
started when a process first reads ``SITE_ENGINE``. A start
then goes live against it, and the widget loads its stand-in SDK, which goes
live without a video call.

What makes it safe to offer:

- the site's configured keys are never sent anywhere: the fake's own public
  test keys replace them, and nothing reaches a real upstream, so nothing is
  billed;
- the fake listens on loopback only (its control API is unauthenticated);
- it is never silently on: ``manage.py check`` (which ``runserver`` and
  ``migrate`` run) warns whenever it is on (W009) and is an error with DEBUG
  off (E006), and the process logs a warning when it starts the fake.

Each process has its own fake (a session started in one worker is unknown
to another's), and the browser must reach this host's loopback: it is for
development on one machine and for test suites, not for serving anyone.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from django_avaturn.logs import get_logger

if TYPE_CHECKING:
    from django_avaturn.testing import FakeRealtime, FakeUpstream

logger = get_logger(__name__)

_lock = threading.Lock()
_fake: FakeUpstream | None = None
_realtime: FakeRealtime | None = None


def is_on() -> bool:
    """``AVATURN["TEST_MODE"]``, validated (``NotConfigured`` unless True or False)."""
    from django_avaturn.conf import avaturn_settings  # (conf imports this module lazily too)

    return avaturn_settings.TEST_MODE


def fake_upstream() -> FakeUpstream:
    """This process's fake, started on first use; for a test to inspect or steer."""
    global _fake
    with _lock:
        if _fake is None:
            from django_avaturn.testing import FakeUpstream

            _fake = FakeUpstream().start()
            logger.warning(
                "AVATURN['TEST_MODE'] is on: sessions go to a loopback fake of Avaturn and "
                "OpenAI at %s, not to the real services.",
                _fake.url,
            )
        return _fake


def fake_realtime() -> FakeRealtime:
    """This process's fake OpenAI Realtime server for the site engine, started on first
    use: it accepts the OpenAI key test mode uses and plays ``rundemo_script()``.
    Its ``websocket_base_url`` is where the site engine opens OpenAI in test mode.
    Needs ``websockets`` (``django-avaturn[engine]``)."""
    global _realtime
    key = fake_upstream().openai_api_key
    with _lock:
        if _realtime is None:
            from django_avaturn.testing import FakeRealtime

            _realtime = FakeRealtime(api_key=key).start()
            logger.warning(
                "AVATURN['TEST_MODE'] is on: the site engine talks to a loopback fake of "
                "OpenAI Realtime at %s, not to the real service.",
                _realtime.websocket_base_url,
            )
        return _realtime


def fake_setting(name: str) -> Any:
    """One of ``conf.TEST_MODE_SETTINGS`` as TEST_MODE has it.

    ``SITE_ENGINE`` (merged over the site's section) points the site engine's
    OpenAI socket at :func:`fake_realtime`, started here: only a process that
    reads the site engine's settings starts one.
    """
    if name == "SITE_ENGINE":
        return {"OPENAI_WEBSOCKET_URL": fake_realtime().websocket_base_url}
    return fake_settings()[name]


def fake_settings() -> dict[str, Any]:
    """What TEST_MODE reads instead of ``AVATURN`` from the HTTP fake: its upstreams' and the
    browser SDK's settings, and no HTTP client of the site's (``SITE_ENGINE``: see
    :func:`fake_setting`)."""
    return {
        **fake_upstream().settings(),
        "CARTESIA": fake_upstream().cartesia_settings(),
        # The browser talks to the fake too, and the default HTTP client reaches it
        # (a site's own client may be a proxy, or a transport of its tests).
        "SDK_API_HOST": None,
        "OPENAI_HTTP_CLIENT": None,
    }
