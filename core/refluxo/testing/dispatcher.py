"""The dispatcher's fault scenarios: what real queues do to deliveries, run on any store.

Each scenario must end with the same recorded results as a clean run, and no step's result
recorded twice. An adapter's test module imports them and defines a ``store`` fixture (a fresh,
empty store on the ``clock`` fixture's clock)::

    from refluxo.testing.dispatcher import *  # noqa: F403 (pytest collects the scenarios)

    @pytest.fixture
    def store(clock):
        return MyStateStore(..., clock=clock)

A store that honestly lacks atomic compare-and-set skips :data:`RACING` (see
``refluxo.testing.store.STORE_CAPABILITIES``).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from refluxo.core import RunFinished, RunNotFound, StoreError, WorkflowMismatch
from refluxo.core.dispatcher import DispatchResult, RunService, Workflow
from refluxo.core.model import DispatchMessage
from refluxo.core.ports import StateStore

from .clock import FakeClock
from .harness import Harness, YieldingStore, recorded
from .workflows import DEFINITION, NODES

EXPECTED_NODES = ["order", "cool_down", "approval", "decide", "ship"]

RACING = "test_two_dispatchers_racing_on_one_run_record_each_step_once"
"""The scenario that needs atomic compare-and-set: two dispatchers race on one run."""


@pytest.fixture
def clock() -> FakeClock:
    """The clock of the scenario's store, workflows and scheduler."""
    return FakeClock()


async def clean_run(clock: FakeClock) -> dict[str, Any]:
    from refluxo.core.memory import MemoryStateStore

    snap = await Harness(MemoryStateStore(), FakeClock(clock.now)).run_demo()
    return recorded(snap)


async def test_a_clean_run_of_the_demo_completes_with_retries_sleep_event_and_branch(
    store: StateStore, clock: FakeClock
) -> None:
    h = Harness(store, clock)
    snap = await h.run_demo()
    assert snap.status == "completed"
    assert list(snap.context) == EXPECTED_NODES
    order = recorded(snap)["order"]
    assert [(err is not None, attempt) for _, err, attempt in order] == [
        (True, 1),
        (True, 2),
        (False, 3),
    ]
    assert order[-1][0] == {"order": "A-7", "customer": "Grace", "items": 3}
    assert snap.context["ship"][0].output == {"note": "shipping A-7 to Grace"}
    assert snap.inbox is None


async def test_every_message_delivered_twice_changes_nothing(
    store: StateStore, clock: FakeClock
) -> None:
    async def twice(d: RunService, m: DispatchMessage) -> list[DispatchResult]:
        return [await d.dispatch(m), await d.dispatch(m)]

    h = Harness(store, clock)
    snap = await h.run_demo(deliver=twice)
    assert snap.status == "completed"
    assert recorded(snap) == await clean_run(clock)
    assert "stale" in h.outcomes


async def test_two_dispatchers_racing_on_one_run_record_each_step_once(
    store: StateStore, clock: FakeClock
) -> None:
    async def racing(d: RunService, m: DispatchMessage) -> list[DispatchResult]:
        return list(await asyncio.gather(d.dispatch(m), d.dispatch(m)))

    interleaving = YieldingStore(store)
    h = Harness(interleaving, clock)
    snap = await h.run_demo(deliver=racing)
    assert snap.status == "completed"
    assert recorded(snap) == await clean_run(clock)
    # They really raced: both executed a step, and the save of one of them lost.
    assert interleaving.conflicts > 0
    assert h.outcomes.count("conflict") == interleaving.conflicts


class CrashAfterSave(Exception):
    pass


async def test_a_crash_between_save_and_schedule_does_not_strand_the_run(
    store: StateStore, clock: FakeClock
) -> None:
    """Every third schedule fails as if the process died after saving; the platform then
    delivers the same message again, and the dispatcher re-sends the lost one."""
    h = Harness(store, clock)
    real = h.scheduler.schedule
    calls = {"n": 0}

    async def flaky_schedule(message: DispatchMessage, *, at: int | None = None) -> None:
        calls["n"] += 1
        if calls["n"] % 3 == 0:
            raise CrashAfterSave
        await real(message, at=at)

    h.scheduler.schedule = flaky_schedule  # type: ignore[method-assign]

    async def redeliver_on_crash(d: RunService, m: DispatchMessage) -> list[DispatchResult]:
        for _ in range(5):
            try:
                return [await d.dispatch(m)]
            except CrashAfterSave:
                continue
        raise AssertionError("never recovered")

    snap = await h.run_demo(deliver=redeliver_on_crash)
    assert snap.status == "completed"
    assert recorded(snap) == await clean_run(clock)
    assert "recovered" in h.outcomes


async def test_messages_delivered_early_wait_and_late_ones_still_run(
    store: StateStore, clock: FakeClock
) -> None:
    h = Harness(store, clock)
    await h.dispatcher.start("demo", run_id="r1")
    (message,) = h.scheduler.pop_due()
    assert (await h.dispatcher.dispatch(message)).outcome == "stepped"  # order fails: retry
    [(due, retry)] = h.scheduler.pending()
    early = await h.dispatcher.dispatch(retry)  # delivered now, before nextRetryAt
    assert early.outcome == "early"
    assert (await store.load("r1")).version == 1  # nothing ran
    hop = [m for d, m in h.scheduler.pending() if m.hop == 1]
    assert hop and h.scheduler.pending()[0][0] == due
    clock.advance(3_600_000)  # an hour late
    late = await h.dispatcher.dispatch(retry)
    assert late.outcome == "stepped"
    await h.crank(until_waiting="r1")
    assert (await store.load("r1")).current_node_id == "approval"


async def test_long_delays_are_reached_in_hops(store: StateStore, clock: FakeClock) -> None:
    h = Harness(store, clock, max_delay_ms=300)
    snap = await h.run_demo()
    assert snap.status == "completed"
    assert h.outcomes.count("early") >= 3  # the 1 s sleep took several 300 ms hops
    assert all(at is None or at - 0 > 0 for _, at in h.scheduler.scheduled)


async def test_a_paused_run_ignores_duplicate_step_messages(
    store: StateStore, clock: FakeClock
) -> None:
    h = Harness(store, clock)
    await h.dispatcher.start("demo", run_id="r1")
    await h.crank(until_waiting="r1")
    paused = await store.load("r1")
    assert paused.status == "paused"
    duplicates = [
        DispatchMessage(run_id="r1", version=paused.version - 2),
        DispatchMessage(run_id="r1", version=paused.version - 1),
        DispatchMessage(run_id="r1", version=paused.version),
    ]
    outcomes = [(await h.dispatcher.dispatch(m)).outcome for m in duplicates]
    # The one-ahead message re-sends the deadline delivery; the current one is early for it.
    assert outcomes == ["stale", "recovered", "early"]
    after = await store.load("r1")
    assert after.version == paused.version and after.status == "paused"
    assert all(at is not None and at >= clock.now for _, at in h.scheduler.scheduled[-2:])


async def test_an_event_that_arrives_before_the_wait_is_not_lost(
    store: StateStore, clock: FakeClock
) -> None:
    h = Harness(store, clock)
    await h.dispatcher.start("demo", run_id="r1")
    await h.dispatcher.send_event("r1", {"approved": False}, "approval")  # before any step
    await h.crank()
    snap = await store.load("r1")
    assert snap.status == "completed"
    assert "cancel" in snap.context and "ship" not in snap.context
    assert snap.inbox is None


async def test_an_event_timeout_wakes_the_run_when_due(store: StateStore, clock: FakeClock) -> None:
    h = Harness(store, clock)
    await h.dispatcher.start("demo", run_id="r1")
    await h.crank()  # no event ever comes: the clock runs to the approval deadline
    snap = await store.load("r1")
    assert snap.status == "completed"
    assert "cancel" in snap.context
    assert (snap.context["approval"][0].error or "").startswith("EventTimeout")


async def test_a_cancelled_run_runs_no_further_step(store: StateStore, clock: FakeClock) -> None:
    h = Harness(store, clock)
    await h.dispatcher.start("demo", run_id="r1")
    (message,) = h.scheduler.pop_due()
    cancelled = await h.dispatcher.cancel("r1", "customer changed their mind")
    assert cancelled.status == "failed"
    assert cancelled.metadata["failedReason"] == "cancelled: customer changed their mind"
    assert (await h.dispatcher.dispatch(message)).outcome in ("stale", "finished")
    await h.crank()
    snap = await store.load("r1")
    assert snap.context == {} and snap.status == "failed"
    with pytest.raises(RunFinished):
        await h.dispatcher.cancel("r1")
    with pytest.raises(RunFinished):
        await h.dispatcher.send_event("r1", {})


async def test_a_step_in_flight_when_the_run_is_cancelled_is_dropped(
    store: StateStore, clock: FakeClock
) -> None:
    h = Harness(store, clock)
    await h.dispatcher.start("demo", run_id="r1")
    (message,) = h.scheduler.pop_due()
    original = h.demo.engine.advance

    async def cancel_meanwhile(*args: Any, **kwargs: Any) -> Any:
        result = await original(*args, **kwargs)
        await h.dispatcher.cancel("r1")
        return result

    h.demo.engine.advance = cancel_meanwhile  # type: ignore[method-assign]
    assert (await h.dispatcher.dispatch(message)).outcome == "conflict"
    snap = await store.load("r1")
    assert snap.status == "failed" and snap.context == {}
    assert h.scheduler.pending() == []


async def test_the_same_run_id_again_starts_nothing(store: StateStore, clock: FakeClock) -> None:
    h = Harness(store, clock)
    _first, created = await h.dispatcher.start("demo", run_id="r1", input=1)
    again, created_again = await h.dispatcher.start("demo", run_id="r1", input=2)
    assert created and not created_again
    assert again.input == 1
    assert len(h.scheduler.pending()) == 1  # the re-sent first delivery collapsed


async def test_a_run_of_a_changed_definition_is_refused(
    store: StateStore, clock: FakeClock
) -> None:
    h = Harness(store, clock)
    await h.dispatcher.start("demo", run_id="r1")
    rewired = DEFINITION.model_copy(deep=True)
    rewired.edges[0].target = "approval"
    other = RunService(
        [Workflow("demo", rewired, NODES, clock=clock)], store, h.scheduler, clock=clock
    )
    (message,) = h.scheduler.pop_due()
    result = await other.dispatch(message)
    assert result.outcome == "refused"
    assert "redeploy a compatible definition" in (result.detail or "")
    refused = await store.load("r1")
    assert refused.context == {} and refused.status == "active"
    assert "redeploy a compatible definition" in refused.metadata["refused"]["reason"]


async def test_a_refused_run_resumes_when_its_definition_is_redeployed(
    store: StateStore, clock: FakeClock
) -> None:
    h = Harness(store, clock)
    await h.dispatcher.start("demo", run_id="r1", input={"customer": "Grace", "order": "A-7"})
    rewired = DEFINITION.model_copy(deep=True)
    rewired.edges[0].target = "approval"
    original = h.dispatcher
    h.dispatcher = RunService(
        [Workflow("demo", rewired, NODES, clock=clock)], store, h.scheduler, clock=clock
    )
    outcomes = []
    for _ in range(3):  # each delivery is refused and comes back later
        due = h.scheduler.next_due()
        assert due is not None
        clock.now = max(clock.now, due)
        for message in h.scheduler.pop_due():
            outcomes.append((await h.dispatcher.dispatch(message)).outcome)
    assert outcomes == ["refused", "refused", "refused"]
    assert "refused" in (await store.load("r1")).metadata
    h.dispatcher = original  # the original definition is deployed again
    await h.crank(until_waiting="r1")
    await h.dispatcher.send_event("r1", {"approved": True}, "approval")
    await h.crank()
    done = await store.load("r1")
    assert done.status == "completed", done.metadata
    assert "refused" not in done.metadata
    assert recorded(done) == await clean_run(clock)


async def test_retry_delivers_a_refused_run_at_once_after_a_redeploy(
    store: StateStore, clock: FakeClock
) -> None:
    h = Harness(store, clock)
    await h.dispatcher.start("demo", run_id="r1")
    rewired = DEFINITION.model_copy(deep=True)
    rewired.edges[0].target = "approval"
    other = RunService(
        [Workflow("demo", rewired, NODES, clock=clock)], store, h.scheduler, clock=clock
    )
    (message,) = h.scheduler.pop_due()
    assert (await other.dispatch(message)).outcome == "refused"
    assert h.scheduler.pop_due() == []  # the next try is minutes away
    retried = await h.dispatcher.retry("r1", reason="redeployed", by="ops")
    assert "refused" not in retried.metadata
    assert retried.metadata["retries"][0]["reason"] == "redeployed"
    (again,) = h.scheduler.pop_due()  # due now
    assert (await h.dispatcher.dispatch(again)).outcome == "stepped"


async def test_data_changes_are_compatible_and_picked_up(
    store: StateStore, clock: FakeClock
) -> None:
    h = Harness(store, clock)
    await h.dispatcher.start("demo", run_id="r1")
    changed = DEFINITION.model_copy(deep=True)
    changed.nodes[0].data = {"order": "B-2"}
    other = RunService(
        [Workflow("demo", changed, NODES, clock=clock)], store, h.scheduler, clock=clock
    )
    h.dispatcher = other
    await h.crank()
    snap = await store.load("r1")
    assert snap.context["order"][-1].output["order"] == "B-2"


async def test_a_run_id_of_another_workflow_is_a_mismatch(
    store: StateStore, clock: FakeClock
) -> None:
    h = Harness(store, clock)
    twin = Workflow("twin", DEFINITION, NODES, clock=clock)
    h.dispatcher.workflows["twin"] = twin
    await h.dispatcher.start("demo", run_id="r1")
    with pytest.raises(WorkflowMismatch, match="workflow 'demo'"):
        await h.dispatcher.start("twin", run_id="r1")


async def test_unknown_runs_are_harmless_to_dispatch_and_clear_elsewhere(
    store: StateStore, clock: FakeClock
) -> None:
    h = Harness(store, clock)
    result = await h.dispatcher.dispatch(DispatchMessage(run_id="ghost", version=0))
    assert result.outcome == "unknown_run"
    with pytest.raises(RunNotFound):
        await h.dispatcher.send_event("ghost", 1)
    with pytest.raises(RunNotFound):
        await h.dispatcher.cancel("ghost")


async def test_a_transient_store_failure_surfaces_for_redelivery(
    store: StateStore, clock: FakeClock
) -> None:
    h = Harness(store, clock)
    await h.dispatcher.start("demo", run_id="r1")
    (message,) = h.scheduler.pop_due()

    async def down(*args: Any, **kwargs: Any) -> None:
        raise StoreError("backend unavailable", transient=True)

    real_save = store.save
    store.save = down  # type: ignore[method-assign]
    with pytest.raises(StoreError) as info:
        await h.dispatcher.dispatch(message)
    assert info.value.transient
    store.save = real_save  # type: ignore[method-assign]
    assert (await h.dispatcher.dispatch(message)).outcome == "stepped"  # redelivery works


async def test_no_secret_from_globals_reaches_a_snapshot_or_a_log(
    store: StateStore, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    from refluxo.core import NodeDefinition

    async def leak(data: Any, ctx: Any, payload: Any, g: Any) -> Any:
        raise RuntimeError(f"auth failed with key {g['api_key']}")

    wf = Workflow(
        "leaky",
        {"nodes": [{"id": "a", "type": "leak", "data": "{{ globals.api_key }}"}]},
        {"leak": NodeDefinition(executor=leak)},
        clock=clock,
    )
    from refluxo.core.memory import MemoryScheduler

    sched = MemoryScheduler(clock=clock)
    d = RunService([wf], store, sched, clock=clock, globals={"api_key": "sk-live-123456"})
    await d.start("leaky", run_id="r1")
    with caplog.at_level("DEBUG"):
        for m in sched.pop_due():
            await d.dispatch(m)
    snap = await store.load("r1")
    assert snap.status == "failed"
    assert "sk-live-123456" not in snap.to_json()
    assert "***" in (snap.context["a"][0].error or "")
    assert "sk-live-123456" not in caplog.text


async def test_a_consumed_event_id_is_remembered_in_the_run(
    store: StateStore, clock: FakeClock
) -> None:
    h = Harness(store, clock)
    await h.dispatcher.start("demo", run_id="r1")
    await h.crank(until_waiting="r1")
    await h.dispatcher.send_event("r1", {"approved": True}, "approval", event_id="ev-1")
    await h.crank(until_waiting="r1")
    consumed = await store.load("r1")
    assert consumed.status == "completed" and consumed.consumed_events == ["ev-1"]
    with pytest.raises(RunFinished):  # a finished run refuses every new event
        await h.dispatcher.send_event("r1", {"approved": False}, "approval", event_id="ev-2")


async def test_a_retried_event_the_finished_run_consumed_answers_as_the_first_time(
    store: StateStore, clock: FakeClock
) -> None:
    h = Harness(store, clock)
    await h.dispatcher.start("demo", run_id="r1")
    await h.crank(until_waiting="r1")
    await h.dispatcher.send_event("r1", {"approved": True}, "approval", event_id="ev-1")
    await h.crank()
    finished = await store.load("r1")
    assert finished.status == "completed"
    again = await h.dispatcher.send_event("r1", {"approved": True}, "approval", event_id="ev-1")
    assert again.version == finished.version and again.status == "completed"
    assert await store.load("r1") == finished


async def test_a_retried_event_for_a_run_still_running_is_ignored(
    store: StateStore, clock: FakeClock
) -> None:
    from refluxo.core import NodeDefinition, StepResult

    async def ask(data: Any, ctx: Any, payload: Any, g: Any) -> Any:
        return StepResult(pause=True) if payload is None else payload

    wf = Workflow(
        "ask-twice",
        {
            "nodes": [{"id": "a", "type": "ask"}, {"id": "b", "type": "ask"}],
            "edges": [{"id": "e", "source": "a", "target": "b"}],
        },
        {"ask": NodeDefinition(executor=ask)},
        clock=clock,
    )
    from refluxo.core.memory import MemoryScheduler

    sched = MemoryScheduler(clock=clock)
    d = RunService([wf], store, sched, clock=clock)
    await d.start("ask-twice", run_id="r1")
    for m in sched.pop_due():
        await d.dispatch(m)
    await d.send_event("r1", "first", event_id="ev-1")
    while due := sched.pop_due():
        for m in due:
            await d.dispatch(m)
    waiting_at_b = await store.load("r1")
    assert waiting_at_b.current_node_id == "b" and waiting_at_b.status == "paused"
    again = await d.send_event("r1", "first", event_id="ev-1")  # the client's retry
    assert again.version == waiting_at_b.version and again.inbox is None


async def test_a_step_whose_snapshot_is_too_large_fails_the_run_and_keeps_the_old_state(
    clock: FakeClock,
) -> None:
    from refluxo.core import NodeDefinition
    from refluxo.core.memory import MemoryScheduler, MemoryStateStore

    async def huge(data: Any, ctx: Any, payload: Any, g: Any) -> Any:
        return "x" * 5000

    wf = Workflow(
        "huge",
        {"nodes": [{"id": "a", "type": "huge"}]},
        {"huge": NodeDefinition(executor=huge)},
        clock=clock,
    )
    store = MemoryStateStore(max_bytes=2000)
    sched = MemoryScheduler(clock=clock)
    d = RunService([wf], store, sched, clock=clock)
    await d.start("huge", run_id="r1")
    (m,) = sched.pop_due()
    result = await d.dispatch(m)
    assert (result.outcome, result.status) == ("stepped", "failed")
    snap = await store.load("r1")
    assert snap.status == "failed" and snap.context == {}
    assert "too large" in snap.metadata["failedReason"]
    assert sched.pending() == []


__all__ = ["RACING", "clock", *sorted(name for name in list(globals()) if name.startswith("test_"))]
