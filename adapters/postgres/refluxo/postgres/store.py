"""PostgresStateStore: the SQL store of :mod:`refluxo.core.sql` over a psycopg pool.

All a new SQL backend writes: a driver (five calls, ``?`` placeholders turned into psycopg's
``%s``, psycopg's errors into :class:`~refluxo.core.errors.StoreError`) and the schema in the
database's own types. The compare-and-set, the encoding and size check, the archive, due
times and listing are :class:`~refluxo.core.sql.SqlStateStore`'s.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from refluxo.core.errors import StoreError
from refluxo.core.model import now_ms
from refluxo.core.sql import (
    Row,
    SqlStateStore,
    archive_table,
    find_runs_statement,
    standard_dialect,
)

MAX_BYTES = 10 * 1024 * 1024
"""The default limit on one snapshot's JSON (a ``text`` value may hold up to 1 GB)."""

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS refluxo_runs (
        id text PRIMARY KEY COLLATE "C",
        workflow text,
        status text NOT NULL,
        version bigint NOT NULL,
        updated_at bigint NOT NULL,
        snapshot text NOT NULL,
        due_at bigint,
        created_at bigint
    )""",
    # Tables created before runs were listed with their creation time get the column.
    "ALTER TABLE refluxo_runs ADD COLUMN IF NOT EXISTS created_at bigint",
    "CREATE INDEX IF NOT EXISTS refluxo_runs_due ON refluxo_runs (due_at, id)"
    " WHERE due_at IS NOT NULL",
    "CREATE INDEX IF NOT EXISTS refluxo_runs_updated ON refluxo_runs (updated_at DESC, id)",
    archive_table("refluxo_runs_results"),
)


def _schema_missing(message: str) -> bool:
    return "does not exist" in message and (
        'relation "refluxo_runs' in message or 'column "created_at"' in message
    )


DIALECT = replace(
    standard_dialect("PostgreSQL", schema=SCHEMA),
    schema_missing=_schema_missing,
    # A run's creation time (listed by find_runs) is its first write's updated_at.
    insert=(
        "INSERT INTO refluxo_runs"
        " (id, workflow, status, version, updated_at, snapshot, due_at, created_at)"
        " SELECT v.*, v.updated_at FROM (VALUES (?::text, ?::text, ?::text, ?::bigint,"
        " ?::bigint, ?::text, ?::bigint)) AS v (id, workflow, status, version, updated_at,"
        " snapshot, due_at) ON CONFLICT (id) DO NOTHING"
    ),
    find_rows=find_runs_statement(
        "refluxo_runs",
        current_node="(r.snapshot::jsonb ->> 'currentNodeId')",
        failed_reason="(r.snapshot::jsonb #>> '{metadata,failedReason}')",
    ),
)
"""The standard statements on ``refluxo_runs`` and ``refluxo_runs_results``."""


def _psycopg(sql: str) -> str:
    # The dialect's statements hold "?" only as placeholders, and no "%".
    return sql.replace("%", "%%").replace("?", "%s")


class PostgresDriver:
    """A :class:`~refluxo.core.sql.SqlDriver` on a pool of autocommit psycopg connections."""

    def __init__(self, pool: AsyncConnectionPool[Any]) -> None:
        self.pool = pool

    async def _call(self, sql: str, params: Sequence[Any], fetch: str) -> Any:
        try:
            async with self.pool.connection() as conn:
                cur = conn.cursor(row_factory=dict_row)
                await cur.execute(_psycopg(sql), params)
                if fetch == "one":
                    return await cur.fetchone()
                if fetch == "all":
                    return await cur.fetchall()
                return cur.rowcount
        except psycopg.Error as exc:
            raise _store_error(exc) from exc

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        changed: int = await self._call(sql, params, "count")
        return changed

    async def execute_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        try:
            async with self.pool.connection() as conn:
                await conn.cursor().executemany(_psycopg(sql), rows)
        except psycopg.Error as exc:
            raise _store_error(exc) from exc

    async def fetch_one(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        row: Row | None = await self._call(sql, params, "one")
        return row

    async def fetch_all(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        rows: list[Row] = await self._call(sql, params, "all")
        return rows

    async def script(self, statements: Sequence[str]) -> None:
        try:
            async with self.pool.connection() as conn, conn.transaction():
                # Two processes creating the same tables at once would collide: take turns.
                await conn.execute("SELECT pg_advisory_xact_lock(hashtext('refluxo_runs'))")
                for statement in statements:
                    await conn.execute(statement)
        except psycopg.Error as exc:
            raise _store_error(exc) from exc


def _store_error(exc: psycopg.Error) -> StoreError:
    # Lost connections, timeouts, serialization failures and deadlocks may pass on a retry.
    transient = isinstance(exc, psycopg.OperationalError) or getattr(exc, "sqlstate", "") in (
        "40001",
        "40P01",
    )
    return StoreError(str(exc).strip(), transient=transient)


class PostgresStateStore(SqlStateStore):
    """Runs in PostgreSQL: one row each, saved with ``UPDATE ... WHERE version = ?``.

    The tables are created on first use (or by :meth:`ensure_schema`).

    Args:
        pool: an open pool of autocommit connections (:func:`refluxo.postgres.open_pool`).
        max_bytes: refuse snapshots whose JSON is larger (10 MiB by default).
        clock: epoch milliseconds, for the save time and the due time of active runs.
    """

    def __init__(
        self,
        pool: AsyncConnectionPool[Any],
        *,
        max_bytes: int | None = MAX_BYTES,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        super().__init__(PostgresDriver(pool), DIALECT, max_bytes=max_bytes, clock=clock)
