"""The in-memory adapters pass the same contract suites as every other adapter."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import pytest

from refluxo.core.memory import MemoryScheduler, MemoryStateStore
from refluxo.core.model import DispatchMessage, now_ms
from refluxo.testing.archive import ResultArchiveContract
from refluxo.testing.due_runs import DueRunsContract
from refluxo.testing.run_index import RunIndexContract
from refluxo.testing.scheduler import NextDelivery, SchedulerContract
from refluxo.testing.store import StateStoreContract

MAX_BYTES = 64 * 1024
# The MemoryScheduler delivers nothing by itself; this loop plays the worker. It sleeps until
# the next due time, but never longer than this, so messages scheduled meanwhile are noticed.
POLL_S = 0.01


class TestMemoryStateStore(StateStoreContract):
    @pytest.fixture
    def store(self) -> MemoryStateStore:
        return MemoryStateStore(max_bytes=MAX_BYTES)

    @pytest.fixture
    def store_capabilities(self) -> frozenset[str]:
        # Every method runs without awaiting, so on one event loop each call is atomic.
        return frozenset({"atomic_compare_and_set", "size_limit"})

    @pytest.fixture
    def store_max_bytes(self) -> int:
        return MAX_BYTES


class TestMemoryDueRuns(DueRunsContract):
    @pytest.fixture
    def store(self) -> MemoryStateStore:
        return MemoryStateStore()


class TestMemoryResultArchive(ResultArchiveContract):
    @pytest.fixture
    def store(self) -> MemoryStateStore:
        return MemoryStateStore()


class TestMemoryScheduler(SchedulerContract):
    @pytest.fixture
    def scheduler(self) -> MemoryScheduler:
        return MemoryScheduler()

    @pytest.fixture
    def scheduler_capabilities(self) -> frozenset[str]:
        return frozenset({"deduplicates"})

    @pytest.fixture
    async def next_delivery(self, scheduler: MemoryScheduler) -> AsyncIterator[NextDelivery]:
        delivered: asyncio.Queue[DispatchMessage] = asyncio.Queue()

        async def worker() -> None:
            while True:
                for message in scheduler.pop_due():
                    delivered.put_nowait(message)
                due = scheduler.next_due()
                until_due = POLL_S if due is None else max(due - now_ms(), 0) / 1000
                await asyncio.sleep(min(until_due, POLL_S))

        async def next_delivery(timeout_s: float) -> DispatchMessage | None:
            try:
                return await asyncio.wait_for(delivered.get(), timeout_s)
            except TimeoutError:
                return None

        task = asyncio.create_task(worker())
        yield next_delivery
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


class TestMemoryRunIndex(RunIndexContract):
    @pytest.fixture
    def make_store(self) -> Callable[[Callable[[], int]], MemoryStateStore]:
        return lambda clock: MemoryStateStore(clock=clock)
