"""The embedded runtime: SQLite state, the durable local scheduler and the HTTP API together."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import Any

from refluxo.core import Dispatcher, DispatchMessage, Workflow
from refluxo.core.http import DEFAULT_MAX_BODY_BYTES, HttpApi

from .scheduler import SQLiteScheduler
from .server import LocalServer
from .store import SQLiteStateStore


class LocalRuntime:
    """Runs workflows on this machine: SQLite for state, uvicorn (the ``local`` extra) to serve.

    Runs live in SQLite at ``db_path``; the scheduler keeps due messages in the same file and a
    worker loop delivers them to the dispatcher, so stopping and starting again loses nothing.

    Use as ``async with LocalRuntime(workflows, db_path=...) as runtime:``; then
    ``await runtime.serve(port=...)`` to expose the HTTP API.
    """

    def __init__(
        self,
        workflows: Iterable[Workflow],
        *,
        db_path: str | Path,
        globals: Any = None,
        api_token: str | None = None,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        concurrency: int = 8,
    ) -> None:
        path = Path(db_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.store = SQLiteStateStore(path)
        self.scheduler = SQLiteScheduler(path)
        self.dispatcher = Dispatcher(workflows, self.store, self.scheduler, globals=globals)
        self.api = HttpApi(self.dispatcher, api_token=api_token, max_body_bytes=max_body_bytes)
        self.concurrency = concurrency
        self._stop = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self._servers: list[LocalServer] = []

    async def _deliver(self, message: DispatchMessage) -> None:
        await self.dispatcher.dispatch(message)

    async def __aenter__(self) -> LocalRuntime:
        self._stop.clear()
        self._worker = asyncio.create_task(
            self.scheduler.run(self._deliver, stop=self._stop, concurrency=self.concurrency)
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for server in self._servers:
            await server.stop()
        self._stop.set()
        if self._worker is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(self._worker, 10)
        for resource in (self.scheduler, self.store):
            close = getattr(resource, "close", None)
            if close is not None:
                close()

    async def serve(
        self,
        host: str = "127.0.0.1",
        port: int = 8000,
        *,
        allowed_hosts: Iterable[str] | None = None,
    ) -> LocalServer:
        """Start serving the HTTP API with uvicorn; returns the started server (``server.url``).

        ``allowed_hosts`` are the ``Host`` names answered (default: derived from ``host``); see
        :class:`~refluxo.local.server.LocalServer` for the limits.
        """
        server = LocalServer(self.api, host, port, allowed_hosts=allowed_hosts)
        await server.start()
        self._servers.append(server)
        return server
