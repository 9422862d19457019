"""A run that was accepted finishes, fails with a reason, or can be cancelled: never wedged.

Each test drives one way in which input, an odd output, a size or a redeploy could make a run
unreadable or stuck, on the memory and SQLite stores, through the dispatcher and the HTTP API.
"""

from __future__ import annotations

import asyncio
import json
import math
from itertools import pairwise
from typing import Any

import pytest

from refluxo.core import (
    InboxFull,
    NodeDefinition,
    NotStrictJson,
    PayloadTooLarge,
    RetryPolicy,
    RunFinished,
    Snapshot,
    StepResult,
    StoreError,
)
from refluxo.core.codec import Limits
from refluxo.core.dispatcher import RunService, Workflow
from refluxo.core.http import HttpApi, HttpRequest
from refluxo.core.memory import MemoryScheduler, MemoryStateStore
from refluxo.core.model import DispatchMessage
from refluxo.core.ports import StateStore
from refluxo.testing import run_to_end
from tests.conftest import FakeClock


def chain(*ids: str, timeout_to: dict[str, str] | None = None) -> dict[str, Any]:
    """A definition: the nodes in a line, each of type ``id``; plus ``timeout`` edges."""
    edges = [{"id": f"{a}-{b}", "source": a, "target": b} for a, b in pairwise(ids)]
    for source, target in (timeout_to or {}).items():
        edges.append(
            {"id": f"{source}-t", "source": source, "target": target, "sourceHandle": "timeout"}
        )
    return {"nodes": [{"id": i, "type": i} for i in ids], "edges": edges}


class Rig:
    """One workflow on a store, a hand-cranked scheduler and the HTTP API over them."""

    def __init__(
        self,
        store: StateStore,
        clock: FakeClock,
        definition: dict[str, Any],
        nodes: dict[str, NodeDefinition],
        *,
        limits: Limits | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.scheduler = MemoryScheduler(clock=clock)
        self.workflow = Workflow("wf", definition, nodes, clock=clock)
        self.dispatcher = RunService(
            [self.workflow], store, self.scheduler, clock=clock, limits=limits
        )
        self.api = HttpApi(self.dispatcher)
        self.outcomes: list[str] = []

    async def call(self, method: str, path: str, body: Any = None, raw: bytes | None = None):
        data = raw if raw is not None else b"" if body is None else json.dumps(body).encode()
        response = await self.api.handle(HttpRequest(method, path, data))
        return response.status, response.json_body()

    async def deliver_due(self) -> None:
        for message in self.scheduler.pop_due():
            self.outcomes.append((await self.dispatcher.dispatch(message)).outcome)

    async def crank(self, *, advance: bool = True, max_messages: int = 200) -> None:
        """Deliver until nothing is pending (moving the clock to each due message)."""
        clock = self.clock if advance else None
        results = await run_to_end(
            self.dispatcher, self.scheduler, clock=clock, max_messages=max_messages
        )
        self.outcomes.extend(result.outcome for result in results)


def deep(levels: int) -> Any:
    value: Any = "bottom"
    for _ in range(levels):
        value = [value]
    return value


# --- 1. nesting -------------------------------------------------------------------------------


async def echo(data: Any, ctx: Any, payload: Any, g: Any) -> Any:
    return payload


async def wait_for_go(data: Any, ctx: Any, payload: Any, g: Any) -> Any:
    if payload is None:
        return StepResult.wait_for_event("go", timeout=60)
    return payload


@pytest.mark.parametrize("route", ["start", "event"])
async def test_json_nested_past_the_limit_is_refused_with_a_4xx_naming_it_and_changes_nothing(
    store: StateStore, clock: FakeClock, route: str
) -> None:
    rig = Rig(store, clock, chain("wait"), {"wait": NodeDefinition(executor=wait_for_go)})
    assert (await rig.call("POST", "/workflows/wf/runs", {"id": "r1"}))[0] == 201
    await rig.crank(advance=False)
    before = await store.load("r1")
    for levels in (65, 200, 255, 5000):
        nested = "[" * levels + '"bottom"' + "]" * levels
        if route == "start":
            raw = '{"id": "r2", "input": ' + nested + "}"
            status, body = await rig.call("POST", "/workflows/wf/runs", raw=raw.encode())
        else:
            raw = '{"name": "go", "payload": ' + nested + "}"
            status, body = await rig.call("POST", "/runs/r1/events", raw=raw.encode())
        assert status == 400, (levels, body)
        assert body["error"]["code"] == "json_limit"
        assert "max_depth" in body["error"]["message"] or "deeper" in body["error"]["message"]
    assert await store.load("r1") == before
    assert (await rig.call("GET", "/runs/r1"))[0] == 200
    assert (await rig.call("GET", "/runs/r2"))[0] == 404
    # At the limit it is accepted, stored, read back and delivered.
    status, _ = await rig.call("POST", "/runs/r1/events", {"name": "go", "payload": deep(64)})
    assert status == 202
    await rig.crank()
    done = await store.load("r1")
    assert done.status == "completed" and done.context["wait"][-1].output == deep(64)


async def test_a_body_nested_past_what_the_parser_reads_is_a_400_not_a_500(
    store: StateStore, clock: FakeClock
) -> None:
    rig = Rig(store, clock, chain("echo"), {"echo": NodeDefinition(executor=echo)})
    raw = b'{"input": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"
    status, body = await rig.call("POST", "/workflows/wf/runs", raw=raw)
    assert status == 400 and body["error"]["code"] == "json_limit"


@pytest.mark.parametrize(
    "raw",
    [
        b'{"id": "r1", "input": NaN}',
        b'{"id": "r1", "input": [Infinity]}',
        b'{"id": "r1", "input": {"a": -Infinity}}',
        b'{"id": "r1", "input": "\\ud800"}',
        b'{"id": "r1", "input": {"\\udfff": 1}}',
    ],
)
async def test_a_body_that_is_not_strict_json_is_refused_and_starts_nothing(
    store: StateStore, clock: FakeClock, raw: bytes
) -> None:
    rig = Rig(store, clock, chain("echo"), {"echo": NodeDefinition(executor=echo)})
    status, body = await rig.call("POST", "/workflows/wf/runs", raw=raw)
    assert status == 400 and body["error"]["code"] == "json_limit", body
    assert (await rig.call("GET", "/runs/r1"))[0] == 404


# --- 2. outputs that cannot be encoded ----------------------------------------------------


def cyclic() -> Any:
    a: list[Any] = []
    a.append({"self": a})
    return a


class Opaque:
    pass


BAD_OUTPUTS = {
    "lone surrogate": lambda: {"text": "\ud800"},
    "surrogate key": lambda: {"\udc80": 1},
    "cycle": cyclic,
    "object": lambda: {"f": Opaque()},
    "nan": lambda: [math.nan],
    "infinity": lambda: {"x": -math.inf},
    "colliding keys": lambda: {1: "one", "1": "uno"},
    "too deep": lambda: deep(65),
}


@pytest.mark.parametrize("kind", sorted(BAD_OUTPUTS))
async def test_an_output_that_is_not_strict_json_fails_the_node_once_with_the_reason(
    store: StateStore, clock: FakeClock, kind: str
) -> None:
    calls = 0

    async def bad(data: Any, ctx: Any, payload: Any, g: Any) -> Any:
        nonlocal calls
        calls += 1
        return BAD_OUTPUTS[kind]()

    retrying = RetryPolicy(max_attempts=3, interval=10)
    rig = Rig(store, clock, chain("bad"), {"bad": NodeDefinition(bad, retry_policy=retrying)})
    await rig.call("POST", "/workflows/wf/runs", {"id": "r1"})
    await rig.crank()
    run = await store.load("r1")
    assert run.status == "failed" and calls == 1
    assert "not JSON-compatible" in run.metadata["failedReason"]
    assert run.context["bad"][-1].error is not None
    status, body = await rig.call("GET", "/runs/r1")
    assert status == 200 and body["status"] == "failed"


async def test_no_answer_or_snapshot_carries_a_non_standard_json_token(
    store: StateStore, clock: FakeClock
) -> None:
    snap = Snapshot(run_id="r1", status="active", current_node_id="a", input={"x": math.inf})
    with pytest.raises(NotStrictJson):
        snap.to_json()
    with pytest.raises(NotStrictJson):
        await store.create(snap)
    from refluxo.core.http import HttpResponse

    with pytest.raises(ValueError):
        HttpResponse.json(200, {"x": math.nan})


async def test_a_store_never_saves_a_snapshot_that_would_not_read_back(
    store: StateStore,
) -> None:
    good = Snapshot(run_id="r1", status="active", current_node_id="a", input=[1])
    assert await store.create(good)
    for bad in (deep(250), {1: "a", "1": "b"}, "\ud800", math.nan):
        with pytest.raises(NotStrictJson):
            await store.save(
                good.model_copy(update={"input": bad, "version": 1}), expected_version=0
            )
    assert await store.load("r1") == good


# --- 3. sizes -------------------------------------------------------------------------------


async def largest_run(rig: Rig, run_id: str, limit: int) -> Snapshot:
    """Start ``run_id`` with the largest input the store accepts (found by bisection)."""
    low, high = 0, limit
    while low < high:
        size = (low + high + 1) // 2
        try:
            snap = rig.workflow.engine.create_initial_snapshot(
                f"probe-{size}", input="x" * size, definition=rig.workflow.ref
            )
            await rig.store.create(snap)
            low = size
        except PayloadTooLarge:
            high = size - 1
    await rig.dispatcher.start("wf", run_id=run_id, input="x" * low)
    return await rig.store.load(run_id)


async def test_a_step_whose_result_does_not_fit_fails_the_run_once_without_raising(
    clock: FakeClock,
) -> None:
    calls = 0

    async def big(data: Any, ctx: Any, payload: Any, g: Any) -> Any:
        nonlocal calls
        calls += 1
        return "y" * 20_000

    store = MemoryStateStore(max_bytes=20_000)
    rig = Rig(store, clock, chain("big"), {"big": NodeDefinition(executor=big)})
    await largest_run(rig, "r1", 20_000)
    (message,) = [m for m in rig.scheduler.pop_due() if m.run_id == "r1"]
    result = await rig.dispatcher.dispatch(message)  # must not raise: that redelivers forever
    assert (result.outcome, result.status) == ("stepped", "failed")
    run = await store.load("r1")
    assert "too large" in run.metadata["failedReason"] and run.context == {}
    assert calls == 1


async def test_cancel_works_on_a_run_as_large_as_the_store_takes(
    store: StateStore, clock: FakeClock
) -> None:
    limit = 30_000
    if isinstance(store, MemoryStateStore):
        store.max_bytes = limit
    else:
        store.max_bytes = limit  # type: ignore[attr-defined]
    rig = Rig(store, clock, chain("wait"), {"wait": NodeDefinition(executor=wait_for_go)})
    await largest_run(rig, "r1", limit)
    status, body = await rig.call("POST", "/runs/r1/cancel", {"reason": "é" * 5000})
    assert status == 200, body
    run = await store.load("r1")
    assert run.status == "failed" and run.metadata["cancelled"] is True


async def test_cancel_works_on_a_run_stored_before_stores_kept_room_to_finish(
    store: StateStore, clock: FakeClock
) -> None:
    from refluxo.core import NodeResult

    rig = Rig(store, clock, chain("wait"), {"wait": NodeDefinition(executor=wait_for_go)})
    results = [NodeResult(output="r" * 8_000, timestamp=clock.now + i) for i in range(4)]
    legacy = rig.workflow.engine.create_initial_snapshot(
        "r1", definition=rig.workflow.ref
    ).model_copy(update={"status": "paused", "context": {"wait": results}})
    await store.create(legacy)
    store.max_bytes = 20_000  # type: ignore[attr-defined]  # the limit it is now over
    status, body = await rig.call("POST", "/runs/r1/cancel", {"reason": "stop"})
    assert status == 200, body
    run = await store.load("r1")
    assert run.status == "failed" and run.metadata["cancelled"] is True
    assert run.metadata["trimmedToCancel"] is True
    assert run.context["wait"] == [results[-1]]


async def test_the_inbox_is_bounded_and_a_full_inbox_answers_429(
    store: StateStore, clock: FakeClock
) -> None:
    limits = Limits(max_inbox_events=5, max_inbox_bytes=2000)
    rig = Rig(
        store, clock, chain("wait"), {"wait": NodeDefinition(executor=wait_for_go)}, limits=limits
    )
    await rig.call("POST", "/workflows/wf/runs", {"id": "r1"})
    await rig.crank(advance=False)
    for i in range(5):
        status, _ = await rig.call("POST", "/runs/r1/events", {"name": "junk", "payload": i})
        assert status == 202
    status, body = await rig.call("POST", "/runs/r1/events", {"name": "junk", "payload": 5})
    assert status == 429 and "max_inbox_events" in body["error"]["message"]
    status, body = await rig.call("POST", "/runs/r2/events", {"name": "go", "payload": "z" * 3000})
    assert status == 413 and "max_inbox_bytes" in body["error"]["message"]
    # Cancel still works, and the run is readable.
    assert (await rig.call("POST", "/runs/r1/cancel", {}))[0] == 200
    assert (await rig.call("GET", "/runs/r1"))[0] == 200
    with pytest.raises(InboxFull):
        rig2 = Rig(
            store,
            clock,
            chain("wait"),
            {"wait": NodeDefinition(executor=wait_for_go)},
            limits=Limits(max_inbox_events=100, max_inbox_bytes=300),
        )
        await rig2.dispatcher.start("wf", run_id="r3")
        await rig2.dispatcher.send_event("r3", "a" * 100, "junk")
        await rig2.dispatcher.send_event("r3", "b" * 100, "junk")


async def test_junk_events_do_not_lock_out_the_event_the_run_waits_for(
    store: StateStore, clock: FakeClock
) -> None:
    limits = Limits(max_inbox_events=3, max_inbox_bytes=2000)
    rig = Rig(
        store, clock, chain("wait"), {"wait": NodeDefinition(executor=wait_for_go)}, limits=limits
    )
    await rig.call("POST", "/workflows/wf/runs", {"id": "r1"})
    await rig.crank(advance=False)
    for i in range(3):
        assert (await rig.call("POST", "/runs/r1/events", {"name": "junk", "payload": i}))[0] == 202
    assert (await rig.call("POST", "/runs/r1/events", {"name": "junk", "payload": 3}))[0] == 429
    status, _ = await rig.call("POST", "/runs/r1/events", {"name": "go", "payload": "approved"})
    assert status == 202
    await rig.crank(advance=False)
    run = await store.load("r1")
    assert run.status == "completed" and run.context["wait"][-1].output == "approved"


# --- 4. null payloads -----------------------------------------------------------------------


async def test_events_with_a_null_payload_do_not_hold_off_an_event_timeout(
    store: StateStore, clock: FakeClock
) -> None:
    runs = 0

    async def approval(data: Any, ctx: Any, payload: Any, g: Any) -> Any:
        nonlocal runs
        runs += 1
        if payload is None:
            return StepResult.wait_for_event("approval", timeout=60)
        return payload

    rig = Rig(
        store,
        clock,
        chain("approval", "late", timeout_to={"approval": "late"}),
        {"approval": NodeDefinition(approval), "late": NodeDefinition(echo)},
    )
    await rig.dispatcher.start("wf", run_id="r1")
    await rig.crank(advance=False)
    deadline = (await store.load("r1")).wait.until  # type: ignore[union-attr]
    assert deadline is not None
    for _ in range(5):  # someone keeps posting the event with no payload
        clock.advance(20_000)
        await rig.dispatcher.send_event("r1", None, "approval")
        await rig.crank(advance=False)
        waiting = await store.load("r1")
        if waiting.status != "paused":
            break
        assert waiting.wait is not None and waiting.wait.until == deadline
    await rig.crank()
    run = await store.load("r1")
    assert run.status == "completed" and "EventTimeout" in (run.context["approval"][-1].error or "")
    assert runs >= 3  # the null events were delivered as events, each a run of the node


# --- 5. livelock ----------------------------------------------------------------------------


async def test_events_nothing_waits_for_do_not_throw_away_the_step_in_flight(
    store: StateStore, clock: FakeClock
) -> None:
    in_step = asyncio.Event()
    release = asyncio.Event()
    calls = 0

    async def slow(data: Any, ctx: Any, payload: Any, g: Any) -> Any:
        nonlocal calls
        calls += 1
        in_step.set()
        await release.wait()
        return {"done": calls}

    rig = Rig(
        store,
        clock,
        chain("slow", "wait"),
        {"slow": NodeDefinition(slow), "wait": NodeDefinition(wait_for_go)},
    )
    await rig.dispatcher.start("wf", run_id="r1")
    (message,) = rig.scheduler.pop_due()
    step = asyncio.create_task(rig.dispatcher.dispatch(message))
    await asyncio.wait_for(in_step.wait(), 10)
    for i in range(3):  # comments posted while the step runs
        status, _ = await rig.call("POST", "/runs/r1/events", {"name": "comment", "payload": i})
        assert status == 202
    release.set()
    result = await asyncio.wait_for(step, 10)
    assert result.outcome == "stepped"
    await rig.crank(advance=False)
    run = await store.load("r1")
    assert calls == 1 and run.context["slow"][-1].output == {"done": 1}
    assert [e.payload for e in run.inbox or []] == [0, 1, 2]
    assert run.status == "paused" and run.current_node_id == "wait"


async def test_a_step_racing_an_event_it_waits_for_consumes_it(
    store: StateStore, clock: FakeClock
) -> None:
    in_step = asyncio.Event()
    release = asyncio.Event()

    async def slow(data: Any, ctx: Any, payload: Any, g: Any) -> Any:
        in_step.set()
        await release.wait()
        return "slow"

    rig = Rig(
        store,
        clock,
        chain("slow", "wait"),
        {"slow": NodeDefinition(slow), "wait": NodeDefinition(wait_for_go)},
    )
    await rig.dispatcher.start("wf", run_id="r1")
    (message,) = rig.scheduler.pop_due()
    step = asyncio.create_task(rig.dispatcher.dispatch(message))
    await asyncio.wait_for(in_step.wait(), 10)
    await rig.dispatcher.send_event("r1", {"ok": True}, "go")  # early: nobody waits yet
    release.set()
    assert (await asyncio.wait_for(step, 10)).outcome == "stepped"
    await rig.crank(advance=False)
    run = await store.load("r1")
    assert run.status == "completed" and run.context["wait"][-1].output == {"ok": True}


async def test_a_long_step_finishes_while_comments_keep_arriving(
    store: StateStore, clock: FakeClock
) -> None:
    calls = 0
    step_gate = asyncio.Event()

    async def slow(data: Any, ctx: Any, payload: Any, g: Any) -> Any:
        nonlocal calls
        calls += 1
        step_gate.set()
        for _ in range(5):  # yields often, so the comments interleave with the step
            await asyncio.sleep(0)
        return "ok"

    limits = Limits(max_inbox_events=1000)
    rig = Rig(
        store,
        clock,
        chain("a", "b"),
        {"a": NodeDefinition(slow), "b": NodeDefinition(slow)},
        limits=limits,
    )
    await rig.dispatcher.start("wf", run_id="r1")

    async def commenter() -> None:
        for i in range(200):
            try:
                await rig.dispatcher.send_event("r1", i, "comment")
            except RunFinished:  # the run finished between the check below and this event
                return
            await asyncio.sleep(0)
            run = await store.load("r1")
            if run.is_terminal:
                return

    async def worker() -> None:
        for _ in range(50):
            await rig.deliver_due()
            if (await store.load("r1")).is_terminal:
                return
            await asyncio.sleep(0)

    await asyncio.gather(commenter(), worker())
    run = await store.load("r1")
    assert run.status == "completed" and calls == 2, (run.status, calls, rig.outcomes)


async def test_a_step_that_keeps_losing_its_save_to_events_is_delivered_again_not_dropped(
    clock: FakeClock,
) -> None:
    store = MemoryStateStore()
    calls = 0

    async def counted(data: Any, ctx: Any, payload: Any, g: Any) -> Any:
        nonlocal calls
        calls += 1
        return "ok"

    rig = Rig(store, clock, chain("a"), {"a": NodeDefinition(counted)})
    await rig.dispatcher.start("wf", run_id="r1")
    real_save = store.save
    storm = True

    async def an_event_lands_first(snapshot: Snapshot, *, expected_version: int) -> None:
        if storm and snapshot.status != "paused":  # the step's save, not the event's own
            store.save = real_save  # type: ignore[method-assign]
            try:
                await rig.dispatcher.send_event("r1", None, "comment")
            finally:
                store.save = an_event_lands_first  # type: ignore[method-assign]
        await real_save(snapshot, expected_version=expected_version)

    store.save = an_event_lands_first  # type: ignore[method-assign]
    (message,) = rig.scheduler.pop_due()
    with pytest.raises(StoreError) as raised:  # never a silent "conflict" that strands the run
        await rig.dispatcher.dispatch(message)
    assert raised.value.transient
    assert (await store.load("r1")).status == "active"
    storm = False
    assert (await rig.dispatcher.dispatch(message)).outcome == "stepped"  # delivered again
    assert (await store.load("r1")).status == "completed" and calls == 2


# --- 7. the first node's input ------------------------------------------------------------


async def test_after_the_first_nodes_wait_times_out_the_next_node_gets_no_run_input(
    store: StateStore, clock: FakeClock
) -> None:
    seen: list[Any] = []

    async def record(data: Any, ctx: Any, payload: Any, g: Any) -> Any:
        seen.append(payload)
        return payload

    async def first(data: Any, ctx: Any, payload: Any, g: Any) -> Any:
        seen.append(payload)
        return StepResult.wait_for_event("go", timeout=60)

    rig = Rig(
        store,
        clock,
        chain("first", "next", timeout_to={"first": "next"}),
        {"first": NodeDefinition(first), "next": NodeDefinition(record)},
    )
    await rig.dispatcher.start("wf", run_id="r1", input={"order": 7})
    await rig.crank()
    run = await store.load("r1")
    assert run.status == "completed"
    assert seen == [{"order": 7}, None]
    assert run.input == {"order": 7} and not run.input_pending


async def test_the_run_input_goes_to_every_attempt_of_the_first_node_only(
    store: StateStore, clock: FakeClock
) -> None:
    seen: list[Any] = []

    async def flaky(data: Any, ctx: Any, payload: Any, g: Any) -> Any:
        seen.append(payload)
        if len(seen) < 3:
            raise RuntimeError("not yet")
        return "ok"

    rig = Rig(
        store,
        clock,
        chain("flaky", "next"),
        {
            "flaky": NodeDefinition(flaky, retry_policy=RetryPolicy(max_attempts=3)),
            "next": NodeDefinition(lambda d, c, p, g: seen.append(p)),
        },
    )
    await rig.dispatcher.start("wf", run_id="r1", input=[1])
    await rig.crank()
    assert seen == [[1], [1], [1], None]


async def test_a_delivery_for_an_old_version_does_not_run_a_step(
    store: StateStore, clock: FakeClock
) -> None:
    rig = Rig(store, clock, chain("wait"), {"wait": NodeDefinition(executor=wait_for_go)})
    await rig.dispatcher.start("wf", run_id="r1")
    await rig.crank(advance=False)
    waiting = await store.load("r1")
    await rig.dispatcher.send_event("r1", 1, "comment")
    result = await rig.dispatcher.dispatch(DispatchMessage(run_id="r1", version=0))
    assert result.outcome in ("stale", "recovered")
    assert (await store.load("r1")).context == waiting.context


async def test_a_retried_start_resends_the_first_delivery_even_after_events_arrived(
    store: StateStore, clock: FakeClock
) -> None:
    rig = Rig(store, clock, chain("echo"), {"echo": NodeDefinition(executor=echo)})
    await rig.dispatcher.start("wf", run_id="r1", input="hello")
    rig.scheduler.pop_due()  # the first delivery is lost (the call died before it was sent)
    await rig.dispatcher.send_event("r1", "a comment", "comment")
    await rig.dispatcher.start("wf", run_id="r1", input="hello")  # the client retries
    await rig.crank()
    run = await store.load("r1")
    assert run.status == "completed" and run.context["echo"][-1].output == "hello"
