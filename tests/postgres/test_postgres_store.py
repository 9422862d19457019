"""PostgresStateStore: the StateStore and DueRuns contracts, and its archive and listing, on a
real PostgreSQL server."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from psycopg_pool import AsyncConnectionPool

from refluxo.core.model import NodeResult
from refluxo.postgres import PostgresStateStore
from refluxo.testing.due_runs import DueRunsContract
from refluxo.testing.run_index import RunIndexContract
from refluxo.testing.store import StateStoreContract, snapshot


class TestPostgresStateStore(StateStoreContract):
    @pytest.fixture
    def store(self, pool: AsyncConnectionPool[Any]) -> PostgresStateStore:
        return PostgresStateStore(pool, max_bytes=64 * 1024)

    @pytest.fixture
    def store_capabilities(self) -> frozenset[str]:
        return frozenset({"atomic_compare_and_set", "size_limit"})

    @pytest.fixture
    def store_max_bytes(self) -> int:
        return 64 * 1024


class TestPostgresDueRuns(DueRunsContract):
    @pytest.fixture
    def store(self, pool: AsyncConnectionPool[Any]) -> PostgresStateStore:
        return PostgresStateStore(pool)


class TestPostgresRunIndex(RunIndexContract):
    @pytest.fixture
    def make_store(
        self, pool: AsyncConnectionPool[Any]
    ) -> Callable[[Callable[[], int]], PostgresStateStore]:
        return lambda clock: PostgresStateStore(pool, clock=clock)


async def test_a_table_from_before_creation_times_gets_the_column_and_lists_its_runs(
    pool: AsyncConnectionPool[Any],
) -> None:
    async with pool.connection() as conn:
        await conn.execute(
            "CREATE TABLE refluxo_runs (id text PRIMARY KEY, workflow text, status text NOT NULL,"
            " version bigint NOT NULL, updated_at bigint NOT NULL, snapshot text NOT NULL,"
            " due_at bigint)"
        )
    store = PostgresStateStore(pool, clock=lambda: 1_700_000_000_000)
    assert await store.create(snapshot("old", status="failed"))
    [found] = await store.find_runs(status="failed")
    assert found.run_id == "old" and found.created_at == 1_700_000_000_000


async def test_archived_results_come_back_oldest_first_and_archiving_is_idempotent(
    pool: AsyncConnectionPool[Any],
) -> None:
    store = PostgresStateStore(pool)
    results = [NodeResult(output={"i": i}, timestamp=1_700_000_000_000 + i) for i in range(3)]
    await store.archive_results("run-1", "loop", 0, results[:2])
    await store.archive_results("run-1", "loop", 1, results[1:])  # index 1 again: kept as is
    assert await store.archived_results("run-1", "loop") == results
    assert await store.archived_results("run-1", "other") == []


async def test_list_runs_lists_the_newest_runs_by_status(pool: AsyncConnectionPool[Any]) -> None:
    store = PostgresStateStore(pool)
    await store.create(snapshot("a"))
    await store.create(snapshot("b", status="completed"))
    assert [r.run_id for r in await store.list_runs(status="completed")] == ["b"]
    assert {r.run_id for r in await store.list_runs()} == {"a", "b"}


async def test_two_stores_on_one_database_create_its_tables_at_once(pg_url: str) -> None:
    import asyncio

    from refluxo.postgres import open_pool

    pools = [await open_pool(pg_url) for _ in range(3)]
    try:
        stores = [PostgresStateStore(p) for p in pools]
        created = await asyncio.gather(*(s.create(snapshot(f"r{i}")) for i, s in enumerate(stores)))
        assert created == [True, True, True]
    finally:
        for p in pools:
            await p.close()
