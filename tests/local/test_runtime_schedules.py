"""The embedded runtime fires schedules, remembering in its file up to when it did."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from refluxo.core import NodeDefinition, Schedule, Workflow
from refluxo.core.schedules import last_tick, tick_run_id
from refluxo.local.runtime import LocalRuntime
from refluxo.local.ticks import SQLiteScheduleMarks

ONE_NODE = {"nodes": [{"id": "a", "type": "take"}], "edges": []}
YEARLY = "0 0 1 1 *"


def _take(data: Any, context: Any, payload: Any, globals: Any) -> Any:
    return payload


def workflow(catch_up: bool = True) -> Workflow:
    schedule = Schedule(cron=YEARLY, input={"why": "new year"}, catch_up=catch_up)
    nodes = {"take": NodeDefinition(executor=_take, thread=False)}
    return Workflow("yearly", ONE_NODE, nodes, schedules=[schedule])


def last_new_year_ms() -> int:
    tick = last_tick(Schedule(cron=YEARLY), int(time.time() * 1000))
    assert tick is not None
    return tick


async def test_a_tick_missed_while_the_runtime_was_down_starts_when_it_comes_back(
    tmp_path: Path,
) -> None:
    db = tmp_path / "dev.db"
    tick = last_new_year_ms()
    SQLiteScheduleMarks(db).save({"yearly.cron": tick - 3600_000})  # last up before the tick
    run_id = tick_run_id("yearly", "cron", tick)
    async with LocalRuntime([workflow()], db_path=db, schedule_every_s=0.05) as runtime:
        end = time.monotonic() + 20
        while True:
            try:
                run = await runtime.store.load(run_id)
                if run.status == "completed":
                    break
            except LookupError:
                pass
            assert time.monotonic() < end, "the missed tick was never started"
            await asyncio.sleep(0.02)
        assert run.context["a"][-1].output == {"why": "new year"}
    marks = SQLiteScheduleMarks(db).load()
    assert marks["yearly.cron"] > tick
    # Up again: the tick is remembered as started; nothing new starts.
    async with LocalRuntime([workflow()], db_path=db, schedule_every_s=0.05) as runtime:
        await runtime.fire_schedules()
        assert [r.run_id for r in await runtime.store.list_runs()] == [run_id]


async def test_catch_up_false_skips_a_tick_missed_while_down(tmp_path: Path) -> None:
    db = tmp_path / "dev.db"
    tick = last_new_year_ms()
    SQLiteScheduleMarks(db).save({"yearly.cron": tick - 3600_000})
    async with LocalRuntime([workflow(catch_up=False)], db_path=db) as runtime:
        await runtime.fire_schedules()
        assert await runtime.store.list_runs() == []
        assert SQLiteScheduleMarks(db).load()["yearly.cron"] > tick


def test_marks_only_move_forward(tmp_path: Path) -> None:
    marks = SQLiteScheduleMarks(tmp_path / "dev.db")
    marks.save({"a.cron": 2000})
    marks.save({"a.cron": 1000, "b.cron": 5})
    assert marks.load() == {"a.cron": 2000, "b.cron": 5}
    assert datetime.now(UTC).year >= 2026
