"""The embedded runtime's front door: :class:`~refluxo.local.asgi.AsgiApp` served by uvicorn.

uvicorn (the ``local`` extra: ``pip install 'refluxo[local]'``) parses HTTP/1.1 with httptools
(llhttp, Node's parser; h11 when httptools is missing), which refuses malformed lengths,
conflicting ``Content-Length`` headers and bad header lines. The limits, each an argument of
:class:`LocalServer`:

=========================  =======  ========================================================
``max_connections``        100      open connections and requests in flight; beyond it new
                                    requests are answered 503 at once
``max_header_bytes``       16384    the headers; beyond it the answer is 431, and a head
                                    still unfinished past it (plus one read) is cut off
body                       262144   ``HttpApi.max_body_bytes``, enforced while reading
``keep_alive_seconds``     5        an idle connection (also one that never sends a byte)
                                    is closed after this
``graceful_seconds``       10       on stop (SIGTERM in ``refluxo dev``), requests in
                                    flight get this long to finish, then are cancelled
``allowed_hosts``          derived  the ``Host`` names answered; by default the listening
                                    address and, on loopback, ``localhost``, ``127.0.0.1``
                                    and ``[::1]`` (see :func:`~refluxo.local.asgi.hosts_for`)
=========================  =======  ========================================================
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any

from refluxo.core.http import HttpApi

from .asgi import AsgiApp, hosts_for

logger = logging.getLogger("refluxo.server")


def _uvicorn() -> Any:
    try:
        return importlib.import_module("uvicorn")
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise ImportError(
            "serving the HTTP API needs uvicorn: pip install 'refluxo[local]'"
        ) from exc


class LocalServer:
    """Serves ``api`` on ``host:port`` with uvicorn (port 0 picks a free one; see :attr:`port`).

    Use as ``async with LocalServer(api) as server:`` or call :meth:`start` / :meth:`stop`.
    Signals are left to the caller (``refluxo dev`` stops the server on SIGTERM and SIGINT).

    Args:
        api: the API to serve.
        host: the address to listen on.
        port: the port (0: any free one).
        timeout: how long an idle connection is kept open, in seconds.
        max_connections: connections and requests in flight before new ones get 503.
        max_header_bytes: the largest request line plus headers.
        graceful_seconds: how long :meth:`stop` lets requests in flight finish.
        allowed_hosts: the ``Host`` names answered (default: derived from ``host``; None
            would answer any, which a server on ``0.0.0.0`` does unless given names).
        wrap: builds the ASGI application served from the API's own (for example
            :func:`refluxo.local.dashboard.mount`, which adds the dashboard at ``/ui``).
    """

    def __init__(
        self,
        api: HttpApi,
        host: str = "127.0.0.1",
        port: int = 8000,
        *,
        timeout: float = 5.0,
        max_connections: int = 100,
        max_header_bytes: int = 16 * 1024,
        graceful_seconds: float = 10.0,
        allowed_hosts: Iterable[str] | None = None,
        wrap: Callable[[AsgiApp], Any] | None = None,
    ) -> None:
        self.api = api
        self.host = host
        self.port = port
        self.timeout = timeout
        self.max_connections = max_connections
        self.max_header_bytes = max_header_bytes
        self.graceful_seconds = graceful_seconds
        hosts = frozenset(allowed_hosts) if allowed_hosts is not None else hosts_for(host)
        self.allowed_hosts = hosts
        self.app = AsgiApp(api, allowed_hosts=hosts, max_header_bytes=max_header_bytes)
        self.asgi: Any = wrap(self.app) if wrap is not None else self.app
        self._server: Any = None
        self._loop_task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        """The base URL clients use."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def _config(self) -> Any:
        uvicorn = _uvicorn()
        return uvicorn.Config(
            self.asgi,
            host=self.host,
            port=self.port,
            http=_protocol(self.max_header_bytes),
            lifespan="off",
            log_level="warning",
            access_log=False,
            server_header=False,
            limit_concurrency=self.max_connections,
            h11_max_incomplete_event_size=self.max_header_bytes,
            timeout_keep_alive=max(1, round(self.timeout)),
            timeout_graceful_shutdown=max(1, round(self.graceful_seconds)),
        )

    async def start(self) -> None:
        """Bind and start answering; returns once the socket listens.

        Raises:
            OSError: the address cannot be bound.
        """
        uvicorn = _uvicorn()
        config = self._config()
        config.load()
        server = uvicorn.Server(config)
        server.lifespan = config.lifespan_class(config)
        try:
            await server.startup()
        except SystemExit:  # uvicorn's way to say the bind failed (it logged why)
            raise OSError(f"cannot listen on {self.host}:{self.port}") from None
        self._server = server
        self.port = server.servers[0].sockets[0].getsockname()[1]
        self._loop_task = asyncio.create_task(server.main_loop())

    async def stop(self) -> None:
        """Stop accepting, let requests in flight finish (``graceful_seconds``), close."""
        server, self._server = self._server, None
        if server is None:
            return
        server.should_exit = True
        if self._loop_task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
            self._loop_task = None
        await server.shutdown()

    async def serve_forever(self) -> None:
        """Serve until cancelled."""
        if self._server is None:
            await self.start()
        try:
            await asyncio.Event().wait()
        finally:
            await self.stop()

    async def __aenter__(self) -> LocalServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


_HEAD_TOO_LARGE_BODY = (
    b'{"error":{"code":"headers_too_large","message":"the headers are too large"}}'
)
_HEAD_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
    b"connection: close\r\ncontent-length: %d\r\n\r\n%s"
    % (len(_HEAD_TOO_LARGE_BODY), _HEAD_TOO_LARGE_BODY)
)


def _protocol(max_header_bytes: int) -> type[Any]:
    """uvicorn's httptools protocol (llhttp), or its h11 one when httptools is missing, with
    two additions: a connection that never sends a request is closed after the keep-alive
    timeout, and a request head still unfinished past ``max_header_bytes`` (plus one read) is
    answered 431 and closed, where llhttp alone would buffer it without end."""
    base: type[Any]
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

        base = HttpToolsProtocol
    except ImportError:  # pragma: no cover - httptools is in the 'local' extra
        from uvicorn.protocols.http.h11_impl import H11Protocol

        base = H11Protocol

    class Protocol(base):  # type: ignore[misc]
        _in_head = True
        _head_bytes = 0

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self.timeout_keep_alive_task = self.loop.call_later(
                self.timeout_keep_alive, self.timeout_keep_alive_handler
            )

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._in_head, self._head_bytes = True, 0

        def on_headers_complete(self) -> None:
            self._in_head = False
            super().on_headers_complete()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self._in_head and not self.transport.is_closing():
                self._head_bytes += len(data)
                if self._head_bytes > max_header_bytes:
                    self.transport.write(_HEAD_TOO_LARGE)
                    self.transport.close()

    return Protocol
