"""After ``kill -9``: how long the messages a dead process had leased wait before they move."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from refluxo.core.model import DispatchMessage
from refluxo.local.scheduler import SQLiteScheduler, _host
from tests.local.test_dev_executors import Dev

pytestmark = pytest.mark.external_service

LONG_LEASE_MS = 600_000  # far longer than any deadline below: only a release moves the message

# A worker loop that leases one message, announces it, and hangs in its handler.
HOLDER = textwrap.dedent(
    """
    import asyncio, sys
    from refluxo.core.model import DispatchMessage
    from refluxo.local.scheduler import SQLiteScheduler

    async def main(path: str) -> None:
        scheduler = SQLiteScheduler(path, lease_ms=int(sys.argv[2]))
        await scheduler.schedule(DispatchMessage(run_id="r", version=0))

        async def handler(message: DispatchMessage) -> None:
            print("delivering", flush=True)
            await asyncio.Event().wait()

        await scheduler.run(handler)

    asyncio.run(main(sys.argv[1]))
    """
)


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path / "q.db"), str(LONG_LEASE_MS)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()  # blocks until the message is leased and delivered
    assert line.strip() == "delivering"
    yield proc
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    proc.stdout.close()


async def deliver_one(path: Path, deadline_s: float = 20) -> DispatchMessage:
    """Run a worker loop on ``path`` until it delivers a message; fail after the deadline."""
    scheduler = SQLiteScheduler(path, lease_ms=LONG_LEASE_MS)
    got: list[DispatchMessage] = []
    stop = asyncio.Event()

    async def handler(message: DispatchMessage) -> None:
        got.append(message)
        stop.set()

    try:
        await asyncio.wait_for(scheduler.run(handler, stop=stop), deadline_s)
    finally:
        scheduler.close()
    return got[0]


async def test_a_restart_on_the_same_host_takes_back_the_leases_of_its_killed_predecessor(
    holder: subprocess.Popen[str], tmp_path: Path
) -> None:
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    message = await deliver_one(tmp_path / "q.db")
    assert message.run_id == "r"
    # The lost delivery counts as an attempt, as an expired lease does.
    scheduler = SQLiteScheduler(tmp_path / "q.db")
    try:
        (info,) = await scheduler.list_messages()
        assert info.state == "done" and info.attempts == 1
    finally:
        scheduler.close()


async def test_the_leases_of_a_process_that_still_runs_are_left_alone(
    holder: subprocess.Popen[str], tmp_path: Path
) -> None:
    scheduler = SQLiteScheduler(tmp_path / "q.db", lease_ms=LONG_LEASE_MS)
    try:
        assert scheduler.release_dead_workers() == 0
        assert await scheduler.drain(lambda m: asyncio.sleep(0)) == 0
        (info,) = await scheduler.list_messages()
        assert info.state == "leased"
    finally:
        scheduler.close()


def test_a_recorded_pid_reused_by_another_process_does_not_hold_the_lease(tmp_path: Path) -> None:
    # A dead worker's pid now names a live process (ours), started at another time.
    path = tmp_path / "q.db"
    scheduler = SQLiteScheduler(path, lease_ms=LONG_LEASE_MS)
    try:
        asyncio.run(scheduler.schedule(DispatchMessage(run_id="r", version=0)))
        assert scheduler._lease(1)  # leased to a token of its own
        host = _host()
        with sqlite3.connect(path) as db:
            (token,) = db.execute("SELECT lease_token FROM messages").fetchone()
            db.execute(
                "INSERT INTO workers (token, host, pid, process_start, started_at)"
                " VALUES (?, ?, ?, 'another start', 0)",
                (token, host, os.getpid()),
            )
        if sys.platform != "linux":
            pytest.skip("process start times are read from /proc")
        assert scheduler.release_dead_workers() == 1
    finally:
        scheduler.close()


def test_refluxo_dev_restarted_after_kill_9_resumes_the_step_in_flight_at_once(
    tmp_path: Path,
) -> None:
    marker = tmp_path / "started"
    first = Dev(tmp_path / "dev.db")
    try:
        first.call("POST", "/workflows/blocks/runs", {"id": "b1", "input": {"marker": str(marker)}})
        wait_for(marker.exists)
    finally:
        first.kill()
    marker.unlink()
    second = Dev(tmp_path / "dev.db")  # the default 60 s lease, far past the deadline
    try:
        wait_for(marker.exists)
    finally:
        second.kill()


def test_refluxo_dev_lease_sets_how_long_an_unidentified_dead_process_holds_a_step(
    tmp_path: Path,
) -> None:
    marker = tmp_path / "started"
    db = tmp_path / "dev.db"
    first = Dev(db, "--lease", "1")
    try:
        first.call("POST", "/workflows/blocks/runs", {"id": "b1", "input": {"marker": str(marker)}})
        wait_for(marker.exists)
    finally:
        first.kill()
    marker.unlink()
    with sqlite3.connect(db) as conn:  # as if it ran where its pid cannot be probed
        conn.execute("DELETE FROM workers")
    second = Dev(db, "--lease", "1")
    try:
        wait_for(marker.exists)
    finally:
        second.kill()


def wait_for(check: object, deadline_s: float = 20) -> None:
    end = time.monotonic() + deadline_s
    while not check():  # type: ignore[operator]
        assert time.monotonic() < end, "gave up waiting"
        time.sleep(0.02)
