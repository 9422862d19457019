"""Run inside Pyodide against the deployed bundle: runs whose delivery was lost are recovered.

The bundle's Worker consumes its steps queue (Miniflare's broker); a run is started through a
dispatcher whose scheduler drops every message, as when a delivery is lost (dead-lettered and
dropped, or a crash between save and send). The Worker's cron trigger and its dead-letter
consumer then bring the run to completion.
"""

import asyncio
import time

import harness_env
from harness_env import env

from refluxo.cloudflare.worker import RefluxoWorker, WorkerSettings
from refluxo.core import MemoryScheduler, RunService
from refluxo.core.model import DispatchMessage

SETTINGS = WorkerSettings.from_env(env)
DEAD_LETTERS = SETTINGS.dead_letter_queue


def stranded_dispatcher():
    worker = RefluxoWorker.from_env(env, settings=SETTINGS)
    workflows = worker.dispatcher.workflows.values()
    return RunService(workflows, worker.dispatcher.store, MemoryScheduler())


async def completed(dispatcher, run_id, within=30.0):
    deadline = time.monotonic() + within
    while True:
        snap = await dispatcher.get(run_id)
        if snap.status == "completed":
            return snap
        assert time.monotonic() < deadline, f"{run_id} not completed: {snap.status}"
        await asyncio.sleep(0.05)


async def test_the_cron_trigger_schedules_a_run_whose_delivery_was_lost():
    lost = stranded_dispatcher()
    await lost.start("hello", run_id="stranded-cron")
    assert (await lost.get("stranded-cron")).status == "active"
    outcome = await harness_env.trigger_scheduled("*/5 * * * *", 1_700_000_000_000)
    assert outcome["error"] is None, outcome["error"]
    assert (outcome["cron"], outcome["scheduledTime"]) == ("*/5 * * * *", 1_700_000_000_000)
    await completed(lost, "stranded-cron")


async def test_a_dead_letter_schedules_its_run_again():
    lost = stranded_dispatcher()
    await lost.start("hello", run_id="stranded-dlq")
    body = DispatchMessage(run_id="stranded-dlq", version=0).to_dict()
    result = await harness_env.deliver_batch(DEAD_LETTERS, [{"id": "d1", "body": body}])
    assert result["error"] is None, result["error"]
    assert result["ops"] == [{"op": "ack", "id": "d1"}]
    await completed(lost, "stranded-dlq")


async def test_a_dead_letter_of_a_finished_run_changes_nothing():
    dispatcher = stranded_dispatcher()
    before = await dispatcher.get("stranded-dlq")
    body = DispatchMessage(run_id="stranded-dlq", version=0).to_dict()
    result = await harness_env.deliver_batch(DEAD_LETTERS, [{"id": "d2", "body": body}])
    assert result["ops"] == [{"op": "ack", "id": "d2"}]
    assert (await dispatcher.get("stranded-dlq")).version == before.version


await harness_env.run_tests()  # noqa: F704 - `harness.mjs run` allows top-level await
