"""Scheduled starts: each tick of a schedule starts one run, whatever delivers the tick."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from refluxo.core import DefinitionError, NodeDefinition, Schedule
from refluxo.core.dispatcher import Dispatcher, Workflow
from refluxo.core.memory import MemoryScheduler, MemoryStateStore
from refluxo.core.ports import StateStore
from refluxo.core.schedules import last_tick, nearest_tick, ticks_between
from tests.conftest import FakeClock


def _take(data: Any, context: Any, payload: Any, globals: Any) -> Any:
    return payload


NODES = {"take": NodeDefinition(executor=_take, thread=False)}
ONE_NODE = {"nodes": [{"id": "a", "type": "take"}], "edges": []}


def ms(*parts: int) -> int:
    return round(datetime(*parts, tzinfo=UTC).timestamp() * 1000)  # type: ignore[misc]


def deployment(clock: FakeClock, *schedules: Schedule) -> tuple[Dispatcher, MemoryStateStore]:
    store = MemoryStateStore(clock=clock)
    return on(store, clock, *schedules), store


def on(store: StateStore, clock: FakeClock, *schedules: Schedule) -> Dispatcher:
    wf = Workflow("report", ONE_NODE, NODES, clock=clock, schedules=list(schedules))
    return Dispatcher([wf], store, MemoryScheduler(clock=clock), clock=clock)


def test_ticks_follow_the_time_zone_across_a_daylight_saving_change() -> None:
    weekdays = Schedule(cron="0 9 * * 1-5", timezone="Europe/Lisbon")
    # Lisbon moves from UTC+0 to UTC+1 on Sunday 2026-03-29.
    ticks = ticks_between(weekdays, ms(2026, 3, 26, 12), ms(2026, 3, 31, 12))
    assert ticks == [ms(2026, 3, 27, 9), ms(2026, 3, 30, 8), ms(2026, 3, 31, 8)]
    assert last_tick(weekdays, ms(2026, 3, 30, 8)) == ms(2026, 3, 30, 8)
    assert nearest_tick(weekdays, ms(2026, 3, 30, 7, 59, 58)) == ms(2026, 3, 30, 8)
    assert nearest_tick(weekdays, ms(2026, 3, 30, 8, 0, 30)) == ms(2026, 3, 30, 8)


async def test_a_tick_delivered_twice_starts_one_run(clock: FakeClock, store: StateStore) -> None:
    d = on(store, clock, Schedule(cron="*/5 * * * *", input={"kind": "daily"}))
    tick = ms(2026, 11, 30, 9, 5)
    first, created = await d.fire_tick("report", "cron", tick)
    again, created_again = await d.fire_tick("report", "cron", tick)
    assert (created, created_again) == (True, False)
    assert first.run_id == again.run_id == "report.cron.20261130T090500Z"
    assert again.version == 0 and again.metadata == first.metadata
    assert first.input == {"kind": "daily"}
    assert first.metadata["schedule"] == {"name": "cron", "tick": tick}


async def test_ticks_missed_while_down_are_started_once_when_it_comes_back(
    clock: FakeClock,
) -> None:
    d, store = deployment(clock, Schedule(cron="0 * * * *", name="hourly"))
    clock.now = ms(2026, 11, 30, 12, 30)
    marks = await d.fire_due({"report.hourly": ms(2026, 11, 30, 9, 30)})
    assert marks == {"report.hourly": clock.now}
    started = sorted(store.run_ids())
    assert started == [
        "report.hourly.20261130T100000Z",
        "report.hourly.20261130T110000Z",
        "report.hourly.20261130T120000Z",
    ]
    # The marks were lost (a crash before saving them): the same ticks start nothing new.
    await d.fire_due({"report.hourly": ms(2026, 11, 30, 9, 30)})
    assert sorted(store.run_ids()) == started


async def test_catch_up_false_skips_the_ticks_missed_while_down(clock: FakeClock) -> None:
    d, store = deployment(clock, Schedule(cron="0 * * * *", catch_up=False))
    clock.now = ms(2026, 11, 30, 12, 0, 30)
    await d.fire_due({"report.cron": ms(2026, 11, 30, 9, 30)})
    assert store.run_ids() == ["report.cron.20261130T120000Z"]  # on time, not missed


async def test_a_new_schedule_does_not_start_the_ticks_before_it_was_deployed(
    clock: FakeClock,
) -> None:
    d, store = deployment(clock, Schedule(cron="* * * * *"))
    marks = await d.fire_due({})
    assert store.run_ids() == [] and marks == {"report.cron": clock.now}


@pytest.mark.parametrize(
    "schedule",
    [
        Schedule(cron="61 * * * *"),
        Schedule(cron="* * * *"),
        Schedule(cron="0 9 * * *", timezone="Mars/Olympus"),
        Schedule(cron="0 9 * * *", name="bad name"),
        Schedule(cron="0 9 * * *", input=float("nan")),
    ],
)
def test_an_invalid_schedule_is_refused_when_the_workflow_is_built(schedule: Schedule) -> None:
    with pytest.raises(DefinitionError):
        Workflow("report", ONE_NODE, NODES, schedules=[schedule])


def test_two_schedules_of_one_name_are_refused() -> None:
    with pytest.raises(DefinitionError, match="two schedules"):
        Workflow(
            "report",
            ONE_NODE,
            NODES,
            schedules=[Schedule(cron="0 9 * * *", name="a"), Schedule(cron="0 10 * * *", name="a")],
        )


def test_a_trigger_a_little_early_or_late_stands_for_the_nearest_tick() -> None:
    every_minute = Schedule(cron="* * * * *")
    assert nearest_tick(every_minute, ms(2026, 11, 30, 9, 0, 40)) == ms(2026, 11, 30, 9, 1)
    assert nearest_tick(every_minute, ms(2026, 11, 30, 9, 0, 20)) == ms(2026, 11, 30, 9, 0)


async def test_a_long_absence_starts_only_the_newest_missed_ticks(clock: FakeClock) -> None:
    d, store = deployment(clock, Schedule(cron="* * * * *", name="minutely"))
    clock.now = ms(2026, 11, 30, 12, 0, 30)
    await d.fire_due({"report.minutely": ms(2025, 11, 30, 12)})  # a year down
    started = sorted(store.run_ids())
    assert len(started) == 24
    assert started[0] == "report.minutely.20261130T113700Z"
    assert started[-1] == "report.minutely.20261130T120000Z"
