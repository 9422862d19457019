"""The former hand-written HTTP/1.1 server of the embedded runtime, kept as a benchmark baseline.

Do not serve anything with it: its parser accepted malformed lengths and folded headers, and it
had no connection cap (the runtime now serves :mod:`refluxo.local.asgi` with uvicorn). It was
the embedded runtime's front door, not a general web server: bodies must carry a
Content-Length (chunked uploads get 411), oversize bodies are refused with 413 before they are
read, and idle or slow connections are closed after a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from types import TracebackType

from refluxo.core.http import HttpApi, HttpRequest, HttpResponse

logger = logging.getLogger("refluxo.server")

_REASONS = {
    200: "OK",
    201: "Created",
    202: "Accepted",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    411: "Length Required",
    413: "Content Too Large",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
_MAX_HEADER_BYTES = 16 * 1024


class HandWrittenServer:
    """Serves ``api`` on ``host:port`` (port 0 picks a free one; see :attr:`port`).

    Use as ``async with HandWrittenServer(api) as server:`` or call :meth:`start` / :meth:`stop`.
    """

    def __init__(
        self, api: HttpApi, host: str = "127.0.0.1", port: int = 8000, *, timeout: float = 30.0
    ) -> None:
        self.api = api
        self.host = host
        self.port = port
        self.timeout = timeout
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        """The base URL clients use."""
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._serve, self.host, self.port, limit=_MAX_HEADER_BYTES
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._connections):
                task.cancel()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None

    async def serve_forever(self) -> None:
        if self._server is None:
            await self.start()
        assert self._server is not None
        await self._server.serve_forever()

    async def __aenter__(self) -> HandWrittenServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
        try:
            while True:
                try:
                    keep_alive = await asyncio.wait_for(self._one(reader, writer), self.timeout)
                except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
                    break
                if not keep_alive:
                    break
        except asyncio.CancelledError:
            pass
        finally:
            if task is not None:
                self._connections.discard(task)
            with contextlib.suppress(Exception):
                writer.close()

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            await self._write(writer, _error(431, "headers_too_large", "headers too large"), False)
            return False
        lines = head.decode("latin-1").split("\r\n")
        try:
            method, target, version = lines[0].split(" ", 2)
        except ValueError:
            await self._write(writer, _error(400, "bad_request", "malformed request line"), False)
            return False
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if not line:
                continue
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        keep_alive = version == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
        if "chunked" in headers.get("transfer-encoding", "").lower():
            await self._write(
                writer, _error(411, "length_required", "send a Content-Length"), False
            )
            return False
        try:
            length = int(headers.get("content-length", "0"))
        except ValueError:
            await self._write(writer, _error(400, "bad_request", "bad Content-Length"), False)
            return False
        if length < 0:
            await self._write(writer, _error(400, "bad_request", "bad Content-Length"), False)
            return False
        if length > self.api.max_body_bytes:
            await self._write(
                writer, HttpResponse.too_large(length, self.api.max_body_bytes), False
            )
            return False
        body = await reader.readexactly(length) if length else b""
        request = HttpRequest(method=method, path=target, body=body, headers=headers)
        response = await self.api.handle(request)
        await self._write(writer, response, keep_alive)
        return keep_alive

    @staticmethod
    async def _write(
        writer: asyncio.StreamWriter, response: HttpResponse, keep_alive: bool
    ) -> None:
        reason = _REASONS.get(response.status, "Status")
        head = [f"HTTP/1.1 {response.status} {reason}"]
        for name, value in response.headers.items():
            head.append(f"{name}: {value}")
        head.append(f"content-length: {len(response.body)}")
        head.append(f"connection: {'keep-alive' if keep_alive else 'close'}")
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + response.body)
        await writer.drain()


def _error(status: int, code: str, message: str) -> HttpResponse:
    return HttpResponse(status, json.dumps({"error": {"code": code, "message": message}}).encode())
