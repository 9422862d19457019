"""The embedded runtime: SQLite state, the durable local scheduler and the HTTP API together."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from types import TracebackType
from typing import Any

from refluxo.core import DispatchMessage, RunService, Snapshot, Workflow
from refluxo.core.http import DEFAULT_MAX_BODY_BYTES
from refluxo.core.model import now_ms
from refluxo.core.ports import StateStore
from refluxo.core.settings import Settings, build_api

from ._sqlite import sqlite_clock
from .scheduler import DEFAULT_LEASE_MS, SQLiteScheduler
from .server import LocalServer
from .store import SQLiteStateStore
from .ticks import SQLiteScheduleMarks

logger = logging.getLogger(__name__)

SHUTDOWN_GRACE_S = 10.0
"""How long stopping waits for the steps in flight before it cancels them."""


class _CancellingDispatcher(RunService):
    """A dispatcher whose :meth:`cancel` also stops the run's step in flight in this process."""

    def __init__(self, *args: Any, stop_run: Callable[[str], None], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._stop_run = stop_run

    async def cancel(self, run_id: str, reason: str | None = None) -> Snapshot:
        cancelled = await super().cancel(run_id, reason)
        self._stop_run(run_id)
        return cancelled


class LocalRuntime:
    """Runs workflows on this machine: SQLite for state, uvicorn (the ``local`` extra) to serve.

    Runs live in SQLite at ``db_path``; the scheduler keeps due messages in the same file and a
    worker loop delivers them to the dispatcher, so stopping and starting again loses nothing.
    Due times, leases and the steps of workflows built with the default clock read SQLite's
    clock, so that every process on the file judges them by one clock.

    Use as ``async with LocalRuntime(workflows, db_path=...) as runtime:``; then
    ``await runtime.serve(port=...)`` to expose the HTTP API.

    Every ``reconcile_every_s`` seconds (None: never) it schedules again the runs that have
    been due for longer than ``reconcile_grace_ms`` without a step: runs whose message was
    dead-lettered after its attempts, or lost with the file of another process.

    Cancelling a run stops its step in flight in this process (the step's task is cancelled:
    an async executor gets ``CancelledError``; a plain one's thread runs on, its result is
    dropped) and frees its slot. A step running in another process on the same file runs to
    its end or its timeout, and its result is dropped.

    Every ``schedule_every_s`` seconds it starts the runs of the schedules' ticks that came
    (see :meth:`~refluxo.core.dispatcher.Dispatcher.fire_due`). Up to when each schedule's
    ticks were started is kept in the same file, so the ticks missed while the runtime was
    down are started when it comes back (unless a schedule says ``catch_up=False``); a tick's
    run starts once, whichever process on the file sees it first.

    Args:
        concurrency: steps that run at once.
        lease_ms: how long a step's message stays leased to this process without a renewal
            before another process takes it over (see :class:`SQLiteScheduler`).
        store: a state store to use instead of the SQLite store on ``db_path``.
        scheduler: a scheduler to use instead of the one on ``db_path`` (its ``lease_ms``
            then applies).
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
        lease_ms: int = DEFAULT_LEASE_MS,
        store: StateStore | None = None,
        scheduler: SQLiteScheduler | None = None,
        schedule_every_s: float = 1.0,
    ) -> None:
        path = Path(db_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        hosted = list(workflows)
        for workflow in hosted:
            # One clock for every process on the file: SQLite's, not this process's Python.
            if workflow.engine.clock is now_ms:
                workflow.engine.clock = sqlite_clock
        self.store: StateStore = store or SQLiteStateStore(path, clock=sqlite_clock)
        self.scheduler = scheduler or SQLiteScheduler(path, lease_ms=lease_ms, clock=sqlite_clock)
        settings = Settings(globals=globals, api_token=api_token, max_body_bytes=max_body_bytes)
        self.api = build_api(
            hosted,
            self.store,
            self.scheduler,
            settings,
            dispatcher=_CancellingDispatcher,
            stop_run=self._stop_run,
            clock=sqlite_clock,
        )
        self.dispatcher: RunService = self.api.dispatcher
        self._api_token = api_token
        self.concurrency = concurrency
        self._stop = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self.reconcile_every_s = reconcile_every_s
        self.reconcile_grace_ms = reconcile_grace_ms
        self._reconciler: asyncio.Task[None] | None = None
        self.schedule_every_s = schedule_every_s
        self.marks = SQLiteScheduleMarks(path)
        self._ticker: asyncio.Task[None] | None = None
        self._servers: list[LocalServer] = []
        # The tasks delivering each run's messages, and those cancelled because their run was.
        self._delivering: dict[str, set[asyncio.Task[Any]]] = {}
        self._stopped: set[asyncio.Task[Any]] = set()

    async def _deliver(self, message: DispatchMessage) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks = self._delivering.setdefault(message.run_id, set())
        tasks.add(task)
        try:
            await self.dispatcher.dispatch(message)
        except asyncio.CancelledError:
            if task in self._stopped and task.uncancel() == 0:
                # Its run was cancelled: the message is done with, not to be delivered again.
                logger.info("stopped the step of cancelled run %s", message.run_id)
                return
            raise
        finally:
            self._stopped.discard(task)
            tasks.discard(task)
            if not tasks:
                self._delivering.pop(message.run_id, None)

    def _stop_run(self, run_id: str) -> None:
        for task in self._delivering.get(run_id, ()):
            if task is not asyncio.current_task() and task not in self._stopped:
                self._stopped.add(task)
                task.cancel()

    async def _reconcile_periodically(self, every_s: float) -> None:
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stop.wait(), every_s)
                return
            try:
                await self.dispatcher.reconcile(grace_ms=self.reconcile_grace_ms)
            except Exception:  # the next round tries again
                logger.exception("reconcile failed")

    async def fire_schedules(self) -> None:
        """Start the runs of the ticks due since the last call (or the last process's)."""
        marks = await self.dispatcher.fire_due(self.marks.load())
        self.marks.save(marks)

    async def _fire_schedules_periodically(self, every_s: float) -> None:
        while True:
            try:
                await self.fire_schedules()
            except Exception:  # the next round tries again
                logger.exception("starting the scheduled runs failed")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stop.wait(), every_s)
                return

    async def __aenter__(self) -> LocalRuntime:
        self._stop.clear()
        self._worker = asyncio.create_task(
            self.scheduler.run(self._deliver, stop=self._stop, concurrency=self.concurrency)
        )
        if self.reconcile_every_s is not None:
            self._reconciler = asyncio.create_task(
                self._reconcile_periodically(self.reconcile_every_s)
            )
        if self.dispatcher.schedules():
            self._ticker = asyncio.create_task(
                self._fire_schedules_periodically(self.schedule_every_s)
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
        for timer in (self._reconciler, self._ticker):
            if timer is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.wait_for(timer, 10)
        if self._worker is not None:
            try:
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.wait_for(self._worker, SHUTDOWN_GRACE_S)
            except TimeoutError:
                # wait_for cancelled the worker: its steps in flight were stopped and their
                # messages released, for the next start to deliver again.
                logger.warning(
                    "steps still running %g s after the stop were cancelled", SHUTDOWN_GRACE_S
                )
        for resource in (self.scheduler, self.store, self.marks):
            close = getattr(resource, "close", None)
            if close is not None:
                close()

    async def serve(
        self,
        host: str = "127.0.0.1",
        port: int = 8000,
        *,
        allowed_hosts: Iterable[str] | None = None,
        dashboard: bool = False,
    ) -> LocalServer:
        """Start serving the HTTP API with uvicorn; returns the started server (``server.url``).

        ``allowed_hosts`` are the ``Host`` names answered (default: derived from ``host``); see
        :class:`~refluxo.local.server.LocalServer` for the limits. With ``dashboard`` the
        dashboard is served too, at ``/ui/`` (see :mod:`refluxo.local.dashboard`).
        """
        wrap = None
        if dashboard:
            from .dashboard import beside_the_api

            wrap = beside_the_api(self.api, self._api_token)
        server = LocalServer(self.api, host, port, allowed_hosts=allowed_hosts, wrap=wrap)
        await server.start()
        self._servers.append(server)
        return server
