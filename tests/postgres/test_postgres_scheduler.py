"""PostgresScheduler: the Scheduler contract, plus durability, leases, retries and dead letters,
on a real PostgreSQL server."""

from __future__ import annotations

import asyncio
from asyncio import FIRST_COMPLETED
from collections.abc import AsyncIterator
from typing import Any

import pytest
from psycopg_pool import AsyncConnectionPool

from refluxo.core.model import DispatchMessage, now_ms
from refluxo.postgres import PostgresScheduler, open_pool
from tests.contract.scheduler import NextDelivery, SchedulerContract

DEADLINE_S = 10.0


async def wait_until(predicate: Any, what: str) -> None:
    """Poll ``await predicate()`` until true; fail after DEADLINE_S."""
    deadline = now_ms() + DEADLINE_S * 1000
    while not await predicate():
        if now_ms() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


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


class TestPostgresScheduler(SchedulerContract):
    @pytest.fixture
    def scheduler(self, pool: AsyncConnectionPool[Any]) -> PostgresScheduler:
        return PostgresScheduler(pool)

    @pytest.fixture
    def scheduler_capabilities(self) -> frozenset[str]:
        return frozenset({"deduplicates"})

    @pytest.fixture
    async def next_delivery(self, scheduler: PostgresScheduler) -> AsyncIterator[NextDelivery]:
        delivered: asyncio.Queue[DispatchMessage] = asyncio.Queue()
        stop = asyncio.Event()
        worker = asyncio.create_task(scheduler.run(delivered.put, stop=stop))

        async def next_delivery(timeout_s: float) -> DispatchMessage | None:
            get = asyncio.ensure_future(delivered.get())
            await asyncio.wait({get, worker}, timeout=timeout_s, return_when=FIRST_COMPLETED)
            if get.done():
                return get.result()
            get.cancel()
            if worker.done():
                worker.result()
                pytest.fail("the worker loop returned before it was stopped")
            return None

        yield next_delivery
        stop.set()
        await asyncio.wait_for(worker, DEADLINE_S)


async def test_a_message_survives_a_restart(pg_url: str) -> None:
    message = DispatchMessage(run_id="run-1", version=3, hop=1)
    first = await open_pool(pg_url)
    await PostgresScheduler(first).schedule(message)
    await first.close()

    second = await open_pool(pg_url)
    try:
        handler = Recorder()
        scheduler = PostgresScheduler(second)
        assert await scheduler.drain(handler) == 1
        assert handler.got == [message]
        await scheduler.schedule(message)  # delivered is delivered: the key collapses
        assert await scheduler.drain(handler) == 0
    finally:
        await second.close()


async def test_a_failed_delivery_is_retried_with_backoff_then_dead_lettered(
    pool: AsyncConnectionPool[Any],
) -> None:
    scheduler = PostgresScheduler(pool, max_attempts=3, retry_base_ms=100, retry_max_ms=200)
    message = DispatchMessage(run_id="run-1", version=0)
    await scheduler.schedule(message)
    handler = Recorder(fail=10)
    assert await scheduler.drain(handler) == 1
    [info] = await scheduler.list_messages()
    assert (info.state, info.attempts, info.last_error) == ("pending", 1, "RuntimeError: boom 1")
    assert info.due_at > now_ms() + 20  # backoff: not due again at once
    assert await scheduler.drain(handler) == 0

    async def attempts_reach(n: int) -> bool:
        await scheduler.drain(handler)
        return len(handler.got) >= n

    await wait_until(lambda: attempts_reach(3), "the third attempt")
    [dead] = await scheduler.list_messages()
    assert (dead.state, dead.attempts) == ("dead", 3)
    assert await scheduler.drain(handler) == 0
    assert len(handler.got) == 3


async def test_a_lease_whose_worker_died_expires_and_the_message_is_delivered_again(
    pool: AsyncConnectionPool[Any],
) -> None:
    scheduler = PostgresScheduler(pool, lease_ms=300)
    message = DispatchMessage(run_id="run-1", version=0)
    await scheduler.schedule(message)

    async def dies(message: DispatchMessage) -> None:
        raise Crash

    with pytest.raises(Crash):
        await scheduler.drain(dies)
    [leased] = await scheduler.list_messages()
    assert leased.state == "leased"
    handler = Recorder()

    async def delivered() -> bool:
        await scheduler.drain(handler)
        return bool(handler.got)

    await wait_until(delivered, "the expired lease's message")
    assert handler.got == [message]
    [done] = await scheduler.list_messages()
    assert (done.state, done.attempts) == ("done", 1)  # the lost delivery counted


async def test_two_worker_loops_deliver_each_message_once(pg_url: str) -> None:
    pools = [await open_pool(pg_url) for _ in range(2)]
    try:
        schedulers = [PostgresScheduler(p) for p in pools]
        got: list[list[DispatchMessage]] = [[], []]
        stop = asyncio.Event()

        def handler(i: int) -> Any:
            async def deliver(message: DispatchMessage) -> None:
                got[i].append(message)
                await asyncio.sleep(0)

            return deliver

        loops = [
            asyncio.create_task(s.run(handler(i), stop=stop, concurrency=4))
            for i, s in enumerate(schedulers)
        ]
        messages = [DispatchMessage(run_id=f"run-{i}", version=0) for i in range(60)]
        for message in messages:
            await schedulers[0].schedule(message)

        async def all_done() -> bool:
            return len(await schedulers[0].list_messages("done")) == len(messages)

        await wait_until(all_done, "every message done")
        stop.set()
        await asyncio.wait_for(asyncio.gather(*loops), DEADLINE_S)
        delivered = [m.key for m in got[0] + got[1]]
        assert sorted(delivered) == sorted(m.key for m in messages)
    finally:
        for p in pools:
            await p.close()


async def test_a_waiting_worker_wakes_on_notify_not_on_its_poll(
    pool: AsyncConnectionPool[Any], pg_url: str
) -> None:
    # An idle loop polls every hour here: only the NOTIFY of schedule() can wake it in time.
    scheduler = PostgresScheduler(pool, poll_interval_s=3600)
    delivered = asyncio.Event()
    stop = asyncio.Event()

    async def handler(message: DispatchMessage) -> None:
        delivered.set()

    loop = asyncio.create_task(scheduler.run(handler, stop=stop))
    await wait_until(lambda: _listening(pg_url), "the loop to LISTEN")
    await scheduler.schedule(DispatchMessage(run_id="run-1", version=0))
    await asyncio.wait_for(delivered.wait(), DEADLINE_S)
    stop.set()
    await asyncio.wait_for(loop, DEADLINE_S)


async def _listening(url: str) -> bool:
    import psycopg

    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'LISTEN %%'"
        )
        row = await cur.fetchone()
    return bool(row and row[0])


async def test_a_worker_loop_outlives_the_server_dropping_its_connections(
    pool: AsyncConnectionPool[Any], pg_url: str
) -> None:
    import psycopg

    scheduler = PostgresScheduler(pool, poll_interval_s=3600)
    got: asyncio.Queue[DispatchMessage] = asyncio.Queue()
    stop = asyncio.Event()
    loop = asyncio.create_task(scheduler.run(got.put, stop=stop))
    first = DispatchMessage(run_id="run-1", version=0)
    await scheduler.schedule(first)
    assert await asyncio.wait_for(got.get(), DEADLINE_S) == first

    # What a server restart or a failover does to every open connection, the LISTEN one too.
    async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as admin:
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    await wait_until(lambda: _listening(pg_url), "the loop to LISTEN again")
    second = DispatchMessage(run_id="run-2", version=0)
    await scheduler.schedule(second)
    assert await asyncio.wait_for(got.get(), DEADLINE_S) == second
    assert not loop.done()
    stop.set()
    await asyncio.wait_for(loop, DEADLINE_S)


async def test_an_idle_loop_delivers_a_retry_at_its_backoff_not_at_its_poll(
    pool: AsyncConnectionPool[Any],
) -> None:
    scheduler = PostgresScheduler(pool, poll_interval_s=3600, retry_base_ms=300)
    handler = Recorder(fail=1)
    stop = asyncio.Event()
    loop = asyncio.create_task(scheduler.run(handler, stop=stop))
    await scheduler.schedule(DispatchMessage(run_id="run-1", version=0))

    async def retried() -> bool:
        return len(handler.got) == 2

    await wait_until(retried, "the retry after its backoff")
    stop.set()
    await asyncio.wait_for(loop, DEADLINE_S)
