"""A deterministic driver for dispatcher tests: a fake clock and a hand-cranked scheduler."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from typing import Any

from refluxo.core import Snapshot
from refluxo.core.dispatcher import RunService, Workflow
from refluxo.core.memory import MemoryScheduler
from refluxo.core.model import NodeResult
from refluxo.core.ports import DueRuns, ResultArchive, StateStore

from .clock import FakeClock
from .driving import Deliver, deliver_once, run_to_end
from .workflows import DEFINITION, NODES


class YieldingStore(StateStore, ResultArchive, DueRuns):
    """A store that hands control to the event loop before and after every call to ``inner``.

    Stores whose calls never really wait (memory; SQLite, which is synchronous) run a whole
    dispatch without yielding, so "racing" coroutines would take turns instead of racing.
    Through this wrapper two dispatches of one message interleave as two processes would:
    both load, both execute, and one save loses. It counts the conflicts it passes on.
    """

    def __init__(self, inner: StateStore) -> None:
        self.inner = inner
        self.conflicts = 0

    async def _call(self, call: Awaitable[Any]) -> Any:
        await asyncio.sleep(0)
        try:
            return await call
        except Exception as exc:
            if type(exc).__name__ == "VersionConflict":
                self.conflicts += 1
            raise
        finally:
            await asyncio.sleep(0)

    async def create(self, snapshot: Snapshot) -> bool:
        created: bool = await self._call(self.inner.create(snapshot))
        return created

    async def load(self, run_id: str) -> Snapshot:
        loaded: Snapshot = await self._call(self.inner.load(run_id))
        return loaded

    async def save(self, snapshot: Snapshot, *, expected_version: int) -> None:
        await self._call(self.inner.save(snapshot, expected_version=expected_version))

    async def archive_results(
        self, run_id: str, node_id: str, first_index: int, results: Sequence[NodeResult]
    ) -> None:
        assert isinstance(self.inner, ResultArchive)
        await self._call(self.inner.archive_results(run_id, node_id, first_index, results))

    async def archived_results(self, run_id: str, node_id: str) -> list[NodeResult]:
        assert isinstance(self.inner, ResultArchive)
        found: list[NodeResult] = await self._call(self.inner.archived_results(run_id, node_id))
        return found

    async def due_runs(self, *, due_before: int, limit: int) -> list[str]:
        assert isinstance(self.inner, DueRuns)
        found: list[str] = await self._call(self.inner.due_runs(due_before=due_before, limit=limit))
        return found


class Harness:
    """Runs a dispatcher to quiescence, advancing the fake clock to the next due message."""

    def __init__(self, store: StateStore, clock: FakeClock, *, max_delay_ms: int = 10**12) -> None:
        self.clock = clock
        self.store = store
        self.scheduler = MemoryScheduler(clock=clock, max_delay_ms=max_delay_ms)
        self.demo = Workflow("demo", DEFINITION, NODES, clock=clock)
        self.dispatcher = RunService(
            [self.demo], store, self.scheduler, clock=clock, globals={"supplier_token": "tok-7"}
        )
        self.outcomes: list[str] = []

    async def crank(
        self,
        deliver: Deliver = deliver_once,
        *,
        until_waiting: str | None = None,
        max_messages: int = 500,
    ) -> None:
        """Deliver messages until none is pending (advancing time to each due message).

        With ``until_waiting``, stop instead of advancing time once that run waits for an
        event (as a person would answer before its deadline).
        """

        async def waiting() -> bool:
            if until_waiting is None:
                return False
            snap = await self.store.load(until_waiting)
            return snap.wait is not None and snap.wait.kind == "event"

        results = await run_to_end(
            self.dispatcher,
            self.scheduler,
            clock=self.clock,
            deliver=deliver,
            stop=waiting,
            max_messages=max_messages,
        )
        self.outcomes.extend(result.outcome for result in results)

    async def run_demo(
        self, run_id: str = "r1", deliver: Deliver = deliver_once, approve: bool = True
    ) -> Snapshot:
        await self.dispatcher.start(
            "demo", run_id=run_id, input={"customer": "Grace", "order": "A-7"}
        )
        await self.crank(deliver, until_waiting=run_id)
        snap = await self.store.load(run_id)
        assert snap.status == "paused" and snap.current_node_id == "approval", snap.status
        for _ in range(3):  # a client retries a failed call with the same event id
            try:
                await self.dispatcher.send_event(
                    run_id, {"approved": approve}, "approval", event_id="approval-1"
                )
                break
            except Exception as exc:
                if type(exc).__name__ != "CrashAfterSave":
                    raise
        await self.crank(deliver)
        return await self.store.load(run_id)


def recorded(snapshot: Snapshot) -> dict[str, list[tuple[Any, str | None, int]]]:
    """What a run recorded, without timestamps: node -> [(output, error, attempt)]."""
    return {
        node: [(r.output, r.error, r.attempt) for r in results]
        for node, results in snapshot.context.items()
    }
