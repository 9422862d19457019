"""``refluxo replay``: a run's snapshot file is run again offline with the app's executors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from refluxo.core.dispatcher import Workflow
from refluxo.core.memory import MemoryScheduler, MemoryStateStore
from refluxo.core.model import Snapshot
from refluxo.local.replay import replay

from . import ops_app

HERE = Path(__file__).parent


async def failed_snapshot() -> Snapshot:
    from refluxo.core.dispatcher import Dispatcher

    store, scheduler = MemoryStateStore(), MemoryScheduler()
    dispatcher = Dispatcher(ops_app.workflows(), store, scheduler)
    ops_app.BROKEN["on"] = True
    await dispatcher.start("ops", run_id="f-1", input={"item": "lamp"})
    while due := scheduler.pop_due():
        for message in due:
            await dispatcher.dispatch(message)
    snap = await store.load("f-1")
    assert snap.status == "failed"
    return snap


def _workflows() -> list[Workflow]:
    return ops_app.workflows()


async def test_replay_continues_a_failed_run_with_the_fixed_code() -> None:
    snap = await failed_snapshot()
    ops_app.BROKEN["on"] = False
    try:
        done = await replay(_workflows(), snap)
    finally:
        ops_app.BROKEN["on"] = True
    assert done.status == "completed"
    assert done.context["done"][-1].output == {"item": "lamp"}


async def test_replay_from_a_node_with_a_payload() -> None:
    snap = await failed_snapshot()
    ops_app.BROKEN["on"] = False
    try:
        done = await replay(_workflows(), snap, from_node="check", payload={"p": 1})
    finally:
        ops_app.BROKEN["on"] = True
    assert done.status == "completed" and done.context["check"][-1].output["payload"] == {"p": 1}


async def test_replay_skips_the_waits_of_the_demo_and_delivers_the_event() -> None:
    from refluxo.demo import workflows

    start = Snapshot.model_validate(
        {
            "workflowId": "d-1",
            "status": "active",
            "currentNodeId": "order",
            "definition": {"name": "demo", "hash": workflows()[0].ref.hash},
            "input": {"customer": "Kim"},
            "inputPending": True,
        }
    )
    waiting = await replay(workflows(), start)
    assert waiting.status == "paused" and waiting.wait is not None  # the approval
    done = await replay(workflows(), waiting, payload={"approved": True})
    assert done.status == "completed" and "ship" in done.context


def test_the_replay_command_prints_the_timeline_and_fails_with_the_run(tmp_path: Path) -> None:
    import asyncio

    snap = asyncio.run(failed_snapshot())
    file = tmp_path / "run.json"
    file.write_text(json.dumps({"snapshot": snap.to_dict()}))
    # ops_app's switch is on in the new process: the replay fails again, and says so.
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "refluxo.local.cli",
            "replay",
            str(file),
            "--app",
            "tests.local.ops_app",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=HERE.parent.parent,
    )
    assert out.returncode == 1, out.stderr
    assert "run f-1 (workflow ops)" in out.stdout and "the checker is down" in out.stdout
    shown = subprocess.run(
        [
            sys.executable,
            "-m",
            "refluxo.local.cli",
            "replay",
            str(file),
            "--app",
            "tests.local.ops_app",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=HERE.parent.parent,
    )
    assert json.loads(shown.stdout)["now"]["status"] == "failed"
