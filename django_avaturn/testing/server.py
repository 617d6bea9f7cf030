"""The HTTP transport of the fake: a keep-alive, low-latency stdlib server.

It knows nothing about the routes: it parses a request, asks the fake for a
`Reply` and sends it. Three details keep latency figures honest (see
docs on the fake): TCP_NODELAY on every accepted socket; the status line,
headers and body sent in a single write, so Nagle's algorithm never waits on
a delayed ACK between them; and a reply's delay counted from the moment its
request line arrived, so the fake's own parsing and bookkeeping (on the same
CPUs as the code under test) are part of the configured latency instead of
being added to it, as a remote service's processing would be.
"""

from __future__ import annotations

import contextlib
import socket
import sys
import threading
import time
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from socketserver import TCPServer
from typing import Any

from .records import Incoming, Reply

Dispatch = Callable[[Incoming], Reply]


class _BadRequest(Exception):
    pass


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


class FakeHTTPServer(ThreadingHTTPServer):
    """Counts and tracks accepted connections so they can be closed on stop."""

    daemon_threads = True
    allow_reuse_address = True
    # socketserver's default backlog of 5 makes a burst of concurrent clients
    # (load tests, 50-thread races) wait on SYN retries: about a second each.
    request_queue_size = 128

    def __init__(
        self,
        address: tuple[str, int],
        dispatch: Dispatch,
        *,
        on_connection: Callable[[], None],
        on_close: Callable[[], None],
        sleep: Callable[[float], bool],
    ) -> None:
        # Must be set before the base class creates the socket.
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.dispatch = dispatch
        self.on_connection = on_connection
        self.on_close = on_close
        self.sleep = sleep
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        super().__init__(address, FakeRequestHandler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host's FQDN, a DNS lookup we don't need.
        TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def process_request(self, request: Any, client_address: Any) -> None:
        self.on_connection()
        if isinstance(request, socket.socket):
            with self._open_lock:
                self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)
        self.on_close()

    def close_open_connections(self) -> None:
        """Wake handler threads parked on idle keep-alive connections."""
        with self._open_lock:
            sockets = list(self._open)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client hanging up mid-answer is routine here (timeouts, faults).
        if isinstance(sys.exc_info()[1], OSError):
            return
        super().handle_error(request, client_address)


class FakeRequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "django-avaturn-fake"
    server: FakeHTTPServer
    arrived = 0.0

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def parse_request(self) -> bool:
        # Called right after the request line is read, before the headers.
        self.arrived = time.monotonic()
        return super().parse_request()

    def do_GET(self) -> None:
        self._serve()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_HEAD = do_GET  # noqa: N815

    def log_message(self, format: str, *args: Any) -> None:
        # Requests are recorded by the fake; stderr noise helps nobody.
        pass

    def _serve(self) -> None:
        try:
            body = self._read_body()
        except _BadRequest as exc:
            self.close_connection = True
            self._deliver(Reply(400, str(exc).encode()))
            return
        incoming = Incoming(
            method=self.command,
            path=self.path,
            headers={name.lower(): value for name, value in self.headers.items()},
            body=body,
        )
        self._deliver(self.server.dispatch(incoming))

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        length = self.headers.get("Content-Length")
        if not length:
            return b""
        try:
            size = int(length)
        except ValueError:
            raise _BadRequest("bad Content-Length") from None
        if size < 0:
            raise _BadRequest("bad Content-Length")
        return self.rfile.read(size)

    def _read_chunked(self) -> bytes:
        parts: list[bytes] = []
        while True:
            line = self.rfile.readline(65537)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise _BadRequest("bad chunk size") from None
            if size == 0:
                # Skip trailers up to the blank line.
                while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(parts)
            parts.append(self.rfile.read(size))
            self.rfile.readline(65537)

    def _deliver(self, reply: Reply) -> None:
        remaining = reply.delay - (time.monotonic() - self.arrived)
        if remaining > 0 and not self.server.sleep(remaining):
            self.close_connection = True
            return
        if reply.close:
            self.close_connection = True
            return
        headers = {
            "Server": self.server_version,
            "Content-Type": "application/json",
            **reply.headers,
            "Content-Length": str(len(reply.body)),
        }
        if self.close_connection:
            headers["Connection"] = "close"
        lines = [f"HTTP/1.1 {reply.status} {_phrase(reply.status)}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        body = b"" if self.command == "HEAD" else reply.body
        try:
            if reply.drip is None:
                self.wfile.write(head + body)
                return
            self.wfile.write(head)
            for index in range(len(body)):
                if not self.server.sleep(reply.drip):
                    self.close_connection = True
                    return
                self.wfile.write(body[index : index + 1])
        except OSError:
            self.close_connection = True


__all__ = ["Dispatch", "FakeHTTPServer", "FakeRequestHandler"]
