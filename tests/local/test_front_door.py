"""The embedded runtime's front door: uvicorn serving the ASGI app, with its limits, over sockets.

Each test speaks raw HTTP/1.1 where a client library would tidy the request up.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from refluxo.core import RunNotFound
from refluxo.core.http import HttpApi, HttpRequest
from refluxo.local.asgi import AsgiApp, hosts_for
from refluxo.local.runtime import LocalRuntime
from refluxo.local.server import LocalServer
from refluxo.testing.workflows import workflows


@pytest.fixture
async def runtime(tmp_path: Path) -> AsyncIterator[LocalRuntime]:
    async with LocalRuntime(workflows(), db_path=tmp_path / "door.db", max_body_bytes=4096) as rt:
        yield rt


@pytest.fixture
async def port(runtime: LocalRuntime) -> int:
    return (await runtime.serve(port=0)).port


def exchange(port: int, raw: bytes, timeout: float = 10) -> bytes:
    """Send ``raw`` and read until the server closes or a full JSON answer arrived."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(raw)
        received = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return received
            received += chunk
            head, sep, body = received.partition(b"\r\n\r\n")
            length = next(
                (
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                ),
                None,
            )
            if sep and length is not None and len(body) >= length:
                return received


async def exists(runtime: LocalRuntime, run_id: str) -> bool:
    try:
        await runtime.store.load(run_id)
    except RunNotFound:
        return False
    return True


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def post(path: str, body: bytes, *headers: str, host: str = "127.0.0.1") -> bytes:
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}", *headers]
    if not any(h.lower().startswith("content-length") for h in headers):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


JSON = "Content-Type: application/json"


# --- item 9: a real HTTP parser -------------------------------------------------------------


@pytest.mark.parametrize(
    "length_headers",
    [
        ["Content-Length: 1_1"],
        ["Content-Length: +11"],
        ["Content-Length: 2", "Content-Length: 11"],
        ["Content-Length: -1"],
    ],
)
async def test_malformed_content_lengths_are_refused_and_start_nothing(
    port: int, runtime: LocalRuntime, length_headers: list[str]
) -> None:
    body = b'{"id":"c1"}'  # 11 bytes: a lax parser reads all of it and starts the run
    raw = post("/workflows/demo/runs", body, JSON, *length_headers)
    answer = await asyncio.to_thread(exchange, port, raw)
    assert status_of(answer) == 400
    assert await exists(runtime, "c1") is False


async def test_an_obs_fold_line_is_not_read_as_a_header(runtime: LocalRuntime) -> None:
    # A folded continuation line that reads "Authorization: ..." is part of X-A's value.
    guarded = HttpApi(runtime.dispatcher, api_token="t0ken")
    async with LocalServer(guarded, port=0) as server:
        raw = (
            b"GET /runs/x HTTP/1.1\r\nHost: 127.0.0.1\r\nX-A: 1\r\n"
            b" Authorization: Bearer t0ken\r\n\r\n"
        )
        answer = await asyncio.to_thread(exchange, server.port, raw)
        assert status_of(answer) in (400, 401)


async def test_headers_over_the_limit_are_refused(port: int) -> None:
    raw = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n"
    answer = await asyncio.to_thread(exchange, port, raw)
    assert status_of(answer) in (400, 431)


async def test_a_head_that_never_ends_is_cut_off_at_the_limit(port: int) -> None:
    def send() -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            try:
                for _ in range(64):  # 1 MiB of one header line, never finished
                    s.sendall(b"X-Big: " + b"a" * 16_000 + b"\r\n")
            except OSError:  # closed by the server: what is expected
                pass
            received = b""
            try:
                while chunk := s.recv(65536):
                    received += chunk
            except ConnectionResetError:  # closed with our bytes unread: the 431 may be lost
                return received or b"reset"
            return received

    answer = await asyncio.to_thread(send)
    # Refused: a 431, or the connection closed before the megabyte was taken in.
    assert answer == b"reset" or status_of(answer) == 431
    raw = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    assert status_of(await asyncio.to_thread(exchange, port, raw)) == 200


async def test_a_declared_body_over_the_limit_is_refused_before_it_is_read(port: int) -> None:
    raw = post("/workflows/demo/runs", b"", JSON, "Content-Length: 50000000")
    answer = await asyncio.to_thread(exchange, port, raw)
    assert status_of(answer) == 413
    assert b"payload_too_large" in answer


async def test_connections_beyond_the_cap_are_answered_503_not_left_hanging(
    runtime: LocalRuntime,
) -> None:
    async with LocalServer(runtime.api, port=0, max_connections=4) as server:
        idle = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(8)]
        try:
            raw = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
            answer = await asyncio.to_thread(exchange, server.port, raw)
            assert status_of(answer) == 503
        finally:
            for s in idle:
                s.close()


async def test_a_connection_that_never_sends_a_request_is_closed(runtime: LocalRuntime) -> None:
    async with LocalServer(runtime.api, port=0, timeout=1) as server:

        def wait_closed() -> bytes:
            with socket.create_connection(("127.0.0.1", server.port), timeout=15) as s:
                return s.recv(1)  # b"" once the server closes it; a timeout raises

        assert await asyncio.to_thread(wait_closed) == b""


async def test_stop_lets_a_request_in_flight_finish(runtime: LocalRuntime) -> None:
    entered, release = asyncio.Event(), asyncio.Event()

    async def slow_auth(request: HttpRequest) -> bool:
        entered.set()
        await release.wait()
        return True

    api = HttpApi(runtime.dispatcher, dispatch_auth=slow_auth)
    server = LocalServer(api, port=0)
    await server.start()
    raw = post("/_dispatch", b'{"runId": "ghost", "version": 0}', JSON)
    answer = asyncio.ensure_future(asyncio.to_thread(exchange, server.port, raw))
    await asyncio.wait_for(entered.wait(), 10)
    stopping = asyncio.ensure_future(server.stop())
    await asyncio.sleep(0)
    release.set()
    await stopping
    got = await answer
    assert status_of(got) == 200 and b"unknown_run" in got


# --- item 7: the local dev server and the browser -------------------------------------------


async def test_a_foreign_host_reads_nothing(port: int, runtime: LocalRuntime) -> None:
    await runtime.dispatcher.start("demo", run_id="secret-run")
    raw = b"GET /runs/secret-run HTTP/1.1\r\nHost: attacker.example:8000\r\n\r\n"
    answer = await asyncio.to_thread(exchange, port, raw)
    assert status_of(answer) == 400 and b"host_not_allowed" in answer
    assert b"secret-run" not in answer.split(b"\r\n\r\n", 1)[1].replace(b"Host", b"")


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "LOCALHOST:9", "[::1]:8000"])
async def test_the_loopback_names_are_answered(port: int, host: str) -> None:
    raw = f"GET /healthz HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
    assert status_of(await asyncio.to_thread(exchange, port, raw)) == 200


@pytest.mark.parametrize(
    "content_type",
    [
        "Content-Type: text/plain",
        "Content-Type: application/x-www-form-urlencoded",
        "Content-Type: multipart/form-data; boundary=x",
        None,
    ],
)
async def test_a_cross_site_simple_post_starts_no_run(
    port: int, runtime: LocalRuntime, content_type: str | None
) -> None:
    headers = [content_type] if content_type else []
    raw = post("/workflows/demo/runs", b'{"id": "csrf-1"}', *headers)
    answer = await asyncio.to_thread(exchange, port, raw)
    assert status_of(answer) == 415 and b"unsupported_media_type" in answer
    assert await exists(runtime, "csrf-1") is False


async def test_json_media_types_with_parameters_are_accepted(port: int) -> None:
    raw = post("/workflows/demo/runs", b"{}", "Content-Type: application/json; charset=utf-8")
    assert status_of(await asyncio.to_thread(exchange, port, raw)) == 201


async def test_allowed_hosts_replace_the_derived_ones(runtime: LocalRuntime) -> None:
    async with LocalServer(runtime.api, port=0, allowed_hosts=["refluxo.test"]) as server:
        named = b"GET /healthz HTTP/1.1\r\nHost: refluxo.test:8000\r\n\r\n"
        loopback = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        assert status_of(await asyncio.to_thread(exchange, server.port, named)) == 200
        assert status_of(await asyncio.to_thread(exchange, server.port, loopback)) == 400


def test_hosts_for_the_listening_address() -> None:
    assert hosts_for("127.0.0.1") == {"127.0.0.1", "localhost", "::1", "[::1]"}
    assert hosts_for("192.168.1.5") == {"192.168.1.5"}
    assert hosts_for("0.0.0.0") is None


# --- item 10 through the server --------------------------------------------------------------


async def test_a_non_ascii_bearer_token_is_401_through_the_server(runtime: LocalRuntime) -> None:
    guarded = HttpApi(runtime.dispatcher, api_token="t0ken")
    async with LocalServer(guarded, port=0) as server:
        raw = "GET /runs/x HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer t\u00f6k\r\n\r\n"
        answer = await asyncio.to_thread(exchange, server.port, raw.encode("utf-8"))
        assert status_of(answer) == 401


async def test_deep_json_is_400_through_the_server(port: int) -> None:
    body = b'{"input": ' + b"[" * 1500 + b"]" * 1500 + b"}"
    answer = await asyncio.to_thread(exchange, port, post("/workflows/demo/runs", body, JSON))
    assert status_of(answer) == 400


# --- mounting the ASGI app in a Starlette service ---------------------------------------------


async def test_the_asgi_app_mounts_in_starlette(runtime: LocalRuntime) -> None:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.routing import Mount

    service = Starlette(routes=[Mount("/refluxo", app=AsgiApp(runtime.api))])
    config = uvicorn.Config(service, host="127.0.0.1", port=0, log_level="warning")
    server = uvicorn.Server(config)
    config.load()
    server.lifespan = config.lifespan_class(config)
    await server.startup()
    try:
        port = server.servers[0].sockets[0].getsockname()[1]
        started = await asyncio.to_thread(
            exchange, port, post("/refluxo/workflows/demo/runs", b'{"id": "mounted-1"}', JSON)
        )
        read = await asyncio.to_thread(
            exchange, port, b"GET /refluxo/runs/mounted-1 HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        plain = await asyncio.to_thread(
            exchange, port, post("/refluxo/workflows/demo/runs", b"{}", "Content-Type: text/plain")
        )
    finally:
        await server.shutdown()
    assert status_of(started) == 201
    assert status_of(read) == 200 and b'"workflowId":"mounted-1"' in read
    assert status_of(plain) == 415
