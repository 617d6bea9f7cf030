"""The Avaturn client keeps a connection per concurrent caller, not just ten.

Found by benchmarks/: under gunicorn with 32 threads, requests' default pool
of 10 discarded connections after each burst and reopened them.
"""

from __future__ import annotations

import threading

from django_avaturn.testing import FakeUpstream
from django_avaturn.testing.records import AVATURN_TERMINATE
from django_avaturn.upstream.avaturn import AvaturnClient

CALLERS = 24


def _burst(client: AvaturnClient) -> None:
    gate = threading.Barrier(CALLERS)

    def call() -> None:
        gate.wait()
        client.terminate_session("sess-gone")

    threads = [threading.Thread(target=call) for _ in range(CALLERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def test_concurrent_callers_reuse_their_connections() -> None:
    # The latency keeps all callers in flight at once, so each needs a connection.
    with FakeUpstream(latency={AVATURN_TERMINATE: 0.2}) as fake:
        settings = fake.settings()
        client = AvaturnClient(
            base_url=settings["API_URL"],
            api_key=settings["API_KEY"],
            connect_timeout=5,
            read_timeout=5,
        )
        try:
            _burst(client)
            opened_first = fake.connections_opened
            _burst(client)
            assert opened_first > 10
            # Every connection kept: two bursts never need more than their
            # callers at once. (A caller the machine delayed past another's
            # answer reuses its connection in one burst, and may need its own
            # in the next.) requests' pool of 10 reopened 14 in the second.
            assert fake.connections_opened <= CALLERS
        finally:
            client.close()
