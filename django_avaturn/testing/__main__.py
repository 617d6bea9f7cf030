"""Run the fake upstream in the foreground: ``python -m django_avaturn.testing``.

For benchmarks, browser tests and the example project. It refuses to listen
beyond loopback unless told to, because its control API is unauthenticated.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType
from typing import TYPE_CHECKING

from .fake import (
    DEFAULT_AVATURN_API_KEY,
    DEFAULT_CARTESIA_API_KEY,
    DEFAULT_OPENAI_API_KEY,
    FakeUpstream,
    is_loopback_host,
)
from .records import AVATURN_CREATE, AVATURN_TERMINATE, OPENAI_CLIENT_SECRET

if TYPE_CHECKING:
    from .realtime import FakeRealtime

CONTROL_HELP = """\
control API (unauthenticated, hence loopback only):
  GET  /_fake/state           live sessions, request counts, connections
  POST /_fake/reset           forget everything
  POST /_fake/fail            inject a fault, e.g. {"route": "avaturn.create", "status": 502}
                              (modes: status, close, timeout, delay, malformed,
                              missing_fields, drip, create_then_status; "times": null
                              for every call)
  POST /_fake/latency         {"route": "avaturn.create", "seconds": 0.3}
  POST /_fake/clear-faults    {"route": ...} or {} for all
routes: openai.client_secret, cartesia.access_token, avaturn.create,
avaturn.terminate, avaturn.task, sdk.session. The stand-in web SDK: GET
/_fake/sdk/main.js. See "Testing your own code" in django-avaturn's documentation.
"""


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError("seconds must be >= 0")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m django_avaturn.testing",
        description="Serve fake OpenAI, Cartesia and Avaturn Live on loopback, for tests, demos.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=CONTROL_HELP,
    )
    parser.add_argument("--host", default="127.0.0.1", help="default: 127.0.0.1")
    parser.add_argument("--port", type=int, default=8765, help="default: 8765; 0 picks a free port")
    parser.add_argument(
        "--latency-openai",
        type=_seconds,
        default=0.0,
        metavar="S",
        help="wait before each client-secret answer",
    )
    parser.add_argument(
        "--latency-create",
        type=_seconds,
        default=0.0,
        metavar="S",
        help="wait before each session-create answer",
    )
    parser.add_argument(
        "--latency-terminate",
        type=_seconds,
        default=0.0,
        metavar="S",
        help="wait before each terminate answer",
    )
    parser.add_argument(
        "--openai-key",
        default=DEFAULT_OPENAI_API_KEY,
        metavar="KEY",
        help=f"the OpenAI key it accepts (default: {DEFAULT_OPENAI_API_KEY})",
    )
    parser.add_argument(
        "--avaturn-key",
        default=DEFAULT_AVATURN_API_KEY,
        metavar="KEY",
        help=f"the Avaturn key it accepts (default: {DEFAULT_AVATURN_API_KEY})",
    )
    parser.add_argument(
        "--cartesia-key",
        default=DEFAULT_CARTESIA_API_KEY,
        metavar="KEY",
        help=f"the Cartesia key it accepts (default: {DEFAULT_CARTESIA_API_KEY})",
    )
    parser.add_argument(
        "--realtime-port",
        type=int,
        default=None,
        metavar="PORT",
        help="also serve a fake OpenAI Realtime WebSocket for the site engine on PORT (0 picks "
        "a free port), playing a demo script that calls --realtime-tool; needs "
        "django-avaturn[engine]",
    )
    parser.add_argument(
        "--realtime-tool",
        default=None,
        metavar="NAME",
        help="the name of the tool the Realtime fake's script calls once (default: the "
        "example project's demo tool)",
    )
    parser.add_argument(
        "--allow-non-loopback",
        action="store_true",
        help="listen on a non-loopback host (dangerous: the control API is unauthenticated)",
    )
    return parser


def build_fake(args: argparse.Namespace) -> FakeUpstream:
    latency = {
        OPENAI_CLIENT_SECRET: args.latency_openai,
        AVATURN_CREATE: args.latency_create,
        AVATURN_TERMINATE: args.latency_terminate,
    }
    return FakeUpstream(
        host=args.host,
        port=args.port,
        latency={route: seconds for route, seconds in latency.items() if seconds},
        openai_api_key=args.openai_key,
        avaturn_api_key=args.avaturn_key,
        cartesia_api_key=args.cartesia_key,
        allow_non_loopback=args.allow_non_loopback,
    )


def build_realtime(args: argparse.Namespace) -> FakeRealtime:
    """The site engine's fake OpenAI Realtime server; it takes the fake's OpenAI key."""
    from .realtime import FakeRealtime, rundemo_script  # needs websockets (the engine extra)

    script = rundemo_script() if args.realtime_tool is None else rundemo_script(args.realtime_tool)
    return FakeRealtime(
        script,
        api_key=args.openai_key,
        host=args.host,
        port=args.realtime_port,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.allow_non_loopback and not is_loopback_host(args.host):
        parser.error(f"refusing non-loopback host {args.host!r} without --allow-non-loopback")
    if args.realtime_port is not None and not is_loopback_host(args.host):
        parser.error("the fake Realtime server listens on loopback only")
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    with contextlib.ExitStack() as running:
        fake = running.enter_context(build_fake(args))
        settings = fake.settings()
        lines = [f"Fake upstream listening on {fake.url} (loopback only; Ctrl-C to stop)"]
        if args.realtime_port is not None:
            realtime = running.enter_context(build_realtime(args))
            settings["SITE_ENGINE"] = {"OPENAI_WEBSOCKET_URL": realtime.websocket_base_url}
            lines.append(f"Fake OpenAI Realtime listening on {realtime.url}")
        sys.stdout.write(
            "\n".join(lines)
            + "\nMerge into settings.AVATURN (SITE_ENGINE into your SITE_ENGINE):\n"
            + json.dumps(settings, indent=4)
            + '\nFor ENGINE "cartesia", merge into your CARTESIA (beside its AGENT_ID):\n'
            + json.dumps(fake.cartesia_settings(), indent=4)
            + "\n"
        )
        sys.stdout.flush()
        stop.wait()
    sys.stdout.write("Fake upstream stopped.\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
