"""The engine's semantics, one transition at a time (issue: core engine, points 1-9)."""

from __future__ import annotations

import itertools
import logging
from typing import Any

import pytest
from pydantic import BaseModel

from refluxo.core import (
    Context,
    DefinitionError,
    NodeContext,
    NodeDefinition,
    NonRetryableError,
    Plugin,
    RetryPolicy,
    RunFinished,
    Snapshot,
    StepResult,
    WorkflowEngine,
)
from tests.conftest import FakeClock


def linear(*ids: str, type_: str = "echo") -> dict[str, Any]:
    return {
        "nodes": [{"id": i, "type": type_, "data": {"n": i}} for i in ids],
        "edges": [{"id": f"{a}-{b}", "source": a, "target": b} for a, b in itertools.pairwise(ids)],
    }


async def echo(data: Any, context: Context, payload: Any, globals: Any) -> Any:
    return {"data": data, "payload": payload}


ECHO = {"echo": NodeDefinition(executor=echo)}


class Flaky:
    """An executor that fails `failures` times, then succeeds."""

    def __init__(self, failures: int, exc: type[Exception] = RuntimeError) -> None:
        self.failures = failures
        self.calls = 0
        self.exc = exc

    async def __call__(self, data: Any, context: Context, payload: Any, globals: Any) -> Any:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.exc(f"failure {self.calls}")
        return {"ok": self.calls}


# --- 1. immutability and versions ----------------------------------------------------------


async def test_execute_step_never_mutates_its_input(clock: FakeClock) -> None:
    engine = WorkflowEngine(linear("a", "b"), ECHO, clock=clock)
    snap = engine.create_initial_snapshot("run", "a")
    before = snap.model_dump()
    after = await engine.execute_step(snap, {"p": 1})
    assert snap.model_dump() == before
    assert after is not snap and after.context is not snap.context


async def test_a_step_keeps_unknown_fields_in_a_copy_of_their_own(clock: FakeClock) -> None:
    engine = WorkflowEngine(linear("a", "b"), ECHO, clock=clock)
    raw = engine.create_initial_snapshot("run", "a").to_dict()
    snap = Snapshot.model_validate({**raw, "tsOnly": {"kept": [1, 2]}})
    after = await engine.execute_step(snap)
    assert after.model_extra == {"tsOnly": {"kept": [1, 2]}}
    assert after.to_dict()["tsOnly"] == {"kept": [1, 2]}
    assert after.model_fields_set >= snap.model_fields_set | {"status", "context", "version"}
    assert after.model_extra is not None
    after.model_extra["added"] = True
    assert snap.model_extra == {"tsOnly": {"kept": [1, 2]}}
    assert Snapshot.from_json(after.to_json()) == after


async def test_every_transition_bumps_the_version_by_one(clock: FakeClock) -> None:
    flaky = Flaky(1)

    async def pauser(data: Any, ctx: Context, payload: Any, g: Any) -> Any:
        return StepResult(pause=True) if payload is None else payload

    defs = {
        "echo": NodeDefinition(executor=echo),
        "flaky": NodeDefinition(executor=flaky, retry_policy=RetryPolicy(max_attempts=2)),
        "pause": NodeDefinition(executor=pauser),
        "boom": NodeDefinition(executor=Flaky(9)),
    }
    wf = {
        "nodes": [
            {"id": "a", "type": "echo"},
            {"id": "f", "type": "flaky"},
            {"id": "p", "type": "pause"},
            {"id": "x", "type": "boom"},
        ],
        "edges": [
            {"id": "1", "source": "a", "target": "f"},
            {"id": "2", "source": "f", "target": "p"},
            {"id": "3", "source": "p", "target": "x"},
        ],
    }
    engine = WorkflowEngine(wf, defs, clock=clock)
    snap = engine.create_initial_snapshot("run", "a")
    seen = []
    for payload in (None, None, None, None, "go", None):
        snap = await engine.execute_step(snap, payload)
        seen.append((snap.status, snap.version))
    assert seen == [
        ("active", 1),  # success
        ("error", 2),  # retry wait
        ("active", 3),  # retry succeeded
        ("paused", 4),  # pause
        ("active", 5),  # resumed
        ("failed", 6),  # failure
    ]


# --- 2. pause and resume ------------------------------------------------------------------


async def test_pause_then_resume_reruns_the_node_with_the_payload(clock: FakeClock) -> None:
    calls: list[Any] = []

    async def approval(data: Any, ctx: Context, payload: Any, g: Any) -> Any:
        calls.append(payload)
        if payload is None:
            return StepResult(pause=True)
        return {"approved": payload["ok"]}

    engine = WorkflowEngine(
        linear("ask", "done", type_="approval")
        | {"nodes": [{"id": "ask", "type": "approval"}, {"id": "done", "type": "echo"}]},
        {"approval": NodeDefinition(executor=approval), "echo": NodeDefinition(executor=echo)},
        clock=clock,
    )
    snap = await engine.execute(snapshot=engine.create_initial_snapshot("r", "ask"))
    assert snap.status == "paused" and snap.current_node_id == "ask"
    assert "ask" not in snap.context  # a pause records no result
    snap = await engine.execute(snapshot=snap, external_payload={"ok": True})
    assert snap.status == "completed"
    assert calls == [None, {"ok": True}]
    assert snap.context["ask"][-1].output == {"approved": True}


# --- 3 and 4. errors and retries ----------------------------------------------------------


async def test_without_a_policy_an_error_fails_the_run_and_records_type_and_message(
    clock: FakeClock,
) -> None:
    engine = WorkflowEngine(linear("a"), {"echo": NodeDefinition(executor=Flaky(1, KeyError))})
    snap = await engine.execute_step(engine.create_initial_snapshot("r", "a"))
    assert snap.status == "failed"
    result = snap.context["a"][-1]
    assert result.output is None and result.attempt == 1
    assert result.error == "KeyError: 'failure 1'"
    assert "KeyError" in snap.metadata["failedReason"]


async def test_max_attempts_counts_the_first_attempt(clock: FakeClock) -> None:
    flaky = Flaky(10)
    defs = {"echo": NodeDefinition(executor=flaky, retry_policy=RetryPolicy(max_attempts=3))}
    engine = WorkflowEngine(linear("a"), defs, clock=clock)
    snap = engine.create_initial_snapshot("r", "a")
    statuses = []
    while not snap.is_terminal:
        snap = await engine.execute_step(snap)
        statuses.append(snap.status)
    assert statuses == ["error", "error", "failed"]
    assert flaky.calls == 3
    assert [r.attempt for r in snap.context["a"]] == [1, 2, 3]


async def test_exponential_backoff_sets_next_retry_at_and_respects_max_interval(
    clock: FakeClock,
) -> None:
    policy = RetryPolicy(max_attempts=5, interval=100, backoff="exponential", max_interval=300)
    engine = WorkflowEngine(
        linear("a"), {"echo": NodeDefinition(executor=Flaky(10), retry_policy=policy)}, clock=clock
    )
    snap = engine.create_initial_snapshot("r", "a")
    delays = []
    for _ in range(4):
        snap = await engine.execute_step(snap)
        assert snap.status == "error" and snap.retry_state is not None
        assert snap.retry_state.next_retry_at is not None
        delays.append(snap.retry_state.next_retry_at - clock.now)
        assert snap.due_at() == snap.retry_state.next_retry_at
    assert delays == [100, 200, 300, 300]


def test_jitter_stays_within_its_band() -> None:
    import random

    policy = RetryPolicy(max_attempts=3, interval=1000, jitter=0.5)
    rng = random.Random(7)
    values = {policy.delay_ms(1, rng) for _ in range(200)}
    assert min(values) >= 500 and max(values) <= 1500 and len(values) > 50


def test_retry_policy_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ValueError, match="backoff"):
        RetryPolicy(max_attempts=2, backoff="linear")  # type: ignore[arg-type]


async def test_an_error_snapshot_retries_the_same_node_then_moves_on(clock: FakeClock) -> None:
    flaky = Flaky(2)
    defs = {
        "flaky": NodeDefinition(executor=flaky, retry_policy=RetryPolicy(max_attempts=3)),
        "echo": NodeDefinition(executor=echo),
    }
    wf = {
        "nodes": [{"id": "f", "type": "flaky"}, {"id": "e", "type": "echo"}],
        "edges": [{"id": "1", "source": "f", "target": "e"}],
    }
    engine = WorkflowEngine(wf, defs, clock=clock)
    snap = engine.create_initial_snapshot("r", "f")
    snap = await engine.execute_step(snap)
    snap = await engine.execute_step(snap)
    assert snap.status == "error" and snap.current_node_id == "f"
    snap = await engine.execute_step(snap)
    assert snap.status == "active" and snap.current_node_id == "e" and snap.retry_state is None
    assert [(r.attempt, r.error is None) for r in snap.context["f"]] == [
        (1, False),
        (2, False),
        (3, True),
    ]


async def test_a_non_retryable_error_fails_at_once_whatever_the_policy(clock: FakeClock) -> None:
    async def refuse(data: Any, ctx: Context, payload: Any, g: Any) -> Any:
        raise NonRetryableError("card declined")

    defs = {"echo": NodeDefinition(executor=refuse, retry_policy=RetryPolicy(max_attempts=9))}
    snap = await WorkflowEngine(linear("a"), defs).execute_step(
        WorkflowEngine(linear("a"), defs).create_initial_snapshot("r", "a")
    )
    assert snap.status == "failed"
    assert snap.context["a"][0].error == "NonRetryableError: card declined"


class Order(BaseModel):
    qty: int
    sku: str


async def test_invalid_input_fails_without_retries_with_the_validation_message() -> None:
    calls = []

    async def take(data: Order, ctx: Context, payload: Any, g: Any) -> Any:
        calls.append(data)
        return data

    defs = {
        "order": NodeDefinition(
            executor=take, input_model=Order, retry_policy=RetryPolicy(max_attempts=5)
        )
    }
    wf = {"nodes": [{"id": "o", "type": "order", "data": {"qty": "many", "sku": "x"}}]}
    engine = WorkflowEngine(wf, defs)
    snap = await engine.execute_step(engine.create_initial_snapshot("r", "o"))
    assert snap.status == "failed" and calls == []
    assert snap.context["o"][0].error is not None
    assert "qty" in snap.context["o"][0].error and "ValidationError" in snap.context["o"][0].error


async def test_valid_input_reaches_the_executor_as_the_model_and_output_is_json() -> None:
    async def take(data: Order, ctx: Context, payload: Any, g: Any) -> Any:
        assert isinstance(data, Order)
        return Order(qty=data.qty * 2, sku=data.sku)

    wf = {"nodes": [{"id": "o", "type": "order", "data": {"qty": "2", "sku": "x"}}]}
    engine = WorkflowEngine(wf, {"order": NodeDefinition(executor=take, input_model=Order)})
    snap = await engine.execute_step(engine.create_initial_snapshot("r", "o"))
    assert snap.status == "completed"
    assert snap.context["o"][0].output == {"qty": 4, "sku": "x"}


async def test_output_that_is_not_json_fails_the_node_clearly() -> None:
    async def bad(data: Any, ctx: Context, payload: Any, g: Any) -> Any:
        return {"f": object()}

    engine = WorkflowEngine(linear("a"), {"echo": NodeDefinition(executor=bad)})
    snap = await engine.execute_step(engine.create_initial_snapshot("r", "a"))
    assert snap.status == "failed"
    assert "not JSON-compatible" in (snap.context["a"][0].error or "")


async def test_plain_synchronous_executors_work() -> None:
    def sync(data: Any, ctx: Context, payload: Any, g: Any) -> Any:
        return 41 + 1

    engine = WorkflowEngine(linear("a"), {"echo": NodeDefinition(executor=sync)})
    snap = await engine.execute_step(engine.create_initial_snapshot("r", "a"))
    assert snap.context["a"][0].output == 42


# --- 5. branching and definition checks -------------------------------------------------


def branching() -> dict[str, Any]:
    return {
        "nodes": [
            {"id": "check", "type": "decide", "data": {"age": 20}},
            {"id": "adult", "type": "echo"},
            {"id": "minor", "type": "echo"},
        ],
        "edges": [
            {"id": "1", "source": "check", "target": "adult", "sourceHandle": "yes"},
            {"id": "2", "source": "check", "target": "minor", "sourceHandle": "no"},
        ],
    }


async def decide(data: Any, ctx: Context, payload: Any, g: Any) -> StepResult:
    return StepResult(data=data, next_handle="yes" if data["age"] >= 18 else "no")


async def test_next_handle_follows_the_matching_edge() -> None:
    engine = WorkflowEngine(branching(), {"decide": NodeDefinition(executor=decide)} | ECHO)
    snap = await engine.execute(snapshot=engine.create_initial_snapshot("r", "check"))
    assert snap.status == "completed"
    assert "adult" in snap.context and "minor" not in snap.context


async def test_a_handle_without_an_edge_completes_the_run() -> None:
    async def elsewhere(data: Any, ctx: Context, payload: Any, g: Any) -> StepResult:
        return StepResult(data=1, next_handle="maybe")

    engine = WorkflowEngine(branching(), {"decide": NodeDefinition(executor=elsewhere)} | ECHO)
    snap = await engine.execute_step(engine.create_initial_snapshot("r", "check"))
    assert snap.status == "completed" and snap.current_node_id is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda wf: wf["nodes"].append({"id": "z", "type": "nope"}), "'nope'"),
        (
            lambda wf: wf["nodes"].append({"id": "adult", "type": "echo"}),
            "duplicate node id 'adult'",
        ),
        (
            lambda wf: wf["edges"].append({"id": "3", "source": "check", "target": "ghost"}),
            "unknown node 'ghost'",
        ),
        (
            lambda wf: wf["edges"].append(
                {"id": "3", "source": "check", "target": "adult", "sourceHandle": "yes"}
            ),
            "already has an edge for 'yes' to 'adult'",
        ),
        (
            lambda wf: wf["edges"].append({"id": "1", "source": "adult", "target": "minor"}),
            "duplicate edge id '1'",
        ),
    ],
)
def test_invalid_definitions_are_rejected_naming_the_culprit(change: Any, message: str) -> None:
    wf = branching()
    change(wf)
    with pytest.raises(DefinitionError, match=message):
        WorkflowEngine(wf, {"decide": NodeDefinition(executor=decide)} | ECHO)


def test_malformed_definition_json_is_a_definition_error() -> None:
    with pytest.raises(DefinitionError, match="invalid workflow definition"):
        WorkflowEngine({"nodes": [{"type": "echo"}]}, ECHO)


def test_the_start_node_is_the_one_without_incoming_edges() -> None:
    engine = WorkflowEngine(linear("c", "a", "b"), ECHO)
    assert engine.start_node_id == "c"
    with pytest.raises(DefinitionError, match="start node 'zz'"):
        engine.create_initial_snapshot("r", "zz")


async def test_a_snapshot_at_an_unknown_node_is_refused() -> None:
    engine = WorkflowEngine(linear("a"), ECHO)
    snap = Snapshot(run_id="r", status="active", current_node_id="gone")
    with pytest.raises(DefinitionError, match="'gone'"):
        await engine.execute_step(snap)


async def test_no_current_node_completes() -> None:
    engine = WorkflowEngine(linear("a"), ECHO)
    snap = Snapshot(run_id="r", status="active", current_node_id=None, version=3)
    done = await engine.execute_step(snap)
    assert done.status == "completed" and done.version == 4


async def test_finished_runs_refuse_steps() -> None:
    engine = WorkflowEngine(linear("a"), ECHO)
    done = await engine.execute(snapshot=engine.create_initial_snapshot("r", "a"))
    with pytest.raises(RunFinished):
        await engine.execute_step(done)
    assert await engine.execute(snapshot=done) is done


# --- 6. durable waits ---------------------------------------------------------------------


async def test_sleep_records_the_result_and_waits_before_the_next_node(clock: FakeClock) -> None:
    async def nap(data: Any, ctx: Context, payload: Any, g: Any) -> StepResult:
        return StepResult.sleep(2.5, data="napped")

    engine = WorkflowEngine(
        linear("s", "after")
        | {"nodes": [{"id": "s", "type": "nap"}, {"id": "after", "type": "echo"}]},
        {"nap": NodeDefinition(executor=nap)} | ECHO,
        clock=clock,
    )
    snap = await engine.execute(snapshot=engine.create_initial_snapshot("r", "s"))
    assert snap.status == "paused"
    assert snap.wait is not None and snap.wait.kind == "sleep"
    assert snap.wait.until == clock.now + 2500 == snap.due_at()
    assert snap.current_node_id == "after" and snap.context["s"][0].output == "napped"
    clock.advance(2500)
    woke = await engine.execute_step(snap, {"ignored": True})
    assert woke.status == "completed" and woke.wait is None
    assert woke.context["after"][0].output["payload"] is None


async def test_sleep_until_an_absolute_time() -> None:
    from datetime import UTC, datetime

    when = datetime(2030, 1, 1, tzinfo=UTC)
    result = StepResult.sleep(until=when)
    assert result.wait is not None and result.wait.until == 1893456000000
    with pytest.raises(ValueError, match="timezone-aware"):
        StepResult.sleep(until=datetime(2030, 1, 1))
    with pytest.raises(ValueError, match="not both"):
        StepResult.sleep(1, until=when)


def event_workflow() -> dict[str, Any]:
    return {
        "nodes": [
            {"id": "wait", "type": "waiter"},
            {"id": "got", "type": "echo"},
            {"id": "late", "type": "echo"},
        ],
        "edges": [
            {"id": "1", "source": "wait", "target": "got"},
            {"id": "2", "source": "wait", "target": "late", "sourceHandle": "timeout"},
        ],
    }


async def waiter(data: Any, ctx: Context, payload: Any, g: Any) -> Any:
    if payload is None:
        return StepResult.wait_for_event("approval", timeout=60)
    return {"decision": payload}


async def test_an_event_wait_records_its_name_and_deadline(clock: FakeClock) -> None:
    engine = WorkflowEngine(
        event_workflow(), {"waiter": NodeDefinition(executor=waiter)} | ECHO, clock=clock
    )
    snap = await engine.execute_step(engine.create_initial_snapshot("r", "wait"))
    assert snap.status == "paused" and snap.current_node_id == "wait"
    assert snap.wait is not None
    assert (snap.wait.kind, snap.wait.event, snap.wait.until) == (
        "event",
        "approval",
        clock.now + 60_000,
    )
    resumed = await engine.execute_step(snap, "yes")
    assert resumed.current_node_id == "got" and resumed.context["wait"][0].output == {
        "decision": "yes"
    }


async def test_an_event_wait_past_its_deadline_takes_the_timeout_edge(clock: FakeClock) -> None:
    engine = WorkflowEngine(
        event_workflow(), {"waiter": NodeDefinition(executor=waiter)} | ECHO, clock=clock
    )
    snap = await engine.execute_step(engine.create_initial_snapshot("r", "wait"))
    clock.advance(60_000)
    timed_out = await engine.execute_step(snap)
    assert timed_out.status == "active" and timed_out.current_node_id == "late"
    assert (timed_out.context["wait"][0].error or "").startswith("EventTimeout")


async def test_an_event_timeout_without_a_timeout_edge_fails_the_run(clock: FakeClock) -> None:
    wf = event_workflow()
    wf["edges"] = wf["edges"][:1]
    engine = WorkflowEngine(wf, {"waiter": NodeDefinition(executor=waiter)} | ECHO, clock=clock)
    snap = await engine.execute_step(engine.create_initial_snapshot("r", "wait"))
    clock.advance(60_001)
    failed = await engine.execute_step(snap)
    assert failed.status == "failed"
    assert failed.metadata["failedReason"] == "timed out waiting for event 'approval'"


# --- 7. transforms ------------------------------------------------------------------------


async def test_expressions_read_earlier_results_and_globals_which_stay_out_of_the_snapshot(
    clock: FakeClock,
) -> None:
    seen: list[Any] = []

    async def fetch(data: Any, ctx: Context, payload: Any, g: Any) -> Any:
        return {"name": "Ada", "tags": ["x", "y"]}

    async def greet(data: Any, ctx: Context, payload: Any, g: Any) -> Any:
        seen.append(data)
        return {"sent": True}

    wf = {
        "nodes": [
            {"id": "fetch", "type": "fetch"},
            {
                "id": "greet",
                "type": "greet",
                "data": {
                    "to": "{{ fetch.last.data.name }}",
                    "text": "Hi {{ fetch.last.data.name }}, {{ len(fetch.last.data.tags) }} tags",
                    "all": "{{ fetch.all }}",
                    "token": "{{ globals.api_key }}",
                },
            },
        ],
        "edges": [{"id": "1", "source": "fetch", "target": "greet"}],
    }
    engine = WorkflowEngine(
        wf, {"fetch": NodeDefinition(executor=fetch), "greet": NodeDefinition(executor=greet)}
    )
    snap = await engine.execute(
        snapshot=engine.create_initial_snapshot("r", "fetch"), globals={"api_key": "s3cret"}
    )
    assert snap.status == "completed"
    assert seen == [
        {
            "to": "Ada",
            "text": "Hi Ada, 2 tags",
            "all": [{"name": "Ada", "tags": ["x", "y"]}],
            "token": "s3cret",
        }
    ]
    assert "s3cret" not in snap.to_json()
    assert wf["nodes"][1]["data"]["to"] == "{{ fetch.last.data.name }}"  # definition untouched


async def test_a_failing_expression_fails_the_node_without_retries() -> None:
    wf = {"nodes": [{"id": "a", "type": "echo", "data": "{{ missing.last.data }}"}]}
    defs = {"echo": NodeDefinition(executor=echo, retry_policy=RetryPolicy(max_attempts=3))}
    engine = WorkflowEngine(wf, defs)
    snap = await engine.execute_step(engine.create_initial_snapshot("r", "a"))
    assert snap.status == "failed"
    assert "unknown name 'missing'" in (snap.context["a"][0].error or "")


async def test_custom_transform_engines_run_in_a_pipeline() -> None:
    class Upper:
        async def transform(self, data: Any, context: Any, globals: Any) -> Any:
            return str(data).upper()

    class Suffix:
        async def transform(self, data: Any, context: Any, globals: Any) -> Any:
            return f"{data}!{globals['s']}"

    engine = WorkflowEngine(
        {"nodes": [{"id": "a", "type": "echo", "data": "hi"}]},
        ECHO,
        transforms=[Upper(), Suffix()],
    )
    snap = await engine.execute_step(engine.create_initial_snapshot("r", "a"), globals={"s": "?"})
    # The second transform saw globals; as a secret, the value is masked where it is recorded.
    assert snap.context["a"][0].output["data"] == "HI!***"


async def test_without_transforms_executors_cannot_mutate_the_definition() -> None:
    async def mutate(data: Any, ctx: Context, payload: Any, g: Any) -> Any:
        data["n"] = "changed"
        return data

    engine = WorkflowEngine(linear("a"), {"echo": NodeDefinition(executor=mutate)}, transforms=[])
    await engine.execute_step(engine.create_initial_snapshot("r", "a"))
    assert engine.node("a").data == {"n": "a"}


async def test_executors_cannot_mutate_node_data_that_holds_no_expression() -> None:
    async def mutate(data: Any, ctx: Context, payload: Any, g: Any) -> Any:
        data["list"].append("changed")
        data["nested"]["k"] = "changed"
        return None

    workflow = {
        "nodes": [{"id": "a", "type": "m", "data": {"list": [1], "nested": {"k": "v"}}}],
        "edges": [],
    }
    engine = WorkflowEngine(workflow, {"m": NodeDefinition(executor=mutate)})
    await engine.execute_step(engine.create_initial_snapshot("r", "a"))
    assert engine.node("a").data == {"list": [1], "nested": {"k": "v"}}


# --- 8. plugins ---------------------------------------------------------------------------


class Recorder(Plugin):
    name = "recorder"

    def __init__(self) -> None:
        self.calls: list[str] = []

    async def on_run_start(self, snapshot: Snapshot) -> None:
        self.calls.append("start")

    async def on_before_node(self, ctx: NodeContext) -> None:
        self.calls.append(f"before:{ctx.node.id}")

    async def on_after_node(self, ctx: NodeContext) -> None:
        self.calls.append(f"after:{ctx.node.id}")

    async def on_node_error(self, ctx: NodeContext) -> None:
        self.calls.append(f"error:{ctx.node.id}:{ctx.attempt}:{type(ctx.error).__name__}")

    async def on_run_complete(self, snapshot: Snapshot) -> None:
        self.calls.append("complete")

    async def on_run_pause(self, snapshot: Snapshot) -> None:
        self.calls.append("pause")


async def test_plugin_hooks_are_called_in_order() -> None:
    rec = Recorder()
    defs = {
        "echo": NodeDefinition(executor=echo),
        "flaky": NodeDefinition(
            executor=Flaky(1), retry_policy=RetryPolicy(max_attempts=2, interval=0)
        ),
    }
    wf = {
        "nodes": [{"id": "a", "type": "echo"}, {"id": "f", "type": "flaky"}],
        "edges": [{"id": "1", "source": "a", "target": "f"}],
    }
    engine = WorkflowEngine(wf, defs, plugins=[rec])
    snap = await engine.execute(snapshot=engine.create_initial_snapshot("r", "a"))
    assert snap.status == "error"
    snap = await engine.execute(snapshot=snap)
    assert snap.status == "completed"
    assert rec.calls == [
        "start",
        "before:a",
        "after:a",
        "before:f",
        "error:f:1:RuntimeError",
        "before:f",
        "after:f",
        "complete",
    ]


async def test_pause_hook_runs_when_a_node_pauses() -> None:
    rec = Recorder()

    async def pause(data: Any, ctx: Context, payload: Any, g: Any) -> Any:
        return StepResult(pause=True)

    engine = WorkflowEngine(linear("p"), {"echo": NodeDefinition(executor=pause)}, plugins=[rec])
    await engine.execute(snapshot=engine.create_initial_snapshot("r", "p"))
    assert rec.calls[-2:] == ["after:p", "pause"]


async def test_a_raising_plugin_is_logged_and_does_not_break_the_step(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Broken(Plugin):
        name = "broken"

        def on_before_node(self, ctx: NodeContext) -> None:  # a plain hook works too
            raise ValueError("plugin bug")

    rec = Recorder()
    engine = WorkflowEngine(linear("a"), ECHO, plugins=[Broken(), rec])
    with caplog.at_level(logging.ERROR, logger="refluxo.engine"):
        snap = await engine.execute_step(engine.create_initial_snapshot("r", "a"))
    assert snap.status == "completed"
    assert "before:a" in rec.calls  # the next plugin still ran
    assert "plugin broken: hook on_before_node raised" in caplog.text


async def test_a_plugin_without_a_name_is_logged_under_its_class_name(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Nameless(Plugin):
        def on_before_node(self, ctx: NodeContext) -> None:
            raise ValueError("plugin bug")

    engine = WorkflowEngine(linear("a"), ECHO, plugins=[Nameless()])
    with caplog.at_level(logging.ERROR, logger="refluxo.engine"):
        await engine.execute_step(engine.create_initial_snapshot("r", "a"))
    assert "plugin Nameless: hook on_before_node raised" in caplog.text


async def test_a_run_that_fails_calls_the_plugins_on_run_fail() -> None:
    failed: list[str] = []

    class OnFail(Plugin):
        async def on_run_fail(self, snapshot: Snapshot) -> None:
            failed.append(snapshot.metadata["failedReason"])

    async def boom(data: Any, ctx: Context, payload: Any, g: Any) -> Any:
        raise RuntimeError("boom")

    engine = WorkflowEngine(
        linear("a"), {"echo": NodeDefinition(executor=boom)}, plugins=[OnFail()]
    )
    snap = await engine.execute(snapshot=engine.create_initial_snapshot("r", "a"))
    assert snap.status == "failed"
    assert failed == [snap.metadata["failedReason"]]


# --- 9. step limit ------------------------------------------------------------------------


async def test_execute_stops_at_the_step_limit_with_the_run_failed() -> None:
    async def loop(data: Any, ctx: Context, payload: Any, g: Any) -> Any:
        return StepResult(data=ctx.count("a"), next_handle="again")

    wf = {
        "nodes": [{"id": "a", "type": "loop"}],
        "edges": [{"id": "1", "source": "a", "target": "a", "sourceHandle": "again"}],
    }
    engine = WorkflowEngine(wf, {"loop": NodeDefinition(executor=loop)})
    snap = await engine.execute(snapshot=engine.create_initial_snapshot("r", "a"), step_limit=5)
    assert snap.status == "failed"
    assert snap.metadata["failedReason"] == "step limit of 5 exceeded"
    assert len(snap.context["a"]) == 5 and snap.version == 6


async def test_retention_bounds_results_and_keeps_counts() -> None:
    async def loop(data: Any, ctx: Context, payload: Any, g: Any) -> Any:
        n = ctx.count("a")
        return StepResult(data=n, next_handle="again" if n < 49 else "out")

    wf = {
        "nodes": [
            {"id": "a", "type": "loop"},
            {"id": "b", "type": "echo", "data": "{{ a.count }}"},
        ],
        "edges": [
            {"id": "1", "source": "a", "target": "a", "sourceHandle": "again"},
            {"id": "2", "source": "a", "target": "b", "sourceHandle": "out"},
        ],
    }
    engine = WorkflowEngine(wf, {"loop": NodeDefinition(executor=loop)} | ECHO, retention=3)
    snap = await engine.execute(snapshot=engine.create_initial_snapshot("r", "a"), step_limit=100)
    assert snap.status == "completed"
    assert [r.output for r in snap.context["a"]] == [47, 48, 49]
    assert snap.counts == {"a": 50, "b": 1}
    assert snap.context["b"][0].output["data"] == 50


def forking() -> dict[str, Any]:
    return {
        "nodes": [
            {"id": "start", "type": "echo", "data": 1},
            {"id": "a", "type": "echo", "data": 2},
            {"id": "b", "type": "echo", "data": 3},
        ],
        "edges": [
            {"id": "1", "source": "start", "target": "a"},
            {"id": "2", "source": "start", "target": "b"},
        ],
    }


async def test_execute_returns_a_run_as_it_forks_with_one_branch_per_target() -> None:
    engine = WorkflowEngine(forking(), ECHO)
    snap = await engine.execute(snapshot=engine.create_initial_snapshot("r"))
    assert snap.status == "active" and snap.current_node_id is None
    assert {b.node_id: b.status for b in (snap.branches or {}).values()} == {
        "a": "active",
        "b": "active",
    }
    assert list(snap.context) == ["start"]


async def test_a_run_with_branches_is_not_stepped_as_a_whole() -> None:
    engine = WorkflowEngine(forking(), ECHO)
    forked = await engine.execute_step(engine.create_initial_snapshot("r"))
    with pytest.raises(DefinitionError, match="parallel branches"):
        await engine.execute_step(forked)
    branch = await engine.advance(forked.branch_view(next(iter(forked.branches or {}))))
    assert branch.status == "completed" and branch.results("a")[-1].output["data"] == 2


async def test_the_step_limit_calls_the_plugins_on_run_fail() -> None:
    async def loop(data: Any, ctx: Context, payload: Any, g: Any) -> Any:
        return StepResult(data=ctx.count("a"), next_handle="again")

    failed: list[Snapshot] = []

    class OnFail(Plugin):
        async def on_run_fail(self, snapshot: Snapshot) -> None:
            failed.append(snapshot)

    wf = {
        "nodes": [{"id": "a", "type": "loop"}],
        "edges": [{"id": "1", "source": "a", "target": "a", "sourceHandle": "again"}],
    }
    engine = WorkflowEngine(wf, {"loop": NodeDefinition(executor=loop)}, plugins=[OnFail()])
    snap = await engine.execute(snapshot=engine.create_initial_snapshot("r", "a"), step_limit=3)
    assert snap.status == "failed"
    assert failed == [snap]


def test_the_old_names_transform_engine_and_transform_engines_still_work_and_warn() -> None:
    import refluxo.core
    from refluxo.core import Transform

    with pytest.warns(DeprecationWarning, match="use Transform"):
        assert refluxo.core.TransformEngine is Transform
    with pytest.warns(DeprecationWarning, match="use transforms="):
        engine = WorkflowEngine(linear("a"), ECHO, transform_engines=[])
    assert engine.transforms == []


def test_dispatcher_is_kept_as_the_old_name_of_the_run_service() -> None:
    from refluxo.core import Dispatcher, RunService
    from refluxo.core.dispatcher import Dispatcher as Old

    assert Dispatcher is RunService and Old is RunService


async def test_a_plugin_with_the_old_hook_names_is_still_called_and_warned_about() -> None:
    calls: list[str] = []

    with pytest.warns(DeprecationWarning, match="name the hook on_run_") as warned:

        class Old(Plugin):
            async def on_workflow_start(self, snapshot: Snapshot) -> None:
                calls.append("start")

            def on_workflow_complete(self, snapshot: Snapshot) -> None:
                calls.append("complete")

    assert len(warned) == 2
    engine = WorkflowEngine(linear("a"), ECHO, plugins=[Old()])
    await engine.execute(snapshot=engine.create_initial_snapshot("r", "a"))
    assert calls == ["start", "complete"]
