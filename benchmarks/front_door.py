"""Section 6, the local front door: requests per second and p99 of uvicorn serving the ASGI app,
beside the former hand-written server (``benchmarks/handwritten_server.py``), in one run.

Each server runs in a process of its own, serving the same :class:`HttpApi` over the memory
adapters with one run in it; this process is the client: ``CONNECTIONS`` keep-alive
connections, each sending ``GET /runs/{id}`` (a snapshot read) one after the other for a fixed
number of requests. The servers take turns (hand-written, uvicorn, hand-written, ...), so load
on the machine shifts both alike; figures are medians over the turns.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from .common import Config, Figure, SectionResult, fmt_num, fmt_us, median, now, spread

SECTION = "frontdoor"
TITLE = "6. Local front door (uvicorn + ASGI app against the former hand-written server)"
CONNECTIONS = 8
GOAL = 0.9  # requests/s at least 90% of the former server's
SERVERS = ("handwritten", "asgi", "bare")
"""``bare``: uvicorn, configured as ours, serving an ASGI app that answers a constant: the
server's own share of the cost."""


def _serve(kind: str) -> None:
    """Run one server until stdin closes (the benchmark's child process)."""
    from refluxo.core import MemoryScheduler, MemoryStateStore, RunService
    from refluxo.core.http import HttpApi
    from refluxo.demo import workflows

    async def main() -> None:
        api = HttpApi(RunService(workflows(), MemoryStateStore(), MemoryScheduler()))
        await api.dispatcher.start("demo", run_id="bench-1", input={"customer": "Ada"})
        if kind in ("asgi", "bare"):
            from refluxo.local.server import LocalServer

            server: object = LocalServer(api, port=0, max_connections=1000)
            if kind == "bare":
                server.app = _constant_app  # type: ignore[attr-defined]
        else:
            from benchmarks.handwritten_server import HandWrittenServer

            server = HandWrittenServer(api, port=0)
        await server.start()  # type: ignore[attr-defined]
        print(server.port, flush=True)  # type: ignore[attr-defined]
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, sys.stdin.read)
        await server.stop()  # type: ignore[attr-defined]

    asyncio.run(main())


async def _constant_app(scope: Any, receive: Any, send: Any) -> None:
    body = b'{"workflowId":"bench-1"}'
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _client(port: int, requests: int, latencies: list[float]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    raw = b"GET /runs/bench-1 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    try:
        for _ in range(requests):
            start = now()
            writer.write(raw)
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            body = await reader.readexactly(length)
            latencies.append(now() - start)
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"unexpected answer: {head[:60]!r} {body[:200]!r}")
    finally:
        writer.close()


async def _load(port: int, requests: int) -> tuple[float, list[float]]:
    """Requests per second and every latency, over ``CONNECTIONS`` concurrent connections."""
    latencies: list[float] = []
    per_connection = max(1, requests // CONNECTIONS)
    start = now()
    await asyncio.gather(*(_client(port, per_connection, latencies) for _ in range(CONNECTIONS)))
    elapsed = now() - start
    return len(latencies) / elapsed, latencies


def _p99(latencies: list[float]) -> float:
    ordered = sorted(latencies)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def _start(kind: str) -> tuple[subprocess.Popen[str], int]:
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.front_door", "--serve", kind],
        cwd=root,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.strip().isdigit():
        proc.kill()
        proc.wait()
        proc.stdout.close()
        raise RuntimeError(f"the {kind} server did not start: {line!r}")
    return proc, int(line)


def _stop(proc: subprocess.Popen[str]) -> None:
    assert proc.stdin is not None
    proc.stdin.close()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


def run(cfg: Config) -> SectionResult:
    result = SectionResult(SECTION, TITLE)
    requests = cfg.pick(4000, 1600, 80)
    turns = cfg.pick(cfg.repeats, 3, 1)
    cmd = cfg.command_for(SECTION)
    started = {kind: _start(kind) for kind in SERVERS}
    rps: dict[str, list[float]] = {kind: [] for kind in SERVERS}
    p99: dict[str, list[float]] = {kind: [] for kind in SERVERS}
    try:
        for kind in SERVERS:  # warm-up: imports, first-request caches
            asyncio.run(_load(started[kind][1], CONNECTIONS * 5))
        for _ in range(turns):
            for kind in SERVERS:
                rate, latencies = asyncio.run(_load(started[kind][1], requests))
                rps[kind].append(rate)
                p99[kind].append(_p99(latencies))
    finally:
        for proc, _ in started.values():
            _stop(proc)
    old_rps, new_rps = median(rps["handwritten"]), median(rps["asgi"])
    old_p99, new_p99 = median(p99["handwritten"]), median(p99["asgi"])
    bare_rps, bare_p99 = median(rps["bare"]), median(p99["bare"])
    ratio = new_rps / old_rps if old_rps else 0.0
    result.figures += [
        Figure(
            id="frontdoor.asgi.requests_per_s",
            name=f"Front door: uvicorn + ASGI app, GET /runs/{{id}}, {CONNECTIONS} connections",
            value=round(new_rps, 1),
            unit="req/s",
            display=f"{fmt_num(new_rps)} req/s, p99 {fmt_us(new_p99)}",
            command=cmd,
            details={"rps": spread(rps["asgi"]), "p99_s": spread(p99["asgi"])},
        ),
        Figure(
            id="frontdoor.handwritten.requests_per_s",
            name=f"Front door: former hand-written server, same requests, {CONNECTIONS} "
            "connections",
            value=round(old_rps, 1),
            unit="req/s",
            display=f"{fmt_num(old_rps)} req/s, p99 {fmt_us(old_p99)}",
            command=cmd,
            details={"rps": spread(rps["handwritten"]), "p99_s": spread(p99["handwritten"])},
        ),
        Figure(
            id="frontdoor.bare_uvicorn.requests_per_s",
            name="Front door: uvicorn, same settings, serving a constant (no refluxo code)",
            value=round(bare_rps, 1),
            unit="req/s",
            display=f"{fmt_num(bare_rps)} req/s, p99 {fmt_us(bare_p99)}",
            command=cmd,
            details={"rps": spread(rps["bare"]), "p99_s": spread(p99["bare"])},
        ),
        Figure(
            id="frontdoor.asgi_over_handwritten.requests_per_s",
            name="Front door: requests/s of uvicorn + ASGI / the former server's",
            value=round(ratio, 3),
            unit="x",
            display=f"{ratio:.2f}x ({fmt_num(old_rps)} -> {fmt_num(new_rps)} req/s)",
            command=cmd,
            goal=f">= {GOAL}",
            passed=ratio >= GOAL,
            details={"near": old_rps, "far": new_rps},
        ),
        Figure(
            id="frontdoor.asgi_over_handwritten.p99",
            name="Front door: p99 latency of uvicorn + ASGI / the former server's",
            value=round(new_p99 / old_p99, 3) if old_p99 else 0.0,
            unit="x",
            display=f"{new_p99 / old_p99 if old_p99 else 0:.2f}x ({fmt_us(old_p99)} -> "
            f"{fmt_us(new_p99)})",
            command=cmd,
            details={"near": old_p99, "far": new_p99},
        ),
    ]
    result.notes.append(
        f"Each server in its own process, the same HttpApi over the memory adapters; {turns} "
        f"turns of {requests} requests over {CONNECTIONS} keep-alive connections, the servers "
        "alternating; medians over the turns. The client shares the machine with the server, "
        "so absolute figures are a floor; the ratio is what compares."
    )
    per = {kind: 1e6 / median(rps[kind]) if median(rps[kind]) else 0.0 for kind in SERVERS}
    verdict = "is not met" if ratio < GOAL else "is met"
    result.notes.append(
        f"The goal (>= {GOAL}x the former server's requests/s) {verdict}. Per request (1 / "
        f"req/s; each server is one process on one event loop): the former server "
        f"{per['handwritten']:.0f} us in all, API included; uvicorn serving a constant "
        f"{per['bare']:.0f} us; uvicorn with the ASGI app and the API {per['asgi']:.0f} us, so "
        f"the app and the API add {per['asgi'] - per['bare']:.0f} us to uvicorn's own work. "
        f"The goal needs {per['handwritten'] / GOAL:.0f} us. The former server did less: no "
        "strict parsing, no connection cap, no idle timers, no Host or content-type checks. "
        "The local server is for development and for embedding; a Cloud Function or a Worker "
        "does not use it."
    )
    result.notes.append(
        "What uvicorn adds per request and the former server lacked: h11's strict parsing "
        "(one Content-Length, digits only, no folded headers), the Host and content-type "
        "checks of the ASGI app, the connection cap and the timers that close idle "
        "connections. The former server is kept in benchmarks/ only for this comparison."
    )
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--serve", choices=SERVERS, required=True)
    _serve(parser.parse_args().serve)
