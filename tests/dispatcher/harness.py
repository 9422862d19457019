"""A deterministic driver for dispatcher tests: a fake clock and a hand-cranked scheduler."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from refluxo.core import Snapshot
from refluxo.core.dispatcher import Dispatcher, DispatchResult, Workflow
from refluxo.core.memory import MemoryScheduler
from refluxo.core.model import DispatchMessage
from refluxo.core.ports import StateStore
from refluxo.demo import DEFINITION, NODES
from tests.conftest import FakeClock

Deliver = Callable[[Dispatcher, DispatchMessage], Awaitable[list[DispatchResult]]]


async def deliver_once(dispatcher: Dispatcher, message: DispatchMessage) -> list[DispatchResult]:
    return [await dispatcher.dispatch(message)]


class Harness:
    """Runs a dispatcher to quiescence, advancing the fake clock to the next due message."""

    def __init__(self, store: StateStore, clock: FakeClock, *, max_delay_ms: int = 10**12) -> None:
        self.clock = clock
        self.store = store
        self.scheduler = MemoryScheduler(clock=clock, max_delay_ms=max_delay_ms)
        self.demo = Workflow("demo", DEFINITION, NODES, clock=clock)
        self.dispatcher = Dispatcher(
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
        for _ in range(max_messages):
            due = self.scheduler.pop_due()
            if not due:
                nxt = self.scheduler.next_due()
                if nxt is None:
                    return
                if until_waiting is not None:
                    snap = await self.store.load(until_waiting)
                    if snap.wait is not None and snap.wait.kind == "event":
                        return
                self.clock.now = max(self.clock.now, nxt)
                continue
            for message in due:
                for result in await deliver(self.dispatcher, message):
                    self.outcomes.append(result.outcome)
        raise AssertionError("the run did not settle")

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
