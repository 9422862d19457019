"""Sub-workflows: a node that runs a child run of another hosted workflow and outputs its result."""

from __future__ import annotations

from typing import Any

import pytest

from refluxo.core import DefinitionError, NodeDefinition, Snapshot, StepResult
from refluxo.core.dispatcher import Dispatcher, Workflow
from refluxo.core.memory import MemoryScheduler, MemoryStateStore
from refluxo.core.model import DispatchMessage
from refluxo.core.ports import StateStore
from refluxo.core.subflows import child_run_id
from refluxo.core.timeline import render_timeline
from tests.conftest import FakeClock


def _double(data: Any, context: Any, payload: Any, globals: Any) -> Any:
    return {"total": data["n"] * 2}


def _boom(data: Any, context: Any, payload: Any, globals: Any) -> Any:
    raise ValueError("the child broke")


def _echo(data: Any, context: Any, payload: Any, globals: Any) -> Any:
    return data


def _take(data: Any, context: Any, payload: Any, globals: Any) -> Any:
    return payload


def _wait(data: Any, context: Any, payload: Any, globals: Any) -> Any:
    if payload is None:
        return StepResult.wait_for_event("go")
    return payload


NODES = {
    "double": NodeDefinition(executor=_double, thread=False),
    "boom": NodeDefinition(executor=_boom, thread=False),
    "echo": NodeDefinition(executor=_echo, thread=False),
    "wait": NodeDefinition(executor=_wait, thread=False),
    "take": NodeDefinition(executor=_take, thread=False),
}


def _parent(policy: str = "fail", child: str = "child") -> dict[str, Any]:
    return {
        "nodes": [
            {"id": "prepare", "type": "echo", "data": {"n": 21}},
            {
                "id": "call",
                "type": "subworkflow",
                "data": {
                    "workflow": child,
                    "input": {"n": "{{ prepare.last.data.n }}"},
                    "on_child_failure": policy,
                },
            },
            {"id": "after", "type": "echo", "data": {"got": "{{ call.last.data }}"}},
        ],
        "edges": [
            {"id": "e1", "source": "prepare", "target": "call"},
            {"id": "e2", "source": "call", "target": "after"},
        ],
    }


CHILD = {
    "nodes": [
        {"id": "take", "type": "take"},
        {"id": "compute", "type": "double", "data": {"n": "{{ take.last.data.n }}"}},
    ],
    "edges": [{"id": "c1", "source": "take", "target": "compute"}],
}
FAILING_CHILD = {"nodes": [{"id": "x", "type": "boom"}], "edges": []}
WAITING_CHILD = {
    "nodes": [{"id": "take", "type": "take"}, {"id": "w", "type": "wait"}],
    "edges": [{"id": "c1", "source": "take", "target": "w"}],
}


class Deployment:
    def __init__(self, clock: FakeClock, store: StateStore | None = None, **parent: Any) -> None:
        self.clock = clock
        self.store = store or MemoryStateStore(clock=clock)
        self.scheduler = MemoryScheduler(clock=clock)
        workflows = [
            Workflow("parent", _parent(**parent), NODES, clock=clock),
            Workflow("child", CHILD, NODES, clock=clock),
            Workflow("failing", FAILING_CHILD, NODES, clock=clock),
            Workflow("waiting", WAITING_CHILD, NODES, clock=clock),
        ]
        self.dispatcher = Dispatcher(workflows, self.store, self.scheduler, clock=clock)
        self.outcomes: list[str] = []

    async def crank(self, *, copies: int = 1, max_messages: int = 500) -> None:
        for _ in range(max_messages):
            due = self.scheduler.pop_due()
            if not due:
                nxt = self.scheduler.next_due()
                if nxt is None:
                    return
                self.clock.now = max(self.clock.now, nxt)
                continue
            for message in due:
                for _ in range(copies):
                    self.outcomes.append((await self.dispatcher.dispatch(message)).outcome)
        raise AssertionError("the runs did not settle")


def _input_of(snapshot: Snapshot) -> Any:
    return snapshot.input


async def test_a_subworkflow_node_outputs_the_childs_final_output(clock: FakeClock) -> None:
    d = Deployment(clock)
    await d.dispatcher.start("parent", run_id="p1")
    await d.crank()
    parent = await d.store.load("p1")
    assert parent.status == "completed"
    assert parent.context["call"][-1].output == {"total": 42}
    assert parent.context["after"][-1].output == {"got": {"total": 42}}
    child = await d.store.load(child_run_id("p1", "call", 1))
    assert child.status == "completed"
    assert _input_of(child) == {"n": 21}
    assert child.metadata["parent"] == {"runId": "p1", "node": "call", "depth": 1}
    assert parent.metadata["children"] == [child.run_id]


async def test_every_delivery_duplicated_starts_one_child_and_records_one_result(
    clock: FakeClock, store: StateStore
) -> None:
    clean = Deployment(FakeClock())
    await clean.dispatcher.start("parent", run_id="p1")
    await clean.crank()
    d = Deployment(clock, store)
    await d.dispatcher.start("parent", run_id="p1")
    await d.crank(copies=2)
    parent = await d.store.load("p1")
    expected = await clean.store.load("p1")
    assert parent.status == "completed"
    assert {k: [r.output for r in v] for k, v in parent.context.items()} == {
        k: [r.output for r in v] for k, v in expected.context.items()
    }
    for run_id in ("p1", child_run_id("p1", "call", 1)):
        assert (await d.store.load(run_id)).status == "completed"
    assert d.scheduler.pending() == []


class ChildFirstStore(StateStore):
    """Runs the child to its end just before the parent's pause is saved (once).

    The child then tells a parent that still looks active: the notification must wait in the
    parent's inbox and resume it as soon as the pause is saved. Wraps any store.
    """

    def __init__(self, inner: StateStore) -> None:
        self.inner = inner
        self.deployment: Deployment | None = None
        self.fired = False

    async def create(self, snapshot: Snapshot) -> bool:
        return await self.inner.create(snapshot)

    async def load(self, run_id: str) -> Snapshot:
        return await self.inner.load(run_id)

    async def save(self, snapshot: Snapshot, *, expected_version: int) -> None:
        if snapshot.run_id == "p1" and snapshot.status == "paused" and not self.fired:
            self.fired = True
            assert self.deployment is not None
            child_id = child_run_id("p1", "call", 1)
            for _ in range(20):
                child = await self.inner.load(child_id)
                if child.is_terminal:
                    break
                message = DispatchMessage(run_id=child_id, version=child.version)
                await self.deployment.dispatcher.dispatch(message)
            assert (await self.inner.load(child_id)).status == "completed"
            assert (await self.inner.load("p1")).inbox, "the notification waits in the inbox"
        await self.inner.save(snapshot, expected_version=expected_version)


async def test_a_child_finishing_before_the_parent_waits_still_resumes_the_parent(
    clock: FakeClock, store: StateStore
) -> None:
    wrapped = ChildFirstStore(store)
    d = Deployment(clock, wrapped)
    store = wrapped
    store.deployment = d
    await d.dispatcher.start("parent", run_id="p1")
    await d.crank()
    assert store.fired
    parent = await d.store.load("p1")
    assert parent.status == "completed"
    assert parent.context["after"][-1].output == {"got": {"total": 42}}
    assert [len(parent.context[n]) for n in ("prepare", "call", "after")] == [1, 1, 1]
    assert parent.inbox is None


async def test_a_failed_child_fails_the_parent_by_default(clock: FakeClock) -> None:
    d = Deployment(clock, child="failing")
    await d.dispatcher.start("parent", run_id="p1")
    await d.crank()
    parent = await d.store.load("p1")
    assert parent.status == "failed"
    assert "the child broke" in parent.metadata["failedReason"]
    assert "after" not in parent.context


async def test_on_child_failure_continue_records_the_failure_and_goes_on(
    clock: FakeClock,
) -> None:
    d = Deployment(clock, child="failing", policy="continue")
    await d.dispatcher.start("parent", run_id="p1")
    await d.crank()
    parent = await d.store.load("p1")
    assert parent.status == "completed"
    output = parent.context["call"][-1].output
    assert output["failed"] is True and "the child broke" in output["error"]


async def test_cancelling_the_parent_cancels_its_children(clock: FakeClock) -> None:
    d = Deployment(clock, child="waiting")
    await d.dispatcher.start("parent", run_id="p1")
    await d.crank()
    child_id = child_run_id("p1", "call", 1)
    assert (await d.store.load(child_id)).status == "paused"
    await d.dispatcher.cancel("p1", "no longer needed")
    child = await d.store.load(child_id)
    assert child.status == "failed" and child.metadata["cancelled"] is True
    assert "p1" in child.metadata["failedReason"]


async def test_a_forged_child_event_does_not_make_up_the_childs_output(clock: FakeClock) -> None:
    d = Deployment(clock, child="waiting")
    await d.dispatcher.start("parent", run_id="p1")
    await d.crank()
    child_id = child_run_id("p1", "call", 1)
    forged = {"runId": child_id, "status": "completed"}
    await d.dispatcher.send_event("p1", forged, f"refluxo.child:{child_id}")
    await d.crank()
    assert (await d.store.load("p1")).status == "paused"
    await d.dispatcher.send_event(child_id, {"answer": 7}, "go")
    await d.crank()
    parent = await d.store.load("p1")
    assert parent.status == "completed"
    assert parent.context["call"][-1].output == {"answer": 7}


async def test_a_lost_notification_is_sent_again_by_the_childs_redelivery(
    clock: FakeClock,
) -> None:
    d = Deployment(clock)

    async def lost(child: Snapshot) -> None:
        return None

    real = d.dispatcher._notify_parent
    d.dispatcher._notify_parent = lost  # type: ignore[method-assign]
    await d.dispatcher.start("parent", run_id="p1")
    await d.crank()
    assert (await d.store.load("p1")).status == "paused"
    d.dispatcher._notify_parent = real  # type: ignore[method-assign]
    child = await d.store.load(child_run_id("p1", "call", 1))
    # The queue delivers the child's last message again (the first died after the save).
    await d.dispatcher.dispatch(DispatchMessage(run_id=child.run_id, version=child.version - 1))
    await d.crank()
    assert (await d.store.load("p1")).status == "completed"


def test_a_subworkflow_node_naming_a_workflow_not_hosted_is_refused(clock: FakeClock) -> None:
    parent = Workflow("parent", _parent(child="nowhere"), NODES, clock=clock)
    with pytest.raises(DefinitionError, match="nowhere"):
        Dispatcher([parent], MemoryStateStore(), MemoryScheduler())


async def test_the_timeline_links_parent_and_child(clock: FakeClock) -> None:
    d = Deployment(clock, child="waiting")
    await d.dispatcher.start("parent", run_id="p1")
    await d.crank()
    child_id = child_run_id("p1", "call", 1)
    parent_text = render_timeline(await d.store.load("p1"))
    assert f"child runs: {child_id}" in parent_text
    assert f"waiting for child run {child_id}" in parent_text
    assert "child of run p1 (node call)" in render_timeline(await d.store.load(child_id))


async def test_a_workflow_that_calls_itself_stops_at_the_nesting_limit(clock: FakeClock) -> None:
    loop = {
        "nodes": [{"id": "again", "type": "subworkflow", "data": {"workflow": "loop"}}],
        "edges": [],
    }
    store = MemoryStateStore(clock=clock)
    scheduler = MemoryScheduler(clock=clock)
    d = Dispatcher([Workflow("loop", loop, NODES, clock=clock)], store, scheduler, clock=clock)
    await d.start("loop", run_id="l0")
    for _ in range(500):
        due = scheduler.pop_due()
        if not due:
            nxt = scheduler.next_due()
            if nxt is None:
                break
            clock.now = max(clock.now, nxt)
            continue
        for message in due:
            await d.dispatch(message)
    top = await store.load("l0")
    assert top.status == "failed"
    assert len(store.run_ids()) == 9


async def test_a_child_whose_branches_end_without_a_join_still_resumes_its_parent(
    clock: FakeClock,
) -> None:
    forking = {
        "nodes": [
            {"id": "take", "type": "take"},
            {"id": "a", "type": "echo", "data": {"side": "a"}},
            {"id": "b", "type": "echo", "data": {"side": "b"}},
        ],
        "edges": [
            {"id": "f1", "source": "take", "target": "a"},
            {"id": "f2", "source": "take", "target": "b"},
        ],
    }
    store = MemoryStateStore(clock=clock)
    scheduler = MemoryScheduler(clock=clock)
    workflows = [
        Workflow("parent", _parent(child="forking"), NODES, clock=clock),
        Workflow("forking", forking, NODES, clock=clock),
    ]
    d = Dispatcher(workflows, store, scheduler, clock=clock)
    await d.start("parent", run_id="p1")
    for _ in range(200):
        due = scheduler.pop_due()
        if not due:
            break
        for message in due:
            await d.dispatch(message)
    child = await store.load(child_run_id("p1", "call", 1))
    assert child.status == "completed"
    assert (await store.load("p1")).status == "completed"


async def test_a_subworkflow_node_in_a_branch_joins_with_the_childs_output(
    clock: FakeClock,
) -> None:
    forked = {
        "nodes": [
            {"id": "start", "type": "echo", "data": {"n": 5}},
            {
                "id": "call",
                "type": "subworkflow",
                "data": {"workflow": "child", "input": {"n": "{{ start.last.data.n }}"}},
            },
            {"id": "side", "type": "echo", "data": {"side": True}},
            {"id": "join", "type": "echo", "join": "all", "data": {"got": "{{ call.last.data }}"}},
        ],
        "edges": [
            {"id": "f1", "source": "start", "target": "call"},
            {"id": "f2", "source": "start", "target": "side"},
            {"id": "j1", "source": "call", "target": "join"},
            {"id": "j2", "source": "side", "target": "join"},
        ],
    }
    store = MemoryStateStore(clock=clock)
    scheduler = MemoryScheduler(clock=clock)
    workflows = [
        Workflow("forked", forked, NODES, clock=clock),
        Workflow("child", CHILD, NODES, clock=clock),
    ]
    d = Dispatcher(workflows, store, scheduler, clock=clock)
    await d.start("forked", run_id="p1")
    for _ in range(200):
        due = scheduler.pop_due()
        if not due:
            break
        for message in due:
            await d.dispatch(message)
    run = await store.load("p1")
    assert run.status == "completed", run.metadata
    assert run.context["join"][-1].output == {"got": {"total": 10}}
    assert run.metadata["children"] == [child_run_id("p1", "call", 1)]


def test_the_graph_names_the_workflow_a_subworkflow_node_runs() -> None:
    from refluxo.core.model import WorkflowDefinition
    from refluxo.core.timeline import to_mermaid

    drawn = to_mermaid(WorkflowDefinition.model_validate(_parent()))
    assert 'n1["call<br/><i>subworkflow</i><br/>runs child"]' in drawn
