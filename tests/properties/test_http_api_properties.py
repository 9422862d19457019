"""Generated requests and interleavings against the HTTP API: a run is never wedged or poisoned.

Hypothesis generates request bodies (start, event, cancel: deep nesting, unicode with lone
surrogates, numbers at the edges, NaN and Infinity, sizes near each limit, garbage bytes) and
random interleavings of deliveries (duplicated and late ones too), events, cancels and the
passing of time against one run. After every request and at the end it asserts:

* every answer is strict JSON with a 2xx or 4xx status, never a 5xx;
* the stored run is readable, and its version only grew;
* driven to the end (time passes, every due delivery is made), the run ends completed or
  failed (a cancel is a failure with a reason);
* no node has a successful result recorded twice.

The number of examples is bounded so that the suite runs in seconds.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from refluxo.core import NodeDefinition, RetryPolicy, RunNotFound, StepResult
from refluxo.core.codec import Limits
from refluxo.core.dispatcher import DispatchResult, RunService, Workflow
from refluxo.core.http import HttpApi, HttpRequest
from refluxo.core.memory import MemoryScheduler, MemoryStateStore
from refluxo.core.model import DispatchMessage
from refluxo.core.ports import StateStore
from refluxo.testing import run_to_end
from tests.conftest import FakeClock

RUN = "r1"
STORE_MAX_BYTES = 12_000
MAX_BODY_BYTES = 3_000
LIMITS = Limits(max_depth=16, max_inbox_events=4, max_inbox_bytes=1_500, max_text_chars=40)

DEFINITION = {
    "nodes": [
        {"id": "first", "type": "first"},
        {"id": "approval", "type": "approval"},
        {"id": "end", "type": "end"},
    ],
    "edges": [
        {"id": "e1", "source": "first", "target": "approval"},
        {"id": "e2", "source": "approval", "target": "end"},
        {"id": "e3", "source": "approval", "target": "end", "sourceHandle": "timeout"},
    ],
}


async def first(data: Any, ctx: Any, payload: Any, g: Any) -> Any:
    # Echoes the run's input: an odd input becomes an odd output.
    if isinstance(payload, dict) and payload.get("fail"):
        raise RuntimeError("asked to fail")
    return payload


async def approval(data: Any, ctx: Any, payload: Any, g: Any) -> Any:
    if payload is None:
        return StepResult.wait_for_event("go", timeout=60)
    return {"approved": payload}


async def end(data: Any, ctx: Any, payload: Any, g: Any) -> Any:
    return ctx.last("approval")


NODES = {
    "first": NodeDefinition(first, retry_policy=RetryPolicy(max_attempts=2, interval=1000)),
    "approval": NodeDefinition(approval),
    "end": NodeDefinition(end),
}

# --- generated values -----------------------------------------------------------------------

_edge_numbers = st.sampled_from(
    [0, -0.0, 1, -1, 2**53, 2**53 + 1, -(2**63), 2**64, 10**400, 1e308, 5e-324, 0.1]
)
_odd_strings = st.sampled_from(["", "\ud800", "a\udfffb", "\u2028", "\x00", "é" * 30, "🎉"])
_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | _edge_numbers
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
    | _odd_strings
)
_values = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=6) | _odd_strings, inner, max_size=4)
    ),
    max_leaves=12,
)


@st.composite
def _nested(draw: st.DrawFn) -> str:
    """JSON text nested near the limits: the depth limit, and past what parsers read."""
    depth = draw(st.sampled_from([LIMITS.max_depth - 1, LIMITS.max_depth, LIMITS.max_depth + 1]))
    depth = draw(st.sampled_from([depth, 199, 255, 1_400]))
    opener, closer = draw(st.sampled_from([("[", "]"), ('{"k":', "}")]))
    return opener * depth + "1" + closer * depth


@st.composite
def _value_text(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(["value", "value", "nested", "big"]))
    if kind == "nested":
        return draw(_nested())
    if kind == "big":
        size = draw(st.sampled_from([100, 1_400, 1_600, 2_900, 3_100]))
        return json.dumps("x" * size)
    # allow_nan stays on: clients do send NaN and Infinity tokens.
    return json.dumps(draw(_values), ensure_ascii=draw(st.booleans()))


def _object(fields: dict[str, str]) -> bytes:
    return ("{" + ",".join(f"{json.dumps(k)}:{v}" for k, v in fields.items()) + "}").encode(
        "utf-8", "surrogatepass"
    )


_names = st.sampled_from(["go", "comment", None, "x" * 41, "\ud800"])
_ids = st.sampled_from(["e1", "e2", "e3", None])


@st.composite
def _event_body(draw: st.DrawFn) -> bytes:
    if draw(st.integers(0, 20)) == 0:
        return draw(st.binary(max_size=30))
    fields: dict[str, str] = {}
    if draw(st.integers(0, 10)) > 0:
        fields["payload"] = draw(_value_text())
    name, event_id = draw(_names), draw(_ids)
    if name is not None:
        fields["name"] = json.dumps(name)
    if event_id is not None:
        fields["id"] = json.dumps(event_id)
    return _object(fields)


@st.composite
def _start_body(draw: st.DrawFn, run_id: str | None = None) -> bytes:
    ids = [RUN, RUN, "r2", "bad id", "\ud800"]
    fields = {"id": json.dumps(run_id or draw(st.sampled_from(ids)))}
    if draw(st.booleans()):
        fields["input"] = draw(_value_text() | st.just('{"fail": true}'))
    return _object(fields)


_plain_event = st.builds(
    lambda payload, name, event_id: json.dumps(
        {
            "payload": payload,
            **({"name": name} if name else {}),
            **({"id": event_id} if event_id else {}),
        }
    ).encode(),
    st.none() | st.integers() | st.text(max_size=400),
    st.sampled_from(["go", "comment", "comment", None]),
    _ids,
)

_cancel_body = st.one_of(
    st.just(b""),
    st.builds(lambda r: json.dumps({"reason": r}).encode(), st.text(max_size=1_200)),
    st.just(b'{"reason": "\\ud800"}'),
    st.just(b'{"reason": 5}'),
)

_operations = st.lists(
    st.one_of(
        st.tuples(st.just("start"), _start_body()),
        st.tuples(st.just("event"), _event_body()),
        st.tuples(st.just("event"), _plain_event),
        st.tuples(st.just("event"), _plain_event),
        st.tuples(st.just("cancel"), _cancel_body),
        st.tuples(st.just("deliver"), st.just(b"")),
        st.tuples(st.just("deliver"), st.just(b"")),
        st.tuples(st.just("redeliver"), st.integers(0, 50)),
        st.tuples(st.just("advance"), st.sampled_from([500, 1_000, 30_000, 61_000])),
        st.tuples(st.just("get"), st.just(b"")),
    ),
    max_size=16,
)

# --- the driver -----------------------------------------------------------------------------


def _strict(raw: bytes) -> Any:
    def refuse(token: str) -> Any:
        raise AssertionError(f"an answer holds the non-standard token {token}")

    return json.loads(raw, parse_constant=refuse)


class Scenario:
    def __init__(self, store: StateStore) -> None:
        self.clock = FakeClock()
        self.store = store
        self.scheduler = MemoryScheduler(clock=self.clock)
        workflow = Workflow("wf", DEFINITION, NODES, clock=self.clock)
        self.dispatcher = RunService(
            [workflow], store, self.scheduler, clock=self.clock, limits=LIMITS
        )
        self.api = HttpApi(self.dispatcher, max_body_bytes=MAX_BODY_BYTES)
        self.delivered: list[DispatchMessage] = []
        self.version = -1

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, Any]:
        response = await self.api.handle(HttpRequest(method, path, body))
        answer = _strict(response.body)
        code = answer["error"]["code"] if isinstance(answer, dict) and "error" in answer else ""
        event(f"{path.split('/')[-1]}: {response.status} {code}".strip())
        assert 200 <= response.status < 500, (method, path, body[:200], answer)
        await self.check()
        return response.status, answer

    async def check(self) -> None:
        try:
            run = await self.store.load(RUN)
        except RunNotFound:
            return
        assert run.version >= self.version, "the stored version went back"
        self.version = run.version
        for node, results in run.context.items():
            ok = [r for r in results if r.error is None]
            assert len(ok) <= 1, f"node {node} has {len(ok)} successful results"

    async def deliver(self) -> None:
        for message in self.scheduler.pop_due():
            self.delivered.append(message)
            await self.dispatcher.dispatch(message)
        await self.check()

    async def apply(self, op: str, arg: Any) -> None:
        if op == "start":
            await self.request("POST", "/workflows/wf/runs", arg)
        elif op == "event":
            await self.request("POST", f"/runs/{RUN}/events", arg)
        elif op == "cancel":
            await self.request("POST", f"/runs/{RUN}/cancel", arg)
        elif op == "get":
            await self.request("GET", f"/runs/{RUN}")
        elif op == "deliver":
            await self.deliver()
        elif op == "redeliver" and self.delivered:
            # A duplicate or late delivery of a message already handled.
            await self.dispatcher.dispatch(self.delivered[arg % len(self.delivered)])
            await self.check()
        elif op == "advance":
            self.clock.advance(arg)
            await self.deliver()

    async def drive_to_the_end(self) -> None:
        async def checked(d: RunService, message: DispatchMessage) -> list[DispatchResult]:
            self.delivered.append(message)
            result = await d.dispatch(message)
            await self.check()
            return [result]

        await run_to_end(
            self.dispatcher, self.scheduler, clock=self.clock, deliver=checked, max_messages=100
        )
        try:
            run = await self.store.load(RUN)
        except RunNotFound:
            return
        assert run.status in ("completed", "failed"), (run.status, run.wait, run.metadata)
        event(f"run ended {run.status}" + (" (cancelled)" if run.metadata.get("cancelled") else ""))
        if run.status == "failed":
            assert run.metadata.get("failedReason")
        status, answer = await self.request("GET", f"/runs/{RUN}")
        assert status == 200 and answer["version"] == run.version


async def _play(store: StateStore, start: bytes, operations: list[tuple[str, Any]]) -> None:
    scenario = Scenario(store)
    await scenario.request("POST", "/workflows/wf/runs", start)
    for op, arg in operations:
        await scenario.apply(op, arg)
    await scenario.drive_to_the_end()


_SETTINGS = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@_SETTINGS
@given(start=_start_body(RUN), operations=_operations)
def test_no_generated_requests_or_interleaving_wedge_a_run_on_the_memory_store(
    start: bytes, operations: list[tuple[str, Any]]
) -> None:
    asyncio.run(_play(MemoryStateStore(max_bytes=STORE_MAX_BYTES), start, operations))


@settings(_SETTINGS, max_examples=100)
@given(start=_start_body(RUN), operations=_operations)
def test_no_generated_requests_or_interleaving_wedge_a_run_on_sqlite(
    start: bytes, operations: list[tuple[str, Any]]
) -> None:
    from refluxo.local import SQLiteStateStore

    with tempfile.TemporaryDirectory() as folder:
        store = SQLiteStateStore(Path(folder) / "runs.db", max_bytes=STORE_MAX_BYTES)
        try:
            asyncio.run(_play(store, start, operations))
        finally:
            store.close()
