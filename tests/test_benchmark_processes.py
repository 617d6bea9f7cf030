"""The benchmarks' own processes: a stopped benchmark leaves nothing running.

The benchmarks start their servers and fakes in process groups of their own, so a
signal to the benchmark does not reach them: the benchmark has to stop them itself.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/stat").exists(), reason="reads process states from /proc (Linux)"
)

# A benchmark in miniature: one child server started the way every benchmark starts
# its servers, its pid printed once it listens, then a wait that only a signal ends.
BENCHMARK = """
import sys, time
from benchmarks.procs import Proc, bench_env, free_port, stop_children_on_sigterm

stop_children_on_sigterm()
port = free_port()
argv = [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port)]
with Proc.start("sigterm-test", argv, port=port, env=bench_env()) as proc:
    print(proc.popen.pid, flush=True)
    time.sleep(120)
"""


def running(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, killed but not yet reaped, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_a_benchmark_stopped_by_sigterm_stops_the_servers_it_started() -> None:
    with subprocess.Popen(
        [sys.executable, "-c", BENCHMARK], cwd=ROOT, stdout=subprocess.PIPE, text=True
    ) as benchmark:
        assert benchmark.stdout is not None
        child = int(benchmark.stdout.readline())
        try:
            assert running(child)
            benchmark.send_signal(signal.SIGTERM)
            assert benchmark.wait(30) == 128 + signal.SIGTERM
            deadline = time.monotonic() + 10
            while running(child) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not running(child), "the benchmark's server outlived it"
        finally:
            if running(child):
                os.killpg(child, signal.SIGKILL)
            if benchmark.poll() is None:
                benchmark.kill()
