"""POST /_cron: the platform timer starts the run of a schedule's tick, once per tick."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from refluxo.core import Dispatcher, MemoryScheduler, MemoryStateStore, Schedule, Workflow
from refluxo.core.http import HttpApi, HttpRequest, bearer_token
from refluxo.core.schedules import tick_run_id
from refluxo.examples import NODES, SUMMARY
from tests.conftest import FakeClock

AUTH = {"authorization": "Bearer sched"}


def ms(*parts: int) -> int:
    return round(datetime(*parts, tzinfo=UTC).timestamp() * 1000)  # type: ignore[misc]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(ms(2026, 11, 30, 9, 0, 2))


@pytest.fixture
def api(clock: FakeClock) -> HttpApi:
    hourly = Schedule(cron="0 * * * *", input={"team": "ops"}, name="hourly")
    wf = Workflow("summary", SUMMARY, NODES, clock=clock, schedules=[hourly])
    store = MemoryStateStore(clock=clock)
    dispatcher = Dispatcher([wf], store, MemoryScheduler(clock=clock), clock=clock)
    return HttpApi(dispatcher, dispatch_auth=bearer_token("sched"))


async def call(api: HttpApi, body: Any, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    raw = json.dumps(body).encode()
    response = await api.handle(
        HttpRequest("POST", "/_cron", raw, AUTH if headers is None else headers)
    )
    return response.status, json.loads(response.body)


async def test_a_cron_call_twice_for_one_tick_starts_one_run(api: HttpApi) -> None:
    body = {"workflow": "summary", "schedule": "hourly"}
    first = await call(api, body)
    again = await call(api, body)
    run_id = tick_run_id("summary", "hourly", ms(2026, 11, 30, 9))
    assert first == (200, {"runId": run_id, "created": True, "tick": ms(2026, 11, 30, 9)})
    assert again == (200, {"runId": run_id, "created": False, "tick": ms(2026, 11, 30, 9)})
    store = api.dispatcher.store
    assert isinstance(store, MemoryStateStore)
    assert store.run_ids() == [run_id]


async def test_cloud_schedulers_schedule_time_header_names_the_tick(api: HttpApi) -> None:
    headers = {**AUTH, "X-CloudScheduler-ScheduleTime": "2026-11-30T08:00:00Z"}
    status, body = await call(api, {"workflow": "summary", "schedule": "hourly"}, headers)
    assert (status, body["tick"]) == (200, ms(2026, 11, 30, 8))


@pytest.mark.parametrize(
    ("body", "headers", "status"),
    [
        ({"workflow": "summary", "schedule": "hourly"}, {}, 401),
        ({"workflow": "summary", "schedule": "nope"}, AUTH, 404),
        ({"workflow": "nope", "schedule": "hourly"}, AUTH, 404),
        ({"workflow": "summary", "schedule": "hourly", "tick": 5}, AUTH, 400),
        ({"workflow": "summary", "schedule": "hourly", "tick": 4102444800000}, AUTH, 400),
        ({"workflow": "summary"}, AUTH, 400),
        (
            {"workflow": "summary", "schedule": "hourly"},
            {**AUTH, "X-CloudScheduler-ScheduleTime": "yesterday"},
            400,
        ),
    ],
)
async def test_a_bad_cron_call_gets_a_4xx_and_starts_nothing(
    api: HttpApi, body: Any, headers: dict[str, str], status: int
) -> None:
    got, answer = await call(api, body, headers)
    assert got == status and "error" in answer
    store = api.dispatcher.store
    assert isinstance(store, MemoryStateStore)
    assert store.run_ids() == []


async def test_cron_is_refused_where_no_scheduler_credential_is_set(clock: FakeClock) -> None:
    wf = Workflow("summary", SUMMARY, NODES, schedules=[Schedule(cron="0 * * * *")])
    api = HttpApi(Dispatcher([wf], MemoryStateStore(), MemoryScheduler()))
    status, _ = await call(api, {"workflow": "summary", "schedule": "cron"})
    assert status == 403
