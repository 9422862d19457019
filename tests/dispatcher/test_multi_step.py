"""Multi-step deliveries: one delivery runs consecutive steps of an active run, each saved."""

from __future__ import annotations

from itertools import pairwise
from typing import Any

import pytest

from refluxo.core import BackendError, NodeDefinition, Snapshot, StepResult, Workflow
from refluxo.core.dispatcher import RunService
from refluxo.core.memory import MemoryScheduler, MemoryStateStore
from refluxo.core.model import DispatchMessage

LONG = 60_000  # a budget no step of these tests comes near: the chain stops for its own reasons


def chain(steps: int, *, then_sleep: bool = False) -> Workflow:
    """``steps`` quick nodes in a row, then (optionally) a node that sleeps, then the end."""
    ids = [f"n{i}" for i in range(steps)]
    nodes: list[dict[str, Any]] = [{"id": i, "type": "quick", "data": {}} for i in ids]
    if then_sleep:
        nodes.append({"id": "nap", "type": "nap", "data": {}})
        nodes.append({"id": "end", "type": "quick", "data": {}})
    order = [n["id"] for n in nodes]
    edges = [{"id": f"e{k}", "source": a, "target": b} for k, (a, b) in enumerate(pairwise(order))]
    return Workflow(
        "chain",
        {"nodes": nodes, "edges": edges},
        {
            "quick": NodeDefinition(executor=lambda d, c, p, g: {"ok": True}, thread=False),
            "nap": NodeDefinition(executor=lambda d, c, p, g: StepResult.sleep(60), thread=False),
        },
    )


class CountingStore(MemoryStateStore):
    """The memory store, counting saves."""

    def __init__(self) -> None:
        super().__init__()
        self.saves: list[int] = []

    async def save(self, snapshot: Snapshot, *, expected_version: int) -> None:
        await super().save(snapshot, expected_version=expected_version)
        self.saves.append(snapshot.version)


async def started(
    budget: int, workflow: Workflow
) -> tuple[RunService, CountingStore, MemoryScheduler]:
    store, scheduler = CountingStore(), MemoryScheduler()
    service = RunService([workflow], store, scheduler, delivery_budget_ms=budget)
    await service.start(workflow.name, run_id="r1")
    return service, store, scheduler


async def test_one_delivery_runs_consecutive_active_steps_saving_each() -> None:
    service, store, scheduler = await started(LONG, chain(10))
    (message,) = scheduler.pop_due()
    result = await service.dispatch(message)
    assert result.outcome == "stepped"
    assert result.status == "completed"
    assert store.saves == list(range(1, 11))  # every step saved, one version each
    assert scheduler.pop_due() == []
    assert list((await store.load("r1")).context) == [f"n{i}" for i in range(10)]


async def test_a_budget_of_zero_runs_one_step_per_delivery() -> None:
    service, _, scheduler = await started(0, chain(3))
    (message,) = scheduler.pop_due()
    result = await service.dispatch(message)
    assert (result.outcome, result.status, result.version) == ("stepped", "active", 1)
    assert [m.version for m in scheduler.pop_due()] == [1]


async def test_a_multi_step_delivery_stops_at_a_sleep_and_schedules_its_end() -> None:
    service, _, scheduler = await started(LONG, chain(3, then_sleep=True))
    (message,) = scheduler.pop_due()
    result = await service.dispatch(message)
    assert (result.status, result.version) == ("paused", 4)
    ((at, next_message),) = scheduler.pending()
    assert next_message.version == 4 and at > scheduler.clock()


class FailingOnce(MemoryScheduler):
    """The memory scheduler whose first schedule call fails: a delivery dying after a save."""

    def __init__(self) -> None:
        super().__init__()
        self.failed = False

    async def schedule(self, message: DispatchMessage, *, at: int | None = None) -> None:
        if not self.failed:
            self.failed = True
            raise BackendError("the queue is down", transient=True)
        await super().schedule(message, at=at)


async def test_a_delivery_dying_after_a_chain_of_saves_is_recovered_when_delivered_again() -> None:
    store, scheduler = MemoryStateStore(), FailingOnce()
    service = RunService([chain(3, then_sleep=True)], store, scheduler, delivery_budget_ms=LONG)
    scheduler.failed = True  # the start's own delivery goes out
    await service.start("chain", run_id="r1")
    (message,) = scheduler.pop_due()
    scheduler.failed = False
    with pytest.raises(BackendError):
        await service.dispatch(message)  # four steps saved, the sleep's delivery lost
    assert (await store.load("r1")).version == 4
    again = await service.dispatch(message)  # the queue delivers the message again
    assert again.outcome == "recovered"
    ((_, next_message),) = scheduler.pending()
    assert next_message.version == 4


def test_a_negative_budget_is_refused() -> None:
    with pytest.raises(ValueError, match="delivery_budget_ms"):
        RunService([chain(1)], MemoryStateStore(), MemoryScheduler(), delivery_budget_ms=-1)
