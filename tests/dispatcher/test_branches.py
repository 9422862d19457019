"""Parallel branches and joins: each branch steps on its own deliveries, and every fault
(duplicates, races, crashes, retries, timeouts, cancel) ends as a clean run does."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from refluxo.core import Snapshot
from refluxo.core.dispatcher import Dispatcher, DispatchResult, Workflow
from refluxo.core.memory import MemoryScheduler
from refluxo.core.model import DispatchMessage, WorkflowDefinition
from refluxo.core.nodes import NodeDefinition, RetryPolicy, StepResult
from refluxo.core.ports import StateStore
from refluxo.core.timeline import to_mermaid
from tests.conftest import FakeClock
from tests.dispatcher.conftest import open_store
from tests.dispatcher.harness import YieldingStore, recorded


@pytest.fixture(params=["memory", "sqlite"])
async def light_store(
    request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock
) -> AsyncIterator[StateStore]:
    async with open_store(request.param, request, tmp_path, clock) as opened:
        yield opened


def fan(
    *,
    join: str | None = None,
    on_failure: str | None = None,
    branches: tuple[str, ...] = ("a", "b"),
) -> dict[str, Any]:
    """start forks to each branch node; every branch meets at ``merge``; then ``end``."""
    start: dict[str, Any] = {"id": "start", "type": "work", "data": "start"}
    if on_failure is not None:
        start["onBranchFailure"] = on_failure
    merge: dict[str, Any] = {
        "id": "merge",
        "type": "collect",
        "data": {b: f"{{{{ {b}.last.data }}}}" for b in branches},
    }
    if join is not None:
        merge["join"] = join
    return {
        "nodes": [
            start,
            *({"id": b, "type": "work", "data": b} for b in branches),
            merge,
            {"id": "end", "type": "work", "data": "end"},
        ],
        "edges": [
            *({"id": f"s{b}", "source": "start", "target": b} for b in branches),
            *({"id": f"{b}m", "source": b, "target": "merge"} for b in branches),
            {"id": "me", "source": "merge", "target": "end"},
        ],
    }


class Rig:
    """A dispatcher over ``store`` with a hand-cranked scheduler and counted executors."""

    def __init__(
        self,
        store: StateStore,
        clock: FakeClock,
        definition: dict[str, Any],
        nodes: dict[str, NodeDefinition] | None = None,
        **workflow: Any,
    ) -> None:
        self.clock = clock
        self.store = store
        self.calls: list[str] = []
        self.scheduler = MemoryScheduler(clock=clock)
        self.outcomes: list[str] = []

        async def work(data: Any, ctx: Any, payload: Any, g: Any) -> Any:
            self.calls.append(data)
            return f"{data}!"

        async def collect(data: Any, ctx: Any, payload: Any, g: Any) -> Any:
            self.calls.append("merge")
            return {"data": data, "payload": payload}

        found = {
            "work": NodeDefinition(executor=work),
            "collect": NodeDefinition(executor=collect),
            **(nodes or {}),
        }
        self.workflow = Workflow("fan", definition, found, clock=clock, **workflow)
        self.dispatcher = Dispatcher([self.workflow], store, self.scheduler, clock=clock)

    async def deliver(self, message: DispatchMessage, copies: int = 1) -> list[DispatchResult]:
        return [await self.dispatcher.dispatch(message) for _ in range(copies)]

    async def crank(self, *, copies: int = 1, together: bool = False, advance: bool = True) -> None:
        for _ in range(500):
            due = self.scheduler.pop_due()
            if not due:
                nxt = self.scheduler.next_due()
                if nxt is None or not advance:
                    return
                self.clock.now = max(self.clock.now, nxt)
                continue
            if together:
                batches = await asyncio.gather(*(self.deliver(m, copies) for m in due))
            else:
                batches = [await self.deliver(m, copies) for m in due]
            self.outcomes.extend(r.outcome for batch in batches for r in batch)
        raise AssertionError("the run did not settle")

    async def run(self, run_id: str = "r1", **crank: Any) -> Snapshot:
        await self.dispatcher.start("fan", run_id=run_id)
        await self.crank(**crank)
        return await self.store.load(run_id)


async def clean_run(clock: FakeClock, definition: dict[str, Any], **kw: Any) -> Snapshot:
    from refluxo.core.memory import MemoryStateStore

    return await Rig(MemoryStateStore(clock=clock), FakeClock(clock.now), definition, **kw).run()


async def test_several_edges_for_one_handle_run_every_branch_and_the_join_gets_their_results(
    store: StateStore, clock: FakeClock
) -> None:
    rig = Rig(store, clock, fan())
    snap = await rig.run()
    assert snap.status == "completed"
    assert sorted(rig.calls) == sorted(["start", "a", "b", "merge", "end"])
    merge = snap.results("merge")[-1].output
    assert merge["payload"] == {"a": "a!", "b": "b!"}
    assert snap.results("end")[-1].output == "end!"
    assert snap.branches is None and snap.joined is None


async def test_branch_results_are_visible_to_expressions_after_the_join(
    light_store: StateStore, clock: FakeClock
) -> None:
    snap = await Rig(light_store, clock, fan()).run()
    assert snap.results("merge")[-1].output["data"] == {"a": "a!", "b": "b!"}


async def test_each_branch_is_stepped_by_its_own_delivery(
    light_store: StateStore, clock: FakeClock
) -> None:
    rig = Rig(light_store, clock, fan(branches=("a", "b", "c")))
    await rig.dispatcher.start("fan", run_id="r1")
    first = rig.scheduler.pop_due()
    await rig.deliver(first[0])  # start forks
    forked = rig.scheduler.pop_due()
    assert len(forked) == 3 and len({m.branch for m in forked}) == 3
    assert len({m.key for m in forked}) == 3
    snap = await light_store.load("r1")
    assert snap.status == "active" and snap.current_node_id is None
    assert {b.node_id for b in (snap.branches or {}).values()} == {"a", "b", "c"}
    for message in forked:
        (result,) = await rig.deliver(message)
        assert result.outcome == "stepped"


async def test_every_branch_delivery_duplicated_ends_as_a_clean_run(
    light_store: StateStore, clock: FakeClock
) -> None:
    clean = await clean_run(clock, fan())
    rig = Rig(light_store, clock, fan())
    snap = await rig.run(copies=2)
    assert snap.status == "completed"
    assert recorded(snap) == recorded(clean)
    assert sorted(rig.calls) == sorted(["start", "a", "b", "merge", "end"])


async def test_two_branches_racing_on_one_run_keep_both_steps(
    store: StateStore, clock: FakeClock
) -> None:
    clean = await clean_run(clock, fan(branches=("a", "b", "c")))
    racing = YieldingStore(store)
    rig = Rig(racing, clock, fan(branches=("a", "b", "c")))
    snap = await rig.run(together=True)
    assert racing.conflicts > 0, "the branches did not interleave"
    assert "conflict" not in rig.outcomes  # each lost save was re-applied, not dropped
    assert snap.status == "completed"
    assert recorded(snap) == recorded(clean)
    assert sorted(rig.calls) == sorted(["start", "a", "b", "c", "merge", "end"])


async def test_racing_duplicates_of_every_branch_delivery_record_each_step_once(
    light_store: StateStore, clock: FakeClock
) -> None:
    clean = await clean_run(clock, fan(branches=("a", "b", "c")))
    rig = Rig(YieldingStore(light_store), clock, fan(branches=("a", "b", "c")))
    snap = await rig.run(together=True, copies=2)
    assert snap.status == "completed"
    assert recorded(snap) == recorded(clean)


class CrashAfterSave(Exception):
    """The process dies after the save, before the schedule."""


class CrashingScheduler(MemoryScheduler):
    """Fails, once, the schedule of the first branch delivery for ``version``."""

    def __init__(self, clock: FakeClock, version: int) -> None:
        super().__init__(clock=clock)
        self.version = version
        self.crashed = False

    async def schedule(self, message: DispatchMessage, *, at: int | None = None) -> None:
        version = self.version
        if not self.crashed and message.branch is not None and message.version == version:
            self.crashed = True
            raise CrashAfterSave(message.key)
        await super().schedule(message, at=at)


async def test_a_crash_between_a_branch_save_and_its_schedule_is_recovered_by_the_redelivery(
    light_store: StateStore, clock: FakeClock
) -> None:
    definition = fan()
    # branch a goes through two nodes, so its second step needs the schedule that crashes
    definition["nodes"].append({"id": "a2", "type": "work", "data": "a2"})
    definition["edges"] = [e for e in definition["edges"] if e["id"] != "am"]
    definition["edges"] += [
        {"id": "aa2", "source": "a", "target": "a2"},
        {"id": "a2m", "source": "a2", "target": "merge"},
    ]
    definition["nodes"][3]["data"]["a"] = "{{ a2.last.data }}"
    clean = await clean_run(clock, definition)
    rig = Rig(light_store, clock, definition)
    rig.scheduler = rig.dispatcher.scheduler = CrashingScheduler(clock, 1)
    await rig.dispatcher.start("fan", run_id="r1")
    for _ in range(100):
        due = rig.scheduler.pop_due()
        if not due:
            break
        for message in due:
            try:
                await rig.dispatcher.dispatch(message)
            except CrashAfterSave:
                # not acknowledged: the queue delivers the message again
                rig.outcomes.extend(r.outcome for r in await rig.deliver(message))
    assert rig.scheduler.crashed and "recovered" in rig.outcomes
    snap = await light_store.load("r1")
    assert snap.status == "completed"
    assert recorded(snap) == recorded(clean)


async def test_a_crash_after_the_save_that_releases_the_join_is_recovered(
    light_store: StateStore, clock: FakeClock
) -> None:
    class CrashOnRunDelivery(MemoryScheduler):
        crashed = False

        async def schedule(self, message: DispatchMessage, *, at: int | None = None) -> None:
            if not self.crashed and message.branch is None and message.version > 1:
                self.crashed = True
                raise CrashAfterSave(message.key)
            await super().schedule(message, at=at)

    clean = await clean_run(clock, fan())
    rig = Rig(light_store, clock, fan())
    rig.scheduler = rig.dispatcher.scheduler = CrashOnRunDelivery(clock=clock)
    await rig.dispatcher.start("fan", run_id="r1")
    for _ in range(100):
        due = rig.scheduler.pop_due()
        if not due:
            break
        for message in due:
            try:
                await rig.dispatcher.dispatch(message)
            except CrashAfterSave:
                rig.outcomes.extend(r.outcome for r in await rig.deliver(message))
    assert rig.scheduler.crashed and "recovered" in rig.outcomes
    snap = await light_store.load("r1")
    assert recorded(snap) == recorded(clean) and snap.status == "completed"


async def test_a_retry_is_per_branch_and_the_other_branch_goes_on(
    light_store: StateStore, clock: FakeClock
) -> None:
    tries: list[int] = []

    async def flaky(data: Any, ctx: Any, payload: Any, g: Any) -> Any:
        tries.append(clock.now)
        if len(tries) < 3:
            raise RuntimeError("not yet")
        return "flaky!"

    definition = fan()
    definition["nodes"][1]["type"] = "flaky"
    policy = RetryPolicy(max_attempts=3, interval=60_000)
    rig = Rig(light_store, clock, definition, {"flaky": NodeDefinition(flaky, retry_policy=policy)})
    await rig.dispatcher.start("fan", run_id="r1")
    await rig.crank(advance=False)
    snap = await light_store.load("r1")
    branches = snap.branches or {}
    by_node = {b.node_id: b for b in branches.values()}
    assert by_node["a"].status == "error" and by_node["a"].retry_state is not None
    assert by_node["merge"].status == "joined"  # b went on and waits at the join
    assert snap.status == "active" and snap.due_at() == by_node["a"].retry_state.next_retry_at
    await rig.crank()
    snap = await light_store.load("r1")
    assert snap.status == "completed" and len(tries) == 3
    assert [r.attempt for r in snap.results("a")] == [1, 2, 3]
    assert snap.results("merge")[-1].output["payload"] == {"a": "flaky!", "b": "b!"}


async def test_an_event_wait_times_out_per_branch_and_follows_its_timeout_edge(
    light_store: StateStore, clock: FakeClock
) -> None:
    async def wait(data: Any, ctx: Any, payload: Any, g: Any) -> Any:
        return StepResult.wait_for_event("go", timeout=60) if payload is None else payload

    definition = fan()
    definition["nodes"][1]["type"] = "wait"
    definition["nodes"].append({"id": "late", "type": "work", "data": "late"})
    definition["edges"] += [
        {"id": "at", "source": "a", "target": "late", "sourceHandle": "timeout"},
        {"id": "lm", "source": "late", "target": "merge"},
    ]
    rig = Rig(light_store, clock, definition, {"wait": NodeDefinition(wait)})
    await rig.dispatcher.start("fan", run_id="r1")
    await rig.crank(advance=False)
    snap = await light_store.load("r1")
    waiting = [b for b in (snap.branches or {}).values() if b.status == "paused"]
    assert len(waiting) == 1 and waiting[0].wait is not None and waiting[0].wait.kind == "event"
    await rig.crank()
    snap = await light_store.load("r1")
    assert snap.status == "completed"
    assert snap.results("a")[-1].error is not None  # the timeout, recorded on the branch's node
    assert snap.results("merge")[-1].output["payload"] == {"late": "late!", "b": "b!"}


async def test_an_event_resumes_the_branch_that_waits_for_it(
    light_store: StateStore, clock: FakeClock
) -> None:
    async def wait(data: Any, ctx: Any, payload: Any, g: Any) -> Any:
        return StepResult.wait_for_event("go") if payload is None else payload

    definition = fan()
    definition["nodes"][1]["type"] = "wait"
    rig = Rig(light_store, clock, definition, {"wait": NodeDefinition(wait)})
    await rig.dispatcher.start("fan", run_id="r1")
    await rig.crank()
    assert (await light_store.load("r1")).status == "active"
    for _ in range(2):  # a retried call adds it once
        await rig.dispatcher.send_event("r1", {"ok": 1}, "go", event_id="e1")
    await rig.crank()
    snap = await light_store.load("r1")
    assert snap.status == "completed" and snap.inbox is None
    assert snap.results("merge")[-1].output["payload"] == {"a": {"ok": 1}, "b": "b!"}


async def boom(data: Any, ctx: Any, payload: Any, g: Any) -> Any:
    raise RuntimeError("broken")


async def test_a_failed_branch_fails_the_run_by_default(
    light_store: StateStore, clock: FakeClock
) -> None:
    definition = fan()
    definition["nodes"][1]["type"] = "boom"
    rig = Rig(light_store, clock, definition, {"boom": NodeDefinition(boom)})
    snap = await rig.run()
    assert snap.status == "failed" and snap.branches is None
    assert "broken" in snap.metadata["failedReason"]
    assert "merge" not in rig.calls and "end" not in rig.calls


async def test_a_failed_branch_is_recorded_and_joined_when_failures_continue(
    light_store: StateStore, clock: FakeClock
) -> None:
    definition = fan(on_failure="continue")
    definition["nodes"][1]["type"] = "boom"
    rig = Rig(light_store, clock, definition, {"boom": NodeDefinition(boom)})
    snap = await rig.run()
    assert snap.status == "completed"
    payload = snap.results("merge")[-1].output["payload"]
    assert payload["b"] == "b!" and "broken" in payload["a"]["error"]


async def test_a_join_on_any_runs_once_for_the_first_branch_and_stops_the_others(
    light_store: StateStore, clock: FakeClock
) -> None:
    async def slow(data: Any, ctx: Any, payload: Any, g: Any) -> Any:
        return StepResult.sleep(3600, data="slow")

    definition = fan(join="any")
    definition["nodes"][1]["type"] = "slow"
    definition["nodes"][3]["data"] = {}
    rig = Rig(light_store, clock, definition, {"slow": NodeDefinition(slow)})
    snap = await rig.run()
    assert snap.status == "completed"
    assert rig.calls.count("merge") == 1 and rig.calls.count("end") == 1
    assert snap.results("merge")[-1].output["payload"] == {"b": "b!"}


async def test_cancel_stops_every_branch(light_store: StateStore, clock: FakeClock) -> None:
    async def slow(data: Any, ctx: Any, payload: Any, g: Any) -> Any:
        return StepResult.sleep(3600, data="slow")

    definition = fan()
    definition["nodes"][1]["type"] = "slow"
    definition["nodes"][2]["type"] = "slow"
    rig = Rig(light_store, clock, definition, {"slow": NodeDefinition(slow)})
    await rig.dispatcher.start("fan", run_id="r1")
    await rig.crank(advance=False)
    assert len(rig.scheduler.pending()) == 2
    await rig.dispatcher.cancel("r1", "stop")
    rig.outcomes.clear()
    await rig.crank()
    snap = await light_store.load("r1")
    assert snap.status == "failed" and snap.metadata["cancelled"] is True
    assert snap.branches is None
    assert "merge" not in rig.calls
    assert set(rig.outcomes) == {"finished"}


async def test_a_fork_inside_a_branch_adds_branches_that_join_too(
    light_store: StateStore, clock: FakeClock
) -> None:
    definition = fan()
    definition["nodes"] += [
        {"id": "a1", "type": "work", "data": "a1"},
        {"id": "a2", "type": "work", "data": "a2"},
    ]
    definition["edges"] = [e for e in definition["edges"] if e["id"] != "am"]
    definition["edges"] += [
        {"id": "aa1", "source": "a", "target": "a1"},
        {"id": "aa2", "source": "a", "target": "a2"},
        {"id": "a1m", "source": "a1", "target": "merge"},
        {"id": "a2m", "source": "a2", "target": "merge"},
    ]
    clean = await clean_run(clock, definition)
    rig = Rig(YieldingStore(light_store), clock, definition)
    snap = await rig.run(together=True, copies=2)
    assert snap.status == "completed"
    assert snap.results("merge")[-1].output["payload"] == {"a1": "a1!", "a2": "a2!", "b": "b!"}
    assert recorded(snap) == recorded(clean)


async def test_a_run_without_branches_writes_no_branch_fields(
    light_store: StateStore, clock: FakeClock
) -> None:
    definition = {
        "nodes": [{"id": "x", "type": "work", "data": "x"}, {"id": "y", "type": "work"}],
        "edges": [{"id": "1", "source": "x", "target": "y"}],
    }
    rig = Rig(light_store, clock, definition)
    snap = await rig.run()
    raw = snap.to_json()
    assert snap.status == "completed"
    assert '"branches"' not in raw and '"joined"' not in raw
    assert all(m.branch is None for _, m in rig.scheduler.pending())
    assert "branch" not in DispatchMessage(run_id="r", version=1).to_json()
    assert DispatchMessage(run_id="r", version=1).key == "r.1.0"


def test_a_definition_without_joins_keeps_its_shape_hash() -> None:
    definition = WorkflowDefinition.model_validate(fan())
    # the hash runs started before joins existed recorded for this graph
    import hashlib
    import json

    shape = {
        "nodes": sorted([n.id, n.type] for n in definition.nodes),
        "edges": sorted([e.source, e.source_handle or "", e.target] for e in definition.edges),
    }
    old = hashlib.sha256(json.dumps(shape, separators=(",", ":")).encode()).hexdigest()[:16]
    assert definition.shape_hash() == old
    assert WorkflowDefinition.model_validate(fan(join="any")).shape_hash() != old


def test_the_mermaid_graph_draws_forks_and_joins() -> None:
    drawing = to_mermaid(WorkflowDefinition.model_validate(fan(join="any")))
    assert "n0 ==> n1" in drawing and "n0 ==> n2" in drawing  # the fork's edges, drawn thick
    assert 'n0["start<br/><i>work</i><br/>fork"]' in drawing
    assert 'n3{{"merge<br/><i>collect</i><br/>join: any"}}' in drawing
    assert "n1 --> n3" in drawing


class Contended(YieldingStore):
    """Moves the run on (as other branches' saves would) before each of ``moves`` saves."""

    def __init__(self, inner: StateStore, moves: int) -> None:
        super().__init__(inner)
        self.moves = moves

    async def save(self, snapshot: Snapshot, *, expected_version: int) -> None:
        if self.moves > 0 and snapshot.branches is not None:
            self.moves -= 1
            stored = await self.inner.load(snapshot.run_id)
            bumped = stored.model_copy(update={"version": stored.version + 1})
            await self.inner.save(bumped, expected_version=stored.version)
        await super().save(snapshot, expected_version=expected_version)


async def test_a_branch_step_that_keeps_losing_its_save_is_delivered_again_not_dropped(
    light_store: StateStore, clock: FakeClock
) -> None:
    from refluxo.core.errors import StoreError

    clean = await clean_run(clock, fan())
    contended = Contended(light_store, moves=0)
    rig = Rig(contended, clock, fan())
    await rig.dispatcher.start("fan", run_id="r1")
    for message in rig.scheduler.pop_due():
        await rig.deliver(message)  # the fork
    first, second = rig.scheduler.pop_due()
    contended.moves = 1000
    with pytest.raises(StoreError) as raised:
        await rig.deliver(first)
    assert raised.value.transient
    contended.moves = 0
    for message in (first, second):  # the queue delivers the failed one again
        await rig.deliver(message)
    await rig.crank()
    snap = await light_store.load("r1")
    assert snap.status == "completed" and recorded(snap) == recorded(clean)


async def test_a_branch_whose_delivery_was_lost_is_delivered_again_by_reconcile(
    light_store: StateStore, clock: FakeClock
) -> None:
    clean = await clean_run(clock, fan())
    rig = Rig(light_store, clock, fan())
    await rig.dispatcher.start("fan", run_id="r1")
    for message in rig.scheduler.pop_due():
        await rig.deliver(message)  # the fork
    first, _lost = rig.scheduler.pop_due()
    await rig.deliver(first)
    await rig.crank()
    assert (await light_store.load("r1")).status == "active"  # stuck: one branch never ran
    clock.advance(600_000)
    assert await rig.dispatcher.reconcile() == ["r1"]
    await rig.crank()
    snap = await light_store.load("r1")
    assert snap.status == "completed" and recorded(snap) == recorded(clean)


async def test_a_dispatch_message_names_a_branch_by_a_short_safe_id() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        DispatchMessage.model_validate({"runId": "r", "version": 1, "branch": "x/" * 40})
    assert DispatchMessage.model_validate({"runId": "r", "version": 1, "branch": "12-0"}).key == (
        "r.1.0.b12-0"
    )


async def test_the_timeline_shows_where_each_branch_stands(
    light_store: StateStore, clock: FakeClock
) -> None:
    from refluxo.core.timeline import render_timeline

    async def slow(data: Any, ctx: Any, payload: Any, g: Any) -> Any:
        return StepResult.sleep(3600, data="slow")

    definition = fan()
    definition["nodes"][1]["type"] = "slow"
    rig = Rig(light_store, clock, definition, {"slow": NodeDefinition(slow)})
    await rig.dispatcher.start("fan", run_id="r1")
    await rig.crank(advance=False)
    text = render_timeline(await light_store.load("r1"))
    assert "now: active" in text
    assert "branch 1-0: paused at merge, sleeping until" in text
    assert "branch 1-1: joined at merge" in text


async def test_results_a_branch_trims_are_archived(
    light_store: StateStore, clock: FakeClock
) -> None:
    from refluxo.core.ports import ResultArchive

    attempts: list[int] = []

    async def twice(data: Any, ctx: Any, payload: Any, g: Any) -> Any:
        attempts.append(1)
        if len(attempts) < 3:
            raise RuntimeError(f"try {len(attempts)}")
        return "ok"

    definition = fan()
    definition["nodes"][1]["type"] = "twice"
    policy = RetryPolicy(max_attempts=3, interval=1000)
    nodes = {"twice": NodeDefinition(twice, retry_policy=policy)}
    rig = Rig(light_store, clock, definition, nodes, retention=1, archive=True)
    snap = await rig.run()
    assert snap.status == "completed"
    assert isinstance(light_store, ResultArchive)
    archived = await light_store.archived_results("r1", "a")
    kept = snap.results("a")
    assert [r.error for r in [*archived, *kept]] == [
        "RuntimeError: try 1",
        "RuntimeError: try 2",
        None,
    ]


async def test_an_event_a_branch_waits_for_is_taken_even_when_the_inbox_is_full(
    light_store: StateStore, clock: FakeClock
) -> None:
    from refluxo.core.codec import Limits

    async def wait(data: Any, ctx: Any, payload: Any, g: Any) -> Any:
        return StepResult.wait_for_event("go") if payload is None else payload

    definition = fan()
    definition["nodes"][1]["type"] = "wait"
    rig = Rig(light_store, clock, definition, {"wait": NodeDefinition(wait)})
    rig.dispatcher.limits = Limits(max_inbox_events=2)
    await rig.dispatcher.start("fan", run_id="r1")
    await rig.crank()
    for i in range(2):
        await rig.dispatcher.send_event("r1", i, "junk")
    await rig.dispatcher.send_event("r1", "yes", "go")
    await rig.crank()
    snap = await light_store.load("r1")
    assert snap.status == "completed" and snap.results("a")[-1].output == "yes"


async def test_a_branch_sleeping_past_the_schedulers_longest_delay_wakes_in_hops(
    light_store: StateStore, clock: FakeClock
) -> None:
    async def slow(data: Any, ctx: Any, payload: Any, g: Any) -> Any:
        return StepResult.sleep(3600, data="slow")

    definition = fan()
    definition["nodes"][1]["type"] = "slow"
    nodes = {"slow": NodeDefinition(slow)}
    clean = await clean_run(clock, definition, nodes=nodes)
    rig = Rig(light_store, clock, definition, nodes)
    rig.scheduler = rig.dispatcher.scheduler = MemoryScheduler(clock=clock, max_delay_ms=600_000)
    snap = await rig.run(copies=2)
    assert rig.outcomes.count("early") >= 5  # an hour in hops of ten minutes
    assert snap.status == "completed" and recorded(snap) == recorded(clean)


@pytest.mark.parametrize("seed", range(12))
async def test_shuffled_duplicated_racing_deliveries_end_as_a_clean_run(
    seed: int, clock: FakeClock
) -> None:
    import random

    from refluxo.core.memory import MemoryStateStore

    async def flaky(data: Any, ctx: Any, payload: Any, g: Any) -> Any:
        if len(ctx.get("a1", [])) < 1:
            raise RuntimeError("first try fails")
        return "a1!"

    definition = fan(branches=("a", "b", "c"))
    definition["nodes"].append({"id": "a1", "type": "flaky", "data": "a1"})
    definition["edges"] = [e for e in definition["edges"] if e["id"] != "am"]
    definition["edges"] += [
        {"id": "aa1", "source": "a", "target": "a1"},
        {"id": "a1m", "source": "a1", "target": "merge"},
    ]
    definition["nodes"][4]["data"]["a"] = "{{ a1.last.data }}"
    nodes = {"flaky": NodeDefinition(flaky, retry_policy=RetryPolicy(max_attempts=2))}
    clean = await clean_run(clock, definition, nodes=nodes)
    rng = random.Random(seed)
    rig = Rig(YieldingStore(MemoryStateStore(clock=clock)), clock, definition, nodes)
    await rig.dispatcher.start("fan", run_id="r1")
    for _ in range(500):
        due = rig.scheduler.pop_due()
        if not due:
            nxt = rig.scheduler.next_due()
            if nxt is None:
                break
            clock.now = max(clock.now, nxt)
            continue
        copies = [m for m in due for _ in range(rng.choice((1, 1, 2, 3)))]
        rng.shuffle(copies)
        await asyncio.gather(*(rig.dispatcher.dispatch(m) for m in copies))
    snap = await rig.store.load("r1")
    assert snap.status == "completed"
    assert recorded(snap) == recorded(clean)


async def test_a_crash_between_the_fork_save_and_its_schedules_is_recovered(
    light_store: StateStore, clock: FakeClock
) -> None:
    clean = await clean_run(clock, fan())
    rig = Rig(light_store, clock, fan())
    rig.scheduler = rig.dispatcher.scheduler = CrashingScheduler(clock, 0)
    await rig.dispatcher.start("fan", run_id="r1")
    for _ in range(100):
        due = rig.scheduler.pop_due()
        if not due:
            break
        for message in due:
            try:
                await rig.dispatcher.dispatch(message)
            except CrashAfterSave:
                assert message.branch is None  # the fork's own delivery comes again
                rig.outcomes.extend(r.outcome for r in await rig.deliver(message))
    assert rig.scheduler.crashed and "recovered" in rig.outcomes
    snap = await light_store.load("r1")
    assert snap.status == "completed" and recorded(snap) == recorded(clean)


async def test_a_run_whose_branches_all_end_without_a_join_completes_once(
    light_store: StateStore, clock: FakeClock
) -> None:
    from refluxo.core.plugins import Plugin

    completed: list[str] = []
    started: list[str] = []

    class Watch(Plugin):
        name = "watch"

        async def on_workflow_start(self, snapshot: Snapshot) -> None:
            started.append(snapshot.run_id)

        async def on_workflow_complete(self, snapshot: Snapshot) -> None:
            completed.append(snapshot.run_id)

    definition = fan()
    definition["nodes"] = [n for n in definition["nodes"] if n["id"] in ("start", "a", "b")]
    definition["edges"] = [e for e in definition["edges"] if e["target"] in ("a", "b")]
    rig = Rig(light_store, clock, definition, plugins=[Watch()])
    snap = await rig.run(copies=2)
    assert snap.status == "completed" and snap.branches is None
    assert sorted(rig.calls) == ["a", "b", "start"]
    assert completed == ["r1"] and started == ["r1"]
