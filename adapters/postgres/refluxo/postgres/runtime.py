"""The PostgreSQL runtime: state and schedule in one database, worker loops on any machine."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Any

from refluxo.core import DispatchMessage, RunService, Workflow
from refluxo.core.http import DEFAULT_MAX_BODY_BYTES, HttpApi

from . import open_pool
from .scheduler import DEFAULT_LEASE_MS, PostgresScheduler
from .store import PostgresStateStore

if TYPE_CHECKING:
    from psycopg_pool import AsyncConnectionPool

    from refluxo.local.server import LocalServer

logger = logging.getLogger(__name__)

SHUTDOWN_GRACE_S = 10.0
"""How long stopping waits for the steps in flight before it cancels them."""


class PostgresRuntime:
    """One worker process on a PostgreSQL database: ``async with PostgresRuntime(...) as rt``.

    It delivers due steps, ``concurrency`` at a time, alongside every other worker on the
    same database (on this machine or others): each message is leased to one worker; a
    worker that dies (``kill -9``, a lost machine) stops renewing its leases, and another
    takes its messages over after ``lease_ms``. Every ``reconcile_every_s`` seconds it
    schedules again runs due for longer than ``reconcile_grace_ms`` without a step (their
    message was dead-lettered). ``await rt.serve(...)`` also serves the HTTP API (uvicorn,
    the ``local`` extra).

    Args:
        workflows: the workflows hosted; every worker on the database should host the same.
        url: the database (``postgresql://user@host:port/dbname``).
        concurrency: steps this process runs at once.
        lease_ms: see :class:`PostgresScheduler`.
    """

    def __init__(
        self,
        workflows: Iterable[Workflow],
        *,
        url: str,
        globals: Any = None,
        api_token: str | None = None,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        concurrency: int = 8,
        reconcile_every_s: float | None = 60.0,
        reconcile_grace_ms: int = 300_000,
        lease_ms: int = DEFAULT_LEASE_MS,
    ) -> None:
        self.workflows = list(workflows)
        self.url = url
        self.globals = globals
        self.api_token = api_token
        self.max_body_bytes = max_body_bytes
        self.concurrency = concurrency
        self.reconcile_every_s = reconcile_every_s
        self.reconcile_grace_ms = reconcile_grace_ms
        self.lease_ms = lease_ms
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []
        self._servers: list[LocalServer] = []

    async def __aenter__(self) -> PostgresRuntime:
        # One connection listens; the steps in flight and the API share the others. They are
        # opened now, so that the first steps do not wait for connections.
        size = self.concurrency + 4
        self.pool: AsyncConnectionPool[Any] = await open_pool(
            self.url, min_size=size, max_size=size
        )
        self.store = PostgresStateStore(self.pool)
        self.scheduler = PostgresScheduler(self.pool, lease_ms=self.lease_ms)
        await self.store.ensure_schema()
        await self.scheduler.create_schema()
        self.dispatcher = RunService(
            self.workflows, self.store, self.scheduler, globals=self.globals
        )
        self.api = HttpApi(
            self.dispatcher, api_token=self.api_token, max_body_bytes=self.max_body_bytes
        )
        self._stop.clear()
        self._tasks = [
            asyncio.create_task(
                self.scheduler.run(self._deliver, stop=self._stop, concurrency=self.concurrency)
            )
        ]
        if self.reconcile_every_s is not None:
            self._tasks.append(asyncio.create_task(self._reconcile(self.reconcile_every_s)))
        return self

    async def _deliver(self, message: DispatchMessage) -> None:
        await self.dispatcher.dispatch(message)

    async def _reconcile(self, every_s: float) -> None:
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stop.wait(), every_s)
                return
            try:
                await self.dispatcher.reconcile(grace_ms=self.reconcile_grace_ms)
            except Exception:  # the next round tries again
                logger.exception("reconcile failed")

    async def serve(
        self, host: str = "127.0.0.1", port: int = 8000, *, dashboard: bool = False, **kwargs: Any
    ) -> LocalServer:
        """Serve the HTTP API with uvicorn; returns the started server (``server.url``). With
        ``dashboard`` the dashboard is served too, at ``/ui/`` (see
        :mod:`refluxo.local.dashboard`)."""
        from refluxo.local.server import LocalServer

        if dashboard:
            from refluxo.local.dashboard import beside_the_api

            kwargs["wrap"] = beside_the_api(self.api, self.api_token)
        server = LocalServer(self.api, host, port, **kwargs)
        await server.start()
        self._servers.append(server)
        return server

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for server in self._servers:
            await server.stop()
        self._stop.set()
        try:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(asyncio.gather(*self._tasks), SHUTDOWN_GRACE_S)
        except TimeoutError:
            # wait_for cancelled the loop: its steps were stopped and their messages released.
            logger.warning(
                "steps still running %g s after the stop were cancelled", SHUTDOWN_GRACE_S
            )
        await self.pool.close()
