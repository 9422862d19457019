"""The reconciler: a run whose only delivery was lost is found by its due time and finishes."""

from __future__ import annotations

from refluxo.core.memory import MemoryStateStore
from refluxo.core.model import DispatchMessage
from refluxo.core.ports import StateStore
from refluxo.testing.harness import Harness
from tests.conftest import FakeClock

GRACE = 300_000


async def _lose_pending(h: Harness) -> list[DispatchMessage]:
    """Drop every undelivered message, as a queue does after its retries run out."""
    lost = [message for _, message in h.scheduler.pending()]
    h.scheduler._heap.clear()
    return lost


async def test_a_run_whose_only_delivery_was_lost_completes_after_reconcile(
    store: StateStore, clock: FakeClock
) -> None:
    h = Harness(store, clock)
    await h.dispatcher.start("demo", run_id="r1", input={"customer": "Grace"})
    assert await _lose_pending(h)
    await h.crank()
    assert (await store.load("r1")).version == 0  # stranded: nothing will ever deliver it

    assert await h.dispatcher.reconcile(grace_ms=GRACE) == []  # not due for long enough
    clock.advance(GRACE)
    assert await h.dispatcher.reconcile(grace_ms=GRACE) == ["r1"]
    await h.crank(until_waiting="r1")
    snap = await store.load("r1")
    assert (snap.status, snap.current_node_id) == ("paused", "approval")

    await h.dispatcher.send_event("r1", {"approved": True}, "approval")
    await _lose_pending(h)  # the delivery that consumes the event is lost too
    clock.advance(GRACE)
    assert await h.dispatcher.reconcile(grace_ms=GRACE) == ["r1"]
    await h.crank()
    assert (await store.load("r1")).status == "completed"
    assert await h.dispatcher.reconcile(grace_ms=GRACE) == []


async def test_runs_in_flight_not_yet_due_or_waiting_are_not_scheduled_again(
    store: StateStore, clock: FakeClock
) -> None:
    h = Harness(store, clock)
    await h.dispatcher.start("demo", run_id="r1")
    await h.crank(until_waiting="r1")  # waits for an event, with a one-hour deadline
    await h.dispatcher.start("demo", run_id="r2")  # active, its delivery in flight
    clock.advance(GRACE - 1)
    before = len(h.scheduler.scheduled)
    assert await h.dispatcher.reconcile(grace_ms=GRACE) == []
    assert len(h.scheduler.scheduled) == before


async def test_a_sleeping_run_is_found_only_after_its_wake_time_and_the_grace(
    store: StateStore, clock: FakeClock
) -> None:
    h = Harness(store, clock)
    await h.dispatcher.start("demo", run_id="r1")
    for _ in range(20):  # deliver one message at a time until the run sleeps in cool_down
        due, message = h.scheduler.pending()[0]
        clock.now = max(clock.now, due)
        h.scheduler.pop_due()
        await h.dispatcher.dispatch(message)
        snap = await store.load("r1")
        if snap.wait is not None and snap.wait.kind == "sleep":
            break
    assert snap.wait is not None and snap.wait.until is not None
    await _lose_pending(h)
    clock.now = snap.wait.until + GRACE - 1
    assert await h.dispatcher.reconcile(grace_ms=GRACE) == []
    clock.now = snap.wait.until + GRACE
    assert await h.dispatcher.reconcile(grace_ms=GRACE) == ["r1"]
    await h.crank(until_waiting="r1")
    assert (await store.load("r1")).current_node_id == "approval"


async def test_a_dead_lettered_delivery_is_scheduled_again_and_the_run_completes(
    store: StateStore, clock: FakeClock
) -> None:
    h = Harness(store, clock)
    await h.dispatcher.start("demo", run_id="r1", input={"customer": "Grace"})
    (lost,) = await _lose_pending(h)
    assert await h.dispatcher.dead_lettered(lost, "max retries exceeded") is True
    await h.crank(until_waiting="r1")
    await h.dispatcher.send_event("r1", {"approved": True}, "approval")
    await h.crank()
    assert (await store.load("r1")).status == "completed"
    assert await h.dispatcher.dead_lettered(lost, "max retries exceeded") is False
    unknown = DispatchMessage(run_id="nobody", version=0)
    assert await h.dispatcher.dead_lettered(unknown, "max retries exceeded") is False


async def test_reconcile_needs_a_store_that_finds_due_runs(clock: FakeClock) -> None:
    class Plain:
        def __init__(self) -> None:
            inner = MemoryStateStore(clock=clock)
            self.create, self.load, self.save = inner.create, inner.load, inner.save

    h = Harness(Plain(), clock)  # type: ignore[arg-type]
    try:
        await h.dispatcher.reconcile()
    except TypeError as exc:
        assert "due runs" in str(exc)
    else:
        raise AssertionError("reconcile ran on a store without due_runs")
