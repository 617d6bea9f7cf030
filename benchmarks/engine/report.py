"""ENGINE_RESULTS.md from the engine benchmark's results JSON (``run``)."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

GOAL_COUNT = 100
GOAL_P99_MARGIN_MS = 5.0
GOAL_CPU_RATIO = 1.5
GOAL_RSS_MB = 2.0


def _median(runs: list[dict[str, Any]], get: Callable[[dict[str, Any]], Any]) -> float | None:
    values = [v for v in (get(r) for r in runs) if v is not None]
    return statistics.median(values) if values else None


def _range(runs: list[dict[str, Any]], get: Callable[[dict[str, Any]], Any]) -> str:
    values = [v for v in (get(r) for r in runs) if v is not None]
    if len(values) < 2:
        return ""
    return f"{min(values):g} to {max(values):g}"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _fmt(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


METRICS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "up_p50": lambda r: r.get("up", {}).get("p50"),
    "up_p99": lambda r: r.get("up", {}).get("p99"),
    "down_p50": lambda r: r.get("down", {}).get("p50"),
    "down_p99": lambda r: r.get("down", {}).get("p99"),
    "tool_p50": lambda r: r.get("tool", {}).get("p50"),
    "tool_p99": lambda r: r.get("tool", {}).get("p99"),
    "cpu": lambda r: r.get("cpu_pct_per_conversation"),
    "rss": lambda r: r.get("rss_mb_per_conversation"),
    "rss_base": lambda r: r.get("rss_base_mb"),
    "cpu_total": lambda r: r.get("cpu_pct_total"),
}


def summarise(data: dict[str, Any]) -> dict[tuple[str, int], dict[str, Any]]:
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for run in data["runs"]:
        groups.setdefault((run["server"], run["conversations"]), []).append(run)
    summary = {}
    for key, runs in groups.items():
        good = [r for r in runs if r.get("up")]
        row: dict[str, Any] = {name: _median(good, get) for name, get in METRICS.items()}
        row["ranges"] = {name: _range(good, get) for name, get in METRICS.items()}
        row["rounds"] = len(good)
        row["errors"] = sum(r.get("error_count", 0) for r in runs)
        row["connected"] = min((r.get("connected", 0) for r in runs), default=0)
        sent = sum(r.get("frames_sent", 0) for r in good)
        row["up_delivered"] = (
            sum(r.get("frames_up_arrived", 0) for r in good) / sent if sent else None
        )
        expected = sum(r.get("frames_down_expected", 0) for r in good)
        row["down_delivered"] = (
            sum(r.get("frames_down_arrived", 0) for r in good) / expected if expected else None
        )
        row["error_samples"] = sorted({e for r in runs for e in r.get("errors", [])})[:3]
        summary[key] = row
    return summary


def goals(summary: dict[tuple[str, int], dict[str, Any]], counts: list[int]) -> list[str]:
    count = GOAL_COUNT if GOAL_COUNT in counts else max(counts)
    note = "" if count == GOAL_COUNT else f" (this plan has no {GOAL_COUNT}: at {count})"
    engine, base = summary.get(("engine", count)), summary.get(("forwarder", count))
    if not engine or not base or engine["up_p99"] is None or base["up_p99"] is None:
        return [f"- No goal could be judged{note}: a server has no measurement."]

    def verdict(ok: bool) -> str:
        return "met" if ok else "**not met**"

    lines = []
    for side, label in (("up", "Avaturn → OpenAI"), ("down", "OpenAI → Avaturn")):
        e, b = engine[f"{side}_p99"], base[f"{side}_p99"]
        lines.append(
            f"- p99 per frame {label} ({side}), {count} conversations{note}: engine {e:.2f} ms, "
            f"forwarder {b:.2f} ms, {e - b:+.2f} ms (goal within {GOAL_P99_MARGIN_MS:g} ms): "
            f"{verdict(e - b <= GOAL_P99_MARGIN_MS)} (rounds: engine "
            f"{engine['ranges'][side + '_p99']}, forwarder {base['ranges'][side + '_p99']})."
        )
    ratio = engine["cpu"] / base["cpu"] if base["cpu"] else float("inf")
    lines.append(
        f"- CPU per conversation, {count} conversations{note}: engine {engine['cpu']:.2f}% of a "
        f"core, forwarder {base['cpu']:.2f}%, {ratio:.2f} times (goal at most "
        f"{GOAL_CPU_RATIO:g}): {verdict(ratio <= GOAL_CPU_RATIO)} (rounds: engine "
        f"{engine['ranges']['cpu']}, forwarder {base['ranges']['cpu']})."
    )
    lines.append(
        f"- Memory per conversation, {count} conversations{note}: engine {engine['rss']:.2f} MB "
        f"(goal at most {GOAL_RSS_MB:g} MB): {verdict(engine['rss'] <= GOAL_RSS_MB)} (forwarder "
        f"{base['rss']:.2f} MB; rounds: engine {engine['ranges']['rss']})."
    )
    return lines


def write_results(data: dict[str, Any], path: Path) -> None:
    summary = summarise(data)
    counts = sorted({c for _, c in summary})
    machine = data["machine"]
    out = [
        "# The site engine's benchmark",
        "",
        f"Written by `python -m benchmarks engine` (plan `{data['plan']}`, {data['rounds']} "
        f"round(s) of {data['duration_s']:g} s windows; the run took {data.get('wall_s', 0):g} s) "
        f"on {machine['cpus']} CPUs, Python {machine['python']}, load average "
        f"{machine['loadavg_at_start']} at the start and {machine.get('loadavg_at_end', '?')} at "
        "the end (the machine is shared: other work runs beside it). Every figure is the median "
        "of the rounds; the rounds interleave the two servers at each count, so drift on the "
        "machine falls on both alike. Read the engine beside the forwarder, not as absolute "
        "capacity.",
        "",
        *(
            [
                "Measured in a later invocation than the rest (`--only`): "
                f"{', '.join(data['separate_runs'])}; compare it with the forwarder with that "
                "in mind.",
                "",
            ]
            if data.get("separate_runs")
            else []
        ),
        "## Goals",
        "",
        *goals(summary, counts),
        "",
        "## What runs",
        "",
        "- **forwarder** (the baseline): a plain `websockets` server on uvloop that forwards "
        "Avaturn's binary frames to OpenAI as `input_audio_buffer.append` (base64), decodes "
        "`response.output_audio.delta` into binary frames inside a segment per response, and "
        "answers a function call from a trivial async tool: the least any engine must do "
        "(`benchmarks/engine/forwarder.py`).",
        "- **engine**: the site engine as a site runs it: `SiteEngineConsumer` (Channels) under "
        "uvicorn (one process, uvloop, httptools, `websockets`), each socket authenticated "
        "against its row (token, secret, single use) before accept, OpenAI opened with the "
        "`openai` SDK, the `Bridge` between them, the `ToolRunner` running the benchmark's "
        "trivial async `bench_echo` tool (per-call checks, argument validation, a `ToolCall` "
        "row). SQLite database, in-memory channel layer, transcripts off.",
        "- **peer** (`peer.py`): a stand-in for OpenAI Realtime speaking enough of the GA "
        "protocol: responses back to back, each 50 audio deltas of 20 ms at 50 per second, "
        "every third response a function call instead. **clients** (`clients.py`): N Avaturn "
        "engine clients, each streaming 20 ms PCM16 24 kHz frames (960 bytes) at 50 per second "
        "and acknowledging segments. Both in their own processes.",
        "",
        "Latency is one way, per frame: each frame carries its sender's `time.monotonic_ns()` "
        "(CLOCK_MONOTONIC, one clock for every process on the machine); **up** is client → server "
        "→ peer, **down** peer → server → client, so both include two loopback hops and the "
        "load generators' own scheduling, alike for both servers. The tool's round trip is "
        "the peer's `response.function_call_arguments.done` sent → the `function_call_output` "
        "item received. CPU: user + system time of the server process (every thread) over the "
        "window, per conversation, in % of one core. Memory: the server's RSS in the window "
        "minus its RSS after a one-conversation warm-up, per conversation. Each measurement "
        "starts its server afresh.",
        "",
        "## Per count",
        "",
        "| Conversations | Server | Up p50 / p99 ms | Down p50 / p99 ms "
        "| Tool round trip p50 / p99 ms | CPU % of a core per conversation (whole process) "
        "| RSS MB per conversation (base) | Frames delivered in time up / down | Errors |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for count in counts:
        for server in data["servers"]:
            row = summary.get((server, count))
            if row is None:
                continue
            delivered = f"{_pct(row['up_delivered'])} / {_pct(row['down_delivered'])}"
            out.append(
                f"| {count} | {server} | {_fmt(row['up_p50'])} / {_fmt(row['up_p99'])} | "
                f"{_fmt(row['down_p50'])} / {_fmt(row['down_p99'])} | {_fmt(row['tool_p50'])} / "
                f"{_fmt(row['tool_p99'])} | {_fmt(row['cpu'])} ({_fmt(row['cpu_total'], 0)}) | "
                f"{_fmt(row['rss'], 3)} "
                f"({_fmt(row['rss_base'], 0)}) | {delivered} | {row['errors']} |"
            )
    out += [
        "",
        "## Against the forwarder",
        "",
        "| Conversations | Server | Up p99 difference ms | Down p99 difference ms "
        "| Tool p50 difference ms | CPU ratio | RSS per conversation difference MB |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    pairs = [(c, s) for c in counts for s in data["servers"] if s != "forwarder"]
    for count, server in pairs:
        e, b = summary.get((server, count)), summary.get(("forwarder", count))
        if not e or not b or e["up_p99"] is None or b["up_p99"] is None:
            continue

        def diff(name: str, e: dict[str, Any] = e, b: dict[str, Any] = b) -> str:
            if e[name] is None or b[name] is None:
                return "n/a"
            return f"{e[name] - b[name]:+.2f}"

        ratio = f"{e['cpu'] / b['cpu']:.2f}" if b["cpu"] else "n/a"
        out.append(
            f"| {count} | {server} | {diff('up_p99')} | {diff('down_p99')} | "
            f"{diff('tool_p50')} | {ratio} | {diff('rss')} |"
        )
    errors = [(k, r["error_samples"]) for k, r in sorted(summary.items()) if r["error_samples"]]
    if errors:
        out += ["", "## Errors", ""]
        out += [f"- {server} x{count}: {'; '.join(samples)}" for (server, count), samples in errors]
    out += [
        "",
        "## What is approximated",
        "",
        "- Everything is on loopback on one shared machine: the extra internet hop a real "
        "deployment adds (Avaturn → site → OpenAI instead of Avaturn → OpenAI) is not here, "
        "and the load generators compete with the server for the same cores.",
        "- The peer is not OpenAI: no voice activity detection, no barge-in, no transcripts, "
        "no `error` events; it answers at once and streams audio back to back, so the down "
        "direction is busier than a real conversation's (a model speaks part of the time).",
        "- The clients acknowledge segments but report no playback (`playback.started` / "
        "`.ended`), so the bridge's playback bookkeeping is not exercised.",
        "- No compression on any socket; Avaturn's and OpenAI's real sockets may negotiate it.",
        "- The engine's database is SQLite on the same disk; a session's end tries Avaturn's "
        "terminate against a closed port (after each window, outside the measurement).",
        "- The load generators are Python too: where the forwarder itself delivers frames late "
        "(its p99 far above a few milliseconds, at the highest counts), the peer and the "
        "clients have run out of CPU on this machine, and the server's figures there measure "
        "the harness as much as the server.",
        "- CPU of one server process; a real deployment with several workers divides the "
        "conversations among them.",
        "",
    ]
    path.write_text("\n".join(out))
