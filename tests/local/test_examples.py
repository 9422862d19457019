"""refluxo.examples end to end on the embedded runtime: a schedule's tick starts the digest,
whose sub-workflow node runs the summary as a child run."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from refluxo.core.schedules import last_tick, tick_run_id
from refluxo.core.subflows import child_run_id
from refluxo.examples import WEEKDAY_MORNINGS, workflows
from refluxo.local.runtime import LocalRuntime
from refluxo.local.ticks import SQLiteScheduleMarks


async def test_the_scheduled_digest_runs_its_summary_child_to_the_end(tmp_path: Path) -> None:
    db = tmp_path / "dev.db"
    tick = last_tick(WEEKDAY_MORNINGS, int(time.time() * 1000))
    assert tick is not None
    # The runtime was last up just before the last weekday morning: it starts that tick.
    SQLiteScheduleMarks(db).save({"digest.weekdays": tick - 1})
    run_id = tick_run_id("digest", "weekdays", tick)
    async with LocalRuntime(workflows(), db_path=db, schedule_every_s=0.05) as runtime:
        end = time.monotonic() + 20
        while True:
            try:
                run = await runtime.store.load(run_id)
            except LookupError:
                run = None
            if run is not None and run.is_terminal:
                break
            assert time.monotonic() < end, "the digest did not finish"
            await asyncio.sleep(0.02)
        child = await runtime.store.load(child_run_id(run_id, "summarize", 1))
    assert run.status == "completed", run.metadata
    assert run.context["publish"][-1].output == {
        "text": "ops: 3 open, 4 closed, first ops-ticket-1"
    }
    assert run.metadata["children"] == [child.run_id]
    # The two branches ran, and met at the join before the sub-workflow.
    assert run.context["merge"][-1].output == {"branches": ["closed_items", "open_items"]}
    assert child.status == "completed"
    assert child.metadata["parent"] == {"runId": run_id, "node": "summarize", "depth": 1}
