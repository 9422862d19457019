"""SQLiteScheduler: the Scheduler contract, plus durability, leases, retries and dead letters."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
import subprocess
import sys
import textwrap
from asyncio import FIRST_COMPLETED
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

import refluxo.local.scheduler as scheduler_module
from refluxo.core import RunService, SchedulerError
from refluxo.core.model import DispatchMessage, now_ms
from refluxo.local import SQLiteScheduler, SQLiteStateStore
from refluxo.testing.scheduler import NextDelivery, SchedulerContract
from tests.conftest import FakeClock

HOUR_MS = 3_600_000
# How long a test waits for something that should happen within milliseconds.
DEADLINE_S = 5.0


class TestSQLiteScheduler(SchedulerContract):
    @pytest.fixture
    def scheduler(self, tmp_path: Path) -> Iterator[SQLiteScheduler]:
        scheduler = SQLiteScheduler(tmp_path / "messages.db")
        yield scheduler
        scheduler.close()

    @pytest.fixture
    def scheduler_capabilities(self) -> frozenset[str]:
        return frozenset({"deduplicates"})

    @pytest.fixture
    async def next_delivery(self, scheduler: SQLiteScheduler) -> AsyncIterator[NextDelivery]:
        delivered: asyncio.Queue[DispatchMessage] = asyncio.Queue()
        stop = asyncio.Event()
        worker = asyncio.create_task(scheduler.run(delivered.put, stop=stop))

        async def next_delivery(timeout_s: float) -> DispatchMessage | None:
            get = asyncio.ensure_future(delivered.get())
            # Also wait on the worker, so that a loop that died fails the test at once.
            await asyncio.wait({get, worker}, timeout=timeout_s, return_when=FIRST_COMPLETED)
            if get.done():
                return get.result()
            get.cancel()
            if worker.done():
                worker.result()  # Raises what killed the loop.
                pytest.fail("the worker loop returned before it was stopped")
            return None

        yield next_delivery
        stop.set()
        await asyncio.wait_for(worker, DEADLINE_S)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "messages.db"


@pytest.fixture
def clock() -> FakeClock:
    # Near the real time: a scheduler in a subprocess, on the real clock, shares the file.
    return FakeClock(now_ms())


@pytest.fixture
def scheduler(path: Path, clock: FakeClock) -> Iterator[SQLiteScheduler]:
    scheduler = SQLiteScheduler(
        path, clock=clock, max_attempts=4, retry_base_ms=1000, retry_max_ms=3000
    )
    yield scheduler
    scheduler.close()


class Recorder:
    """A handler that records what it got; ``fail`` makes it raise that many times first."""

    def __init__(self, *, fail: int = 0) -> None:
        self.got: list[DispatchMessage] = []
        self.fail = fail

    async def __call__(self, message: DispatchMessage) -> None:
        self.got.append(message)
        if len(self.got) <= self.fail:
            raise RuntimeError(f"boom {len(self.got)}")


class Crash(BaseException):
    """What a handler raises to stand for its process dying: no ``except Exception`` sees it."""


class Gate:
    """A handler that blocks until opened, so a test can hold a message leased."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.opened = asyncio.Event()
        self.got: list[DispatchMessage] = []
        self.done: list[DispatchMessage] = []

    async def __call__(self, message: DispatchMessage) -> None:
        self.got.append(message)
        self.entered.set()
        await self.opened.wait()
        self.done.append(message)


async def wait_until(predicate: object, what: str) -> None:
    """Poll ``predicate()`` until true; fail after DEADLINE_S."""
    assert callable(predicate)
    deadline = now_ms() + DEADLINE_S * 1000
    while not predicate():
        if now_ms() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


# Durability ------------------------------------------------------------------------------


async def test_a_message_survives_a_restart(path: Path, clock: FakeClock) -> None:
    first = SQLiteScheduler(path, clock=clock)
    message = DispatchMessage(run_id="run-1", version=3, hop=1)
    await first.schedule(message, at=clock.now + 5000)
    first.close()

    second = SQLiteScheduler(path, clock=clock)
    try:
        handler = Recorder()
        assert await second.drain(handler) == 0  # Not due yet.
        clock.advance(5000)
        assert await second.drain(handler) == 1
        assert handler.got == [message]
        # Delivered is delivered: a third object on the file has nothing to do.
        await second.schedule(message)
        third = SQLiteScheduler(path, clock=clock)
        assert await third.drain(handler) == 0
        third.close()
    finally:
        second.close()


def test_constructing_a_scheduler_does_not_touch_the_file(path: Path) -> None:
    SQLiteScheduler(path)
    assert not path.exists()


# Duplicates --------------------------------------------------------------------------------


async def test_a_delivered_key_collapses_duplicates_for_an_hour_then_is_new_again(
    scheduler: SQLiteScheduler, clock: FakeClock
) -> None:
    message = DispatchMessage(run_id="run-1", version=1)
    handler = Recorder()
    await scheduler.schedule(message)
    assert await scheduler.drain(handler) == 1
    clock.advance(HOUR_MS - 1)
    await scheduler.schedule(message)
    assert await scheduler.drain(handler) == 0
    clock.advance(2)
    await scheduler.schedule(message)
    assert await scheduler.drain(handler) == 1
    assert handler.got == [message, message]


async def test_done_tombstones_older_than_an_hour_are_pruned(
    scheduler: SQLiteScheduler, clock: FakeClock
) -> None:
    await scheduler.schedule(DispatchMessage(run_id="old", version=1))
    await scheduler.drain(Recorder())
    assert [m.key for m in await scheduler.list_messages(state="done")] == ["old.1.0"]
    clock.advance(HOUR_MS + 60_001)
    await scheduler.schedule(DispatchMessage(run_id="new", version=1))
    await scheduler.drain(Recorder())
    assert [m.key for m in await scheduler.list_messages(state="done")] == ["new.1.0"]


# Failures, retries, dead letters ---------------------------------------------------------


async def test_a_failing_handler_gets_the_message_again_after_an_exponential_capped_backoff(
    scheduler: SQLiteScheduler, clock: FakeClock
) -> None:
    message = DispatchMessage(run_id="run-1", version=2)
    handler = Recorder(fail=3)
    await scheduler.schedule(message)
    for attempt, backoff_ms in [(1, 1000), (2, 2000), (3, 3000)]:  # 4000 capped at 3000.
        assert await scheduler.drain(handler) == 1
        [info] = await scheduler.list_messages()
        assert (info.state, info.attempts, info.due_at) == (
            "pending",
            attempt,
            clock.now + backoff_ms,
        )
        assert info.last_error == f"RuntimeError: boom {attempt}"
        clock.advance(backoff_ms - 1)
        assert await scheduler.drain(handler) == 0  # Not before the backoff is over.
        clock.advance(1)
    assert await scheduler.drain(handler) == 1  # The fourth delivery succeeds.
    assert handler.got == [message] * 4
    assert [m.state for m in await scheduler.list_messages()] == ["done"]


async def test_a_message_whose_handler_keeps_failing_is_dead_lettered_after_max_attempts(
    scheduler: SQLiteScheduler, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    message = DispatchMessage(run_id="run-1", version=2)
    handler = Recorder(fail=1000)
    await scheduler.schedule(message)
    with caplog.at_level(logging.WARNING, logger="refluxo.local.scheduler"):
        for _ in range(4):
            assert await scheduler.drain(handler) == 1
            clock.advance(3000)
    clock.advance(30 * 24 * HOUR_MS)
    assert await scheduler.drain(handler) == 0
    assert len(handler.got) == 4
    [dead] = await scheduler.list_messages(state="dead")
    assert (dead.message, dead.attempts, dead.last_error) == (message, 4, "RuntimeError: boom 4")
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "dead-lettered run-1.2.0" in errors[0].getMessage()
    # A dead key stays taken: scheduling it again does not resurrect it.
    await scheduler.schedule(message)
    assert await scheduler.drain(handler) == 0


async def test_a_failing_handler_does_not_stop_the_worker_loop(path: Path) -> None:
    scheduler = SQLiteScheduler(path, retry_base_ms=10)
    handler = Recorder(fail=2)
    stop = asyncio.Event()
    worker = asyncio.create_task(scheduler.run(handler, stop=stop))
    try:
        await scheduler.schedule(DispatchMessage(run_id="run-1", version=1))
        await wait_until(lambda: len(handler.got) == 3, "the third delivery")
        assert not worker.done()
    finally:
        stop.set()
        await asyncio.wait_for(worker, DEADLINE_S)
        scheduler.close()
    reopened = SQLiteScheduler(path)
    assert [m.state for m in await reopened.list_messages()] == ["done"]
    reopened.close()


# Leases: crashes and several workers -----------------------------------------------------

# Leases every due message of the file and dies inside the handler, as a crashed process
# would: no finally, no lease released.
CRASHER = textwrap.dedent(
    """
    import asyncio, os, sys
    from refluxo.local import SQLiteScheduler

    async def die(message):
        print(message.key, flush=True)
        os._exit(3)

    asyncio.run(SQLiteScheduler(sys.argv[1]).drain(die))
    """
)


async def test_a_message_leased_by_a_process_that_crashed_is_delivered_again_after_its_lease(
    path: Path, scheduler: SQLiteScheduler, clock: FakeClock
) -> None:
    message = DispatchMessage(run_id="run-1", version=7)
    await scheduler.schedule(message)
    crashed = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", CRASHER, str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (crashed.returncode, crashed.stdout.strip()) == (3, message.key)

    handler = Recorder()
    assert await scheduler.drain(handler) == 0  # Its lease (60 s) still holds.
    assert [m.state for m in await scheduler.list_messages()] == ["leased"]
    # The child leased on the real clock, however long it took to start: pass its lease.
    clock.now = max(clock.now, now_ms()) + 60_000 + 1000
    assert await scheduler.drain(handler) == 1
    assert handler.got == [message]
    [info] = await scheduler.list_messages()
    assert (info.state, info.attempts) == ("done", 1)
    assert info.last_error is not None and "lease expired" in info.last_error


async def test_a_message_whose_lease_keeps_expiring_is_dead_lettered(
    scheduler: SQLiteScheduler, clock: FakeClock
) -> None:
    await scheduler.schedule(DispatchMessage(run_id="run-1", version=1))

    async def die(message: DispatchMessage) -> None:
        raise Crash  # Leaves the message leased, as a process killed mid-delivery does.

    for _ in range(4):
        with pytest.raises(Crash):
            await scheduler.drain(die)
        [info] = await scheduler.list_messages()
        assert info.state == "leased"
        clock.advance(scheduler.lease_ms)
    assert await scheduler.drain(Recorder()) == 0
    [dead] = await scheduler.list_messages(state="dead")
    assert dead.attempts == 4


async def test_two_schedulers_on_one_file_never_deliver_one_message_to_both_while_leased(
    path: Path,
) -> None:
    first, second = SQLiteScheduler(path), SQLiteScheduler(path)
    gate = Gate()
    stop = asyncio.Event()
    worker = asyncio.create_task(first.run(gate, stop=stop))
    try:
        message = DispatchMessage(run_id="run-1", version=1)
        await second.schedule(message)  # Scheduled through one, delivered by the other.
        await asyncio.wait_for(gate.entered.wait(), DEADLINE_S)
        other = Recorder()
        assert await second.drain(other) == 0
        gate.opened.set()
        await wait_until(lambda: gate.done == [message], "the first delivery to finish")
        stop.set()
        await asyncio.wait_for(worker, DEADLINE_S)
        assert await second.drain(other) == 0
        assert other.got == [] and gate.got == [message]
    finally:
        stop.set()
        gate.opened.set()
        await asyncio.wait_for(worker, DEADLINE_S)
        first.close()
        second.close()


async def test_a_lease_is_renewed_while_its_handler_runs(path: Path) -> None:
    first = SQLiteScheduler(path, lease_ms=400)
    second = SQLiteScheduler(path, lease_ms=400)
    gate = Gate()
    stop = asyncio.Event()
    worker = asyncio.create_task(first.run(gate, stop=stop))
    try:
        await first.schedule(DispatchMessage(run_id="run-1", version=1))
        await asyncio.wait_for(gate.entered.wait(), DEADLINE_S)
        other = Recorder()
        # Watch for 2.5 lease lengths: without renewal the second would take it over.
        until = now_ms() + 1000
        while now_ms() < until:
            assert await second.drain(other) == 0
            await asyncio.sleep(0.05)
        gate.opened.set()
        stop.set()
        await asyncio.wait_for(worker, DEADLINE_S)
        assert other.got == [] and len(gate.done) == 1
    finally:
        stop.set()
        gate.opened.set()
        await asyncio.wait_for(worker, DEADLINE_S)
        first.close()
        second.close()


# Each worker process: wait for "go", then drain the file, printing the keys it delivered.
DRAINER = textwrap.dedent(
    """
    import asyncio, json, sys
    from refluxo.local import SQLiteScheduler

    got = []

    async def record(message):
        got.append(message.key)

    print("ready", flush=True)
    sys.stdin.readline()
    scheduler = SQLiteScheduler(sys.argv[1])
    asyncio.run(scheduler.drain(record))
    scheduler.close()
    print(json.dumps(got), flush=True)
    """
)


async def test_workers_in_several_processes_deliver_each_message_once(path: Path) -> None:
    scheduler = SQLiteScheduler(path)
    messages = [DispatchMessage(run_id=f"run-{i}", version=1) for i in range(90)]
    for message in messages:
        await scheduler.schedule(message)
    scheduler.close()

    def race() -> list[list[str]]:
        workers = [
            subprocess.Popen(
                [sys.executable, "-c", DRAINER, str(path)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            for _ in range(3)
        ]
        try:
            for worker in workers:
                assert worker.stdout is not None and worker.stdout.readline().strip() == "ready"
            for worker in workers:
                assert worker.stdin is not None
                worker.stdin.write("go\n")
                worker.stdin.flush()
            outputs = [worker.communicate(timeout=60)[0] for worker in workers]
            assert [worker.returncode for worker in workers] == [0, 0, 0]
            return [json.loads(out) for out in outputs]
        finally:
            for worker in workers:
                if worker.poll() is None:
                    worker.kill()
                    worker.wait()

    delivered = await asyncio.to_thread(race)
    keys = [key for got in delivered for key in got]
    assert sorted(keys) == sorted(m.key for m in messages)  # Each once: no loss, no double.


# The worker loop -------------------------------------------------------------------------


async def test_schedule_wakes_the_worker_loop_in_this_process(path: Path) -> None:
    # A poll interval far beyond the deadline: only the wake-up can deliver in time.
    scheduler = SQLiteScheduler(path, poll_interval_s=60)
    delivered: asyncio.Queue[DispatchMessage] = asyncio.Queue()
    stop = asyncio.Event()
    worker = asyncio.create_task(scheduler.run(delivered.put, stop=stop))
    try:
        # The loop's first look at the table opens the file; from then on it sleeps, in the
        # same step, until woken (nothing is due, and it would poll again in a minute).
        await wait_until(path.exists, "the worker loop to look for messages")
        message = DispatchMessage(run_id="run-1", version=1)
        await scheduler.schedule(message)
        assert await asyncio.wait_for(delivered.get(), DEADLINE_S) == message
    finally:
        stop.set()
        await asyncio.wait_for(worker, DEADLINE_S)
        scheduler.close()


async def test_a_worker_runs_at_most_concurrency_handlers_at_once(path: Path) -> None:
    scheduler = SQLiteScheduler(path)
    gate = Gate()
    stop = asyncio.Event()
    worker = asyncio.create_task(scheduler.run(gate, stop=stop, concurrency=2))
    try:
        for i in range(5):
            await scheduler.schedule(DispatchMessage(run_id=f"run-{i}", version=1))
        await wait_until(lambda: len(gate.got) == 2, "two handlers")
        leased = [m for m in await scheduler.list_messages() if m.state == "leased"]
        assert len(leased) == 2  # The others wait in the table, free for other workers.
        assert len(gate.got) == 2
        gate.opened.set()
        await wait_until(lambda: len(gate.done) == 5, "every message")
    finally:
        gate.opened.set()
        stop.set()
        await asyncio.wait_for(worker, DEADLINE_S)
        scheduler.close()


async def test_stop_lets_the_handlers_in_flight_finish(path: Path) -> None:
    scheduler = SQLiteScheduler(path)
    gate = Gate()
    stop = asyncio.Event()
    worker = asyncio.create_task(scheduler.run(gate, stop=stop))
    try:
        await scheduler.schedule(DispatchMessage(run_id="run-1", version=1))
        await asyncio.wait_for(gate.entered.wait(), DEADLINE_S)
        stop.set()
        await scheduler.schedule(DispatchMessage(run_id="run-2", version=1))
        done, _ = await asyncio.wait({worker}, timeout=0.1)
        assert not done  # Still waiting for the handler.
        gate.opened.set()
        await asyncio.wait_for(worker, DEADLINE_S)
        states = {m.key: m.state for m in await scheduler.list_messages()}
        assert states == {"run-1.1.0": "done", "run-2.1.0": "pending"}
    finally:
        gate.opened.set()
        stop.set()
        await asyncio.wait_for(worker, DEADLINE_S)
        scheduler.close()


async def test_cancelling_the_worker_releases_its_messages_for_immediate_redelivery(
    path: Path,
) -> None:
    scheduler = SQLiteScheduler(path)
    gate = Gate()
    worker = asyncio.create_task(scheduler.run(gate))
    try:
        message = DispatchMessage(run_id="run-1", version=1)
        await scheduler.schedule(message)
        await asyncio.wait_for(gate.entered.wait(), DEADLINE_S)
    finally:
        worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await worker
    [info] = await scheduler.list_messages()
    assert (info.state, info.attempts) == ("pending", 0)
    scheduler.close()
    other, elsewhere = Recorder(), SQLiteScheduler(path)
    assert await elsewhere.drain(other) == 1  # No need to wait for the lease to expire.
    elsewhere.close()
    assert other.got == [message]


# Draining, errors --------------------------------------------------------------------------


async def test_drain_delivers_the_messages_that_handlers_schedule_for_now(
    scheduler: SQLiteScheduler,
) -> None:
    got: list[DispatchMessage] = []

    async def step(message: DispatchMessage) -> None:
        got.append(message)
        await scheduler.schedule(DispatchMessage(run_id="run-1", version=message.version + 1))

    await scheduler.schedule(DispatchMessage(run_id="run-1", version=0))
    assert await scheduler.drain(step, max_messages=3) == 3
    assert [m.version for m in got] == [0, 1, 2]
    assert await scheduler.drain(step, max_messages=2) == 2
    assert [m.version for m in got] == [0, 1, 2, 3, 4]


async def test_drain_delivers_soonest_due_first(
    scheduler: SQLiteScheduler, clock: FakeClock
) -> None:
    for version, at in [(1, clock.now - 10), (2, clock.now - 30), (3, clock.now - 20)]:
        await scheduler.schedule(DispatchMessage(run_id="run-1", version=version), at=at)
    handler = Recorder()
    await scheduler.drain(handler)
    assert [m.version for m in handler.got] == [2, 3, 1]


async def test_a_locked_file_raises_a_transient_scheduler_error_from_the_sqlite_error(
    path: Path,
) -> None:
    scheduler = SQLiteScheduler(path, busy_timeout_ms=50)
    await scheduler.schedule(DispatchMessage(run_id="run-1", version=1))
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN EXCLUSIVE")
        with pytest.raises(SchedulerError) as raised:
            await scheduler.schedule(DispatchMessage(run_id="run-2", version=1))
        assert raised.value.transient is True
        assert isinstance(raised.value.__cause__, sqlite3.OperationalError)
    finally:
        other.execute("ROLLBACK")
        other.close()
        scheduler.close()


# Leases taken while scheduling, done marks in batches ------------------------------------


async def test_a_handlers_follow_up_is_leased_to_its_worker_as_it_is_scheduled(
    path: Path,
) -> None:
    first, second = SQLiteScheduler(path), SQLiteScheduler(path)
    got: list[DispatchMessage] = []
    seen: dict[str, str] = {}
    taken_elsewhere: list[int] = []

    async def step(message: DispatchMessage) -> None:
        got.append(message)
        if message.version == 1:
            await first.schedule(DispatchMessage(run_id="run-1", version=2))
            seen.update({m.key: m.state for m in await first.list_messages()})
            # Leased in the schedule call, for the slot this handler is about to free.
            taken_elsewhere.append(await second.drain(Recorder()))

    stop = asyncio.Event()
    worker = asyncio.create_task(first.run(step, stop=stop, concurrency=1))
    try:
        await first.schedule(DispatchMessage(run_id="run-1", version=1))
        await wait_until(lambda: len(got) == 2, "the follow-up")
        assert seen == {"run-1.1.0": "leased", "run-1.2.0": "leased"}
        assert taken_elsewhere == [0]
    finally:
        stop.set()
        await asyncio.wait_for(worker, DEADLINE_S)
        first.close()
        second.close()
    assert [m.version for m in got] == [1, 2]


async def test_older_due_messages_take_the_slot_before_a_handlers_follow_up(
    path: Path,
) -> None:
    scheduler = SQLiteScheduler(path)
    got: list[str] = []
    seen: dict[str, str] = {}

    async def step(message: DispatchMessage) -> None:
        got.append(message.key)
        if message.run_id == "x" and message.version == 1:
            await scheduler.schedule(DispatchMessage(run_id="x", version=2))
            seen.update({m.key: m.state for m in await scheduler.list_messages()})

    start = now_ms()
    await scheduler.schedule(DispatchMessage(run_id="x", version=1), at=start - 2000)
    await scheduler.schedule(DispatchMessage(run_id="a", version=1), at=start - 1000)
    stop = asyncio.Event()
    worker = asyncio.create_task(scheduler.run(step, stop=stop, concurrency=1))
    try:
        await wait_until(lambda: len(got) == 3, "three deliveries")
    finally:
        stop.set()
        await asyncio.wait_for(worker, DEADLINE_S)
        scheduler.close()
    # The slot x's handler hands over goes to a, waiting longer than x's follow-up.
    assert seen == {"x.1.0": "leased", "a.1.0": "leased", "x.2.0": "pending"}
    assert got == ["x.1.0", "a.1.0", "x.2.0"]


async def test_a_busy_worker_marks_delivered_messages_done_within_the_flush_delay(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(scheduler_module, "DONE_FLUSH_S", 0.5)
    scheduler = SQLiteScheduler(path)
    gate = Gate()

    async def step(message: DispatchMessage) -> None:
        if message.version == 1:
            await scheduler.schedule(DispatchMessage(run_id="run-1", version=2))
            return
        await gate(message)

    stop = asyncio.Event()
    worker = asyncio.create_task(scheduler.run(step, stop=stop, concurrency=1))
    try:
        await scheduler.schedule(DispatchMessage(run_id="run-1", version=1))
        await asyncio.wait_for(gate.entered.wait(), DEADLINE_S)

        async def states() -> dict[str, str]:
            return {m.key: m.state for m in await scheduler.list_messages()}

        # Delivered, but its only slot is busy: it waits to be marked with others...
        assert await states() == {"run-1.1.0": "leased", "run-1.2.0": "leased"}
        # ...for the flush delay at most, although the slot stays busy.
        deadline = now_ms() + DEADLINE_S * 1000
        while (await states())["run-1.1.0"] != "done":
            assert now_ms() < deadline, "run-1.1.0 was never marked done"
            await asyncio.sleep(0.02)
        assert (await states())["run-1.2.0"] == "leased" and not gate.done
    finally:
        gate.opened.set()
        stop.set()
        await asyncio.wait_for(worker, DEADLINE_S)
        scheduler.close()
    reopened = SQLiteScheduler(path)
    assert {m.state for m in await reopened.list_messages()} == {"done"}
    reopened.close()


async def test_cancelling_the_worker_releases_the_follow_ups_it_had_leased_too(
    path: Path,
) -> None:
    scheduler = SQLiteScheduler(path)
    gate = Gate()

    async def step(message: DispatchMessage) -> None:
        await scheduler.schedule(DispatchMessage(run_id="run-1", version=message.version + 1))
        await gate(message)

    worker = asyncio.create_task(scheduler.run(step, concurrency=1))
    try:
        await scheduler.schedule(DispatchMessage(run_id="run-1", version=1))
        await asyncio.wait_for(gate.entered.wait(), DEADLINE_S)
        assert {m.state for m in await scheduler.list_messages()} == {"leased"}
    finally:
        worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await worker
    infos = await scheduler.list_messages()
    assert [(m.key, m.state, m.attempts) for m in infos] == [
        ("run-1.1.0", "pending", 0),
        ("run-1.2.0", "pending", 0),
    ]
    scheduler.close()


# A workflow of `steps` steps on one node, for a child process and for the test. A step
# numbered `crash_at` ends the process as a crash would: no finally, nothing flushed.
LOOPER = textwrap.dedent(
    """
    import os

    from refluxo.core import NodeDefinition, StepResult, Workflow

    def looper(steps, crash_at=None, ran=None):
        def loop(data, context, payload, globals):
            n = context.count("loop") + 1
            if n == crash_at:
                os._exit(3)
            if ran is not None:
                ran.append(n)
            return StepResult(data={"n": n}, next_handle="again" if n < steps else None)

        definition = {
            "nodes": [{"id": "loop", "type": "loop", "data": {}}],
            "edges": [
                {"id": "back", "source": "loop", "target": "loop", "sourceHandle": "again"}
            ],
        }
        return Workflow("looper", definition, {"loop": NodeDefinition(executor=loop)})
    """
)

# Runs a workflow on the worker loop until its fifth step kills the process. Done marks wait
# an hour, so every message delivered so far is still leased, unmarked, when it dies.
CRASH_MID_RUN = LOOPER + textwrap.dedent(
    """
    import asyncio, sys
    import refluxo.local.scheduler as scheduler_module
    from refluxo.core import RunService
    from refluxo.local import SQLiteScheduler, SQLiteStateStore

    scheduler_module.DONE_FLUSH_S = 3600.0

    async def main(path):
        store, scheduler = SQLiteStateStore(path), SQLiteScheduler(path)
        # One step per delivery: each step's message is leased when the process dies.
        dispatcher = RunService(
            [looper(10, crash_at=5)], store, scheduler, delivery_budget_ms=0
        )
        await dispatcher.start("looper", run_id="run-1")

        async def deliver(message):
            await dispatcher.dispatch(message)

        await scheduler.run(deliver, concurrency=1)

    asyncio.run(main(sys.argv[1]))
    """
)


async def test_messages_delivered_but_not_yet_marked_done_when_the_process_dies_come_again(
    path: Path, clock: FakeClock
) -> None:
    crashed = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", CRASH_MID_RUN, str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert crashed.returncode == 3, crashed.stderr
    scheduler = SQLiteScheduler(path, clock=clock)
    store = SQLiteStateStore(path)
    try:
        assert (await store.load("run-1")).version == 4  # Steps 1 to 4 were saved.
        # Versions 0 to 3 delivered, 4 in flight: all still leased to the dead worker.
        infos = await scheduler.list_messages()
        assert [(m.message.version, m.state) for m in infos] == [(v, "leased") for v in range(5)]

        namespace: dict[str, object] = {}
        exec(LOOPER, namespace)
        ran: list[int] = []
        looper = namespace["looper"]
        assert callable(looper)
        dispatcher = RunService([looper(10, ran=ran)], store, scheduler, delivery_budget_ms=0)
        outcomes: list[tuple[int, str]] = []

        async def deliver(message: DispatchMessage) -> None:
            result = await dispatcher.dispatch(message)
            outcomes.append((message.version, result.outcome))

        # The leases expire (the child leased on the real clock, however slow its start).
        clock.now = max(clock.now, now_ms()) + 60_000 + 1000
        await scheduler.drain(deliver)
        # The duplicates change nothing; the step that died runs again, and each after it once.
        assert [o for v, o in outcomes if v < 4] == ["stale", "stale", "stale", "recovered"]
        assert ran == [5, 6, 7, 8, 9, 10]
        final = await store.load("run-1")
        assert (final.version, final.status) == (10, "completed")
    finally:
        scheduler.close()
        store.close()


async def test_a_file_with_the_old_indexes_is_migrated(path: Path) -> None:
    with sqlite3.connect(path) as raw:
        raw.executescript(
            """
            CREATE TABLE messages (
                key TEXT PRIMARY KEY, run_id TEXT NOT NULL, version INTEGER NOT NULL,
                hop INTEGER NOT NULL, due_at INTEGER NOT NULL, state TEXT NOT NULL,
                lease_until INTEGER, lease_token TEXT, attempts INTEGER NOT NULL DEFAULT 0,
                last_error TEXT, created_at INTEGER NOT NULL, done_at INTEGER
            );
            CREATE INDEX messages_due ON messages (state, due_at);
            CREATE INDEX messages_lease ON messages (state, lease_until);
            CREATE INDEX messages_done ON messages (state, done_at);
            INSERT INTO messages (key, run_id, version, hop, due_at, state, created_at)
            VALUES ('run-1.1.0', 'run-1', 1, 0, 0, 'pending', 0);
            """
        )
    raw.close()
    scheduler = SQLiteScheduler(path)
    try:
        handler = Recorder()
        assert await scheduler.drain(handler) == 1
        assert [m.key for m in await scheduler.list_messages(state="done")] == ["run-1.1.0"]
    finally:
        scheduler.close()
    with sqlite3.connect(path) as raw:
        indexes = {
            name
            for (name,) in raw.execute(
                "SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL"
            )
        }
    raw.close()
    assert indexes == {
        "messages_pending",
        "messages_leased",
        "messages_done_at",
        "messages_dead",
    }


async def test_a_chain_of_follow_ups_needs_no_lease_transactions_of_the_worker(
    path: Path,
) -> None:
    scheduler = SQLiteScheduler(path)
    leased: list[int] = []
    real_lease = scheduler._lease

    def counted(*args: Any, **kwargs: Any) -> Any:
        taken = real_lease(*args, **kwargs)
        leased.append(len(taken))
        return taken

    scheduler._lease = counted  # type: ignore[method-assign]
    got: list[int] = []

    async def step(message: DispatchMessage) -> None:
        got.append(message.version)
        if message.version < 20:
            await scheduler.schedule(DispatchMessage(run_id="run-1", version=message.version + 1))

    await scheduler.schedule(DispatchMessage(run_id="run-1", version=1))
    stop = asyncio.Event()
    worker = asyncio.create_task(scheduler.run(step, stop=stop, concurrency=4))
    try:
        await wait_until(lambda: len(got) == 20, "twenty steps")
    finally:
        stop.set()
        await asyncio.wait_for(worker, DEADLINE_S)
    try:
        assert got == list(range(1, 21))
        # The worker leased the first message; each schedule call leased the one it wrote,
        # while the worker's free slots only read the table to find nothing else due.
        assert leased == [1]
        assert {m.state for m in await scheduler.list_messages()} == {"done"}
    finally:
        scheduler.close()


async def test_a_messages_file_from_before_branches_takes_branch_deliveries(
    tmp_path: Path,
) -> None:
    path = tmp_path / "messages.db"
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute(
            "CREATE TABLE messages (key TEXT PRIMARY KEY, run_id TEXT NOT NULL, version INTEGER"
            " NOT NULL, hop INTEGER NOT NULL, due_at INTEGER NOT NULL, state TEXT NOT NULL, "
            "lease_until INTEGER, lease_token TEXT, attempts INTEGER NOT NULL DEFAULT 0, "
            "last_error TEXT, created_at INTEGER NOT NULL, done_at INTEGER)"
        )
        db.execute(
            "INSERT INTO messages (key, run_id, version, hop, due_at, state, created_at)"
            " VALUES ('old.1.0', 'old', 1, 0, 0, 'pending', 0)"
        )
        db.commit()
    scheduler = SQLiteScheduler(path)
    try:
        branch = DispatchMessage(run_id="new", version=0, branch="4-1")
        await scheduler.schedule(branch)
        got: list[DispatchMessage] = []

        async def handle(message: DispatchMessage) -> None:
            got.append(message)

        await scheduler.drain(handle)
        assert got == [DispatchMessage(run_id="old", version=1), branch]
    finally:
        scheduler.close()
