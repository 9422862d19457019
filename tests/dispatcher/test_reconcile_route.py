"""POST /_reconcile: the platform's timer asks for lost deliveries, with the scheduler's
credential; bad input gets a clear 4xx and schedules nothing."""

from __future__ import annotations

import json
from typing import Any

import pytest

from refluxo.core.http import HttpApi, HttpRequest, bearer_token
from refluxo.core.memory import MemoryStateStore
from refluxo.core.ports import StateStore
from refluxo.testing.harness import Harness
from tests.conftest import FakeClock

AUTH = {"authorization": "Bearer sched"}


async def call(api: HttpApi, body: Any = None, headers: Any = AUTH) -> tuple[int, Any]:
    raw = b"" if body is None else json.dumps(body).encode()
    response = await api.handle(HttpRequest("POST", "/_reconcile", raw, headers))
    return response.status, json.loads(response.body)


async def stranded(store: StateStore, clock: FakeClock) -> Harness:
    h = Harness(store, clock)
    await h.dispatcher.start("demo", run_id="lost")
    h.scheduler._heap.clear()  # its only delivery is gone
    clock.advance(600_000)
    return h


async def test_reconcile_schedules_the_runs_whose_delivery_was_lost(
    store: StateStore, clock: FakeClock
) -> None:
    h = await stranded(store, clock)
    api = HttpApi(h.dispatcher, dispatch_auth=bearer_token("sched"))
    assert await call(api, {"graceMs": 900_000}) == (200, {"scheduled": []})
    assert await call(api) == (200, {"scheduled": ["lost"]})  # default grace: five minutes
    await h.crank(until_waiting="lost")
    assert (await store.load("lost")).current_node_id == "approval"


@pytest.mark.parametrize(
    ("body", "headers", "status", "code"),
    [
        (None, {}, 401, "unauthorized"),
        (None, {"authorization": "Bearer api"}, 401, "unauthorized"),
        ({"graceMs": -1}, AUTH, 400, "invalid_request"),
        ({"graceMs": "0"}, AUTH, 400, "invalid_request"),
        ({"graceMs": True}, AUTH, 400, "invalid_request"),
        ({"limit": 0}, AUTH, 400, "invalid_request"),
        ({"limit": 10**9}, AUTH, 400, "invalid_request"),
        ({"every": 1}, AUTH, 400, "invalid_request"),
        ([1], AUTH, 400, "invalid_json"),
    ],
)
async def test_bad_reconcile_requests_get_a_4xx_and_schedule_nothing(
    clock: FakeClock, body: Any, headers: Any, status: int, code: str
) -> None:
    h = await stranded(MemoryStateStore(clock=clock), clock)
    api = HttpApi(h.dispatcher, api_token="api", dispatch_auth=bearer_token("sched"))
    got, answer = await call(api, body, headers)
    assert (got, answer["error"]["code"]) == (status, code)
    assert h.scheduler.pending() == []


async def test_reconcile_is_refused_without_a_scheduler_credential_or_a_due_runs_store(
    clock: FakeClock,
) -> None:
    h = await stranded(MemoryStateStore(clock=clock), clock)
    got, answer = await call(HttpApi(h.dispatcher))
    assert (got, answer["error"]["code"]) == (403, "forbidden")

    class Plain:
        def __init__(self) -> None:
            inner = MemoryStateStore(clock=clock)
            self.create, self.load, self.save = inner.create, inner.load, inner.save

    plain = Harness(Plain(), clock)  # type: ignore[arg-type]
    api = HttpApi(plain.dispatcher, dispatch_auth=bearer_token("sched"))
    got, answer = await call(api)
    assert (got, answer["error"]["code"]) == (501, "not_implemented")
