"""The embedded runtime: SQLite state, the durable local scheduler and the HTTP API together."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import Any

from refluxo.core import Dispatcher, DispatchMessage, Workflow
from refluxo.core.http import DEFAULT_MAX_BODY_BYTES, HttpApi

from .scheduler import SQLiteScheduler
from .server import LocalServer
from .store import SQLiteStateStore

logger = logging.getLogger("refluxo.local")


class LocalRuntime:
    """Runs workflows on this machine with nothing else installed.

    Runs live in SQLite at ``db_path``; the scheduler keeps due messages in the same file and a
    worker loop delivers them to the dispatcher, so stopping and starting again loses nothing.

    Use as ``async with LocalRuntime(workflows, db_path=...) as runtime:``; then
    ``await runtime.serve(port=...)`` to expose the HTTP API.

    Every ``reconcile_every_s`` seconds (None: never) it schedules again the runs that have
    been due for longer than ``reconcile_grace_ms`` without a step: runs whose message was
    dead-lettered after its attempts, or lost with the file of another process.
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
        reconcile_every_s: float | None = 60.0,
        reconcile_grace_ms: int = 300_000,
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
        self.reconcile_every_s = reconcile_every_s
        self.reconcile_grace_ms = reconcile_grace_ms
        self._reconciler: asyncio.Task[None] | None = None
        self._servers: list[LocalServer] = []

    async def _deliver(self, message: DispatchMessage) -> None:
        await self.dispatcher.dispatch(message)

    async def _reconcile_periodically(self, every_s: float) -> None:
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stop.wait(), every_s)
                return
            try:
                await self.dispatcher.reconcile(grace_ms=self.reconcile_grace_ms)
            except Exception:  # the next round tries again
                logger.exception("reconcile failed")

    async def __aenter__(self) -> LocalRuntime:
        self._stop.clear()
        self._worker = asyncio.create_task(
            self.scheduler.run(self._deliver, stop=self._stop, concurrency=self.concurrency)
        )
        if self.reconcile_every_s is not None:
            self._reconciler = asyncio.create_task(
                self._reconcile_periodically(self.reconcile_every_s)
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
        if self._reconciler is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(self._reconciler, 10)
        if self._worker is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(self._worker, 10)
        for resource in (self.scheduler, self.store):
            close = getattr(resource, "close", None)
            if close is not None:
                close()

    async def serve(self, host: str = "127.0.0.1", port: int = 8000) -> LocalServer:
        """Start serving the HTTP API; returns the started server (``server.url``)."""
        server = LocalServer(self.api, host, port)
        await server.start()
        self._servers.append(server)
        return server
