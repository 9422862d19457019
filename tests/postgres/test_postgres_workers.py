"""Three `refluxo worker` processes on one database, one killed with SIGKILL mid-run: every run
finishes, and every step is recorded once."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from typing import Any

import pytest
from psycopg_pool import AsyncConnectionPool

from refluxo.core.dispatcher import Dispatcher
from refluxo.core.model import now_ms
from refluxo.postgres import PostgresScheduler, PostgresStateStore
from tests.postgres.worker_app import STEPS, workflows

RUNS = 24
DEADLINE_S = 90.0


def _worker(url: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable, "-m", "refluxo.local.cli", "worker", "--postgres", url,
            "--app", "tests.postgres.worker_app", "--concurrency", "4", "--lease", "2",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip


async def _poll(predicate: Any, what: str) -> None:
    deadline = now_ms() + DEADLINE_S * 1000
    while not await predicate():
        if now_ms() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def test_three_workers_with_one_killed_mid_run_lose_nothing_and_record_nothing_twice(
    pg_url: str, pool: AsyncConnectionPool[Any]
) -> None:
    store = PostgresStateStore(pool)
    scheduler = PostgresScheduler(pool)
    dispatcher = Dispatcher(workflows(), store, scheduler)
    for i in range(RUNS):
        await dispatcher.start("chain", run_id=f"run-{i}")
    workers = [_worker(pg_url) for _ in range(3)]
    victim = workers[0]
    try:

        async def pids_by_run() -> dict[str, set[int]]:
            seen: dict[str, set[int]] = {}
            for i in range(RUNS):
                snap = await store.load(f"run-{i}")
                seen[snap.workflow_id] = {
                    r.output["pid"] for results in snap.context.values() for r in results
                }
            return seen

        async def victim_worked() -> bool:
            return any(victim.pid in pids for pids in (await pids_by_run()).values())

        await _poll(victim_worked, "the victim to record a step")
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait()
        unfinished = [r for r in await store.list_runs(limit=RUNS) if r.status != "completed"]
        assert unfinished, "every run finished before the kill: nothing was mid-run"

        async def all_completed() -> bool:
            runs = await store.list_runs(limit=RUNS)
            return len(runs) == RUNS and all(r.status == "completed" for r in runs)

        await _poll(all_completed, "every run to complete after the kill")
        for i in range(RUNS):
            snap = await store.load(f"run-{i}")
            assert snap.status == "completed"
            # Each step recorded once, in order, whichever worker ran it.
            assert {node: len(results) for node, results in snap.context.items()} == {
                f"s{n}": 1 for n in range(STEPS)
            }
            assert [snap.context[f"s{n}"][0].output["i"] for n in range(STEPS)] == list(
                range(STEPS)
            )
        # The victim died holding leases: they expired and other workers delivered them.
        taken_over = [
            m for m in await scheduler.list_messages("done") if m.attempts and m.last_error
        ]
        assert taken_over
        assert {m.last_error for m in taken_over} == {"its worker stopped renewing the lease"}
        survivors = {w.pid for w in workers[1:]}
        ran = set().union(*(await pids_by_run()).values())
        assert ran <= survivors | {victim.pid}
        assert ran & survivors  # the survivors took over
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
        for worker in workers:
            try:
                worker.wait(timeout=20)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
