"""A run moves from a local deployment (SQLite) to one on Firestore, resumes there, and back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from refluxo.core.dispatcher import Dispatcher
from refluxo.core.memory import MemoryScheduler
from refluxo.core.model import Snapshot
from refluxo.demo import workflows
from refluxo.gcp.store import FirestoreStateStore
from refluxo.local.store import SQLiteStateStore


async def _crank(dispatcher: Dispatcher, scheduler: MemoryScheduler, run_id: str) -> Snapshot:
    """Deliver what is due, jumping the clock to each due time, until nothing is left."""
    clock: Any = dispatcher.clock
    for _ in range(100):
        due = scheduler.pop_due()
        if not due:
            upcoming = scheduler.next_due()
            if upcoming is None:
                break
            clock.now = max(clock.now, upcoming)
            continue
        for message in due:
            await dispatcher.dispatch(message)
    return await dispatcher.get(run_id)


class Clock:
    def __init__(self) -> None:
        from refluxo.core.model import now_ms

        self.now = now_ms()

    def __call__(self) -> int:
        return self.now


def _deployment(store: Any) -> tuple[Dispatcher, MemoryScheduler]:
    clock = Clock()
    scheduler = MemoryScheduler(clock=clock)
    return Dispatcher(workflows(), store, scheduler, clock=clock), scheduler


async def test_a_run_moves_from_sqlite_to_firestore_and_back(
    tmp_path: Path, firestore_client: Any
) -> None:
    local, local_steps = _deployment(SQLiteStateStore(tmp_path / "local.db"))
    cloud, cloud_steps = _deployment(FirestoreStateStore(firestore_client))
    await local.start("demo", run_id="trip", input={"customer": "Ivo"})
    waiting = await _crank(local, local_steps, "trip")
    assert waiting.wait is not None and waiting.wait.event == "approval"

    exported = await local.export_run("trip", version=waiting.version, to="firestore")
    await cloud.import_run(exported, source="sqlite")
    assert (await local.get("trip")).metadata["failedReason"] == "moved"
    there = await _crank(cloud, cloud_steps, "trip")  # it waits there as it did here
    assert (
        there.status == "paused"
        and there.wait is not None
        and there.metadata["movedFrom"]["from"] == "sqlite"
    )

    back = await cloud.export_run("trip", version=there.version, to="sqlite-2")
    home, home_steps = _deployment(SQLiteStateStore(tmp_path / "home.db"))
    await home.import_run(back, source="firestore")
    await home.send_event("trip", {"approved": True}, "approval")
    done = await _crank(home, home_steps, "trip")
    assert done.status == "completed" and "ship" in done.context
    assert done.context["order"][-1].output["customer"] == "Ivo"
    assert (await cloud.get("trip")).metadata["movedTo"] == "sqlite-2"
