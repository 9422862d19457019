"""A :class:`~refluxo.core.ports.StateStore` in one SQLite file, shared safely by processes."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from refluxo.core.errors import StoreError
from refluxo.core.model import now_ms
from refluxo.core.sql import Row, RunSummary, SqlStateStore, archive_table, standard_dialect

from ._sqlite import Database

__all__ = [
    "DEFAULT_MAX_BYTES",
    "SQLITE_DIALECT",
    "SQLITE_SCHEMA",
    "RunSummary",
    "SQLiteDriver",
    "SQLiteStateStore",
]

DEFAULT_MAX_BYTES = 10 * 1024 * 1024

# Every save rewrites the entries of each index whose columns its UPDATE sets, so the indexes
# leave out updated_at (set by every save) and workflow is never updated (it is fixed at
# create). Active runs, the bulk of the saves, are not in runs_settled at all: a save that
# keeps a run active touches no index. Files made by earlier versions had indexes on
# (status, updated_at) and (workflow, updated_at); they are dropped. runs_due (on due_at, for
# the reconciler) is created by _migrate: files made by earlier versions get the column first.
SQLITE_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    workflow TEXT,
    status TEXT NOT NULL,
    version INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    snapshot TEXT NOT NULL,
    due_at INTEGER
)""",
    "DROP INDEX IF EXISTS runs_by_status",
    "DROP INDEX IF EXISTS runs_by_workflow",
    "CREATE INDEX IF NOT EXISTS runs_workflow ON runs (workflow)",
    "CREATE INDEX IF NOT EXISTS runs_settled ON runs (status) WHERE status <> 'active'",
    archive_table("archived_results") + " WITHOUT ROWID",
)
"""The statements that create the store's tables and indexes; idempotent."""


def _migrate(db: sqlite3.Connection) -> None:
    """Add ``due_at`` to files made before it existed, filled in from the stored snapshots."""
    db.execute("BEGIN IMMEDIATE")  # another process may be migrating the same file
    try:
        columns = {row[1] for row in db.execute("PRAGMA table_info(runs)")}
        if "due_at" not in columns:
            db.execute("ALTER TABLE runs ADD COLUMN due_at INTEGER")
            # What stored_due_time says, read from the JSON (active: its last write).
            db.execute(
                "UPDATE runs SET due_at = CASE status"
                " WHEN 'active' THEN updated_at"
                " WHEN 'error' THEN COALESCE(json_extract(snapshot, '$.retryState.nextRetryAt'),"
                " CASE WHEN json_extract(snapshot, '$.retryState') IS NULL THEN NULL ELSE 0 END)"
                " WHEN 'paused' THEN json_extract(snapshot, '$.wait.until')"
                " END"
            )
        db.execute("CREATE INDEX IF NOT EXISTS runs_due ON runs (due_at) WHERE due_at IS NOT NULL")
        if "created_at" not in columns:
            # Runs stored before the column existed list with no creation time.
            db.execute("ALTER TABLE runs ADD COLUMN created_at INTEGER")
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


SQLITE_DIALECT = replace(
    standard_dialect("SQLite", runs="runs", results="archived_results"),
    schema=SQLITE_SCHEMA,
    # A run's creation time (listed by find_runs) is its first write's; ?5 is updated_at.
    insert=(
        "INSERT INTO runs (id, workflow, status, version, updated_at, snapshot, due_at, created_at)"
        " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?5) ON CONFLICT (id) DO NOTHING"
    ),
    # Setting workflow, even to its stored value, would rewrite its index entry; a run keeps
    # its definition's name, so a save tries first the UPDATE that leaves it alone.
    update_same_workflow=(
        "UPDATE runs SET status = ?, version = ?, updated_at = ?, snapshot = ?, due_at = ?"
        " WHERE id = ? AND version = ? AND workflow IS ?"
    ),
    # Says in so many words what the partial index runs_settled covers, which is the only way
    # SQLite's planner uses it; active runs are found by a scan.
    settled_hint="status <> 'active'",
)
"""The SQLite statements: the standard ones, on the tables ``runs`` and ``archived_results``."""


class SQLiteDriver:
    """A :class:`~refluxo.core.sql.SqlDriver` on one SQLite file, shared safely by processes.

    ``database`` opens the connection on first use (WAL mode), shares it with every other
    driver and scheduler of this process on the same file, and runs its schema once. Each
    call is one autocommit statement.

    The methods are ``async`` to fit the port but call SQLite synchronously: a statement takes
    microseconds, and a thread hop would cost more. While another process holds the write lock,
    a call blocks the event loop for up to ``busy_timeout_ms`` before it fails with a transient
    :class:`~refluxo.core.errors.StoreError`.
    """

    def __init__(self, database: Database) -> None:
        self._database = database

    def close(self) -> None:
        """Stop using the connection; the next call opens it again."""
        self._database.close()

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        with self._database.use(StoreError, "sqlite3") as db:
            return db.execute(sql, params).rowcount

    async def execute_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        with self._database.use(StoreError, "sqlite3") as db:
            db.executemany(sql, rows)

    async def fetch_one(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        with self._database.use(StoreError, "sqlite3") as db:
            cur = db.execute(sql, params)
            row = cur.fetchone()
            if row is None:
                return None
            return dict(zip([c[0] for c in cur.description], row, strict=True))

    async def fetch_all(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        with self._database.use(StoreError, "sqlite3") as db:
            cur = db.execute(sql, params)
            names = [c[0] for c in cur.description]
            return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    async def script(self, statements: Sequence[str]) -> None:
        with self._database.use(StoreError, "sqlite3") as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                for statement in statements:
                    db.execute(statement)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise


class SQLiteStateStore(SqlStateStore):
    """Stores each run as one row of a ``runs`` table: the snapshot's JSON plus a few columns.

    The SQL store of :mod:`refluxo.core.sql` on :class:`SQLiteDriver`. Several processes may
    share one file: creates are ``INSERT ... ON CONFLICT DO NOTHING`` and saves are
    ``UPDATE ... WHERE version = ?``, each one atomic statement, so optimistic locking holds
    across processes. The file is opened in WAL mode on first use, not in the constructor.

    Calls run SQLite synchronously (see :class:`SQLiteDriver`): while another process holds
    the write lock, a call blocks for up to ``busy_timeout_ms`` before it fails with a
    transient :class:`~refluxo.core.errors.StoreError`.

    Args:
        path: the database file; created (with its table) when missing.
        max_bytes: refuse snapshots whose JSON is larger, with
            :class:`~refluxo.core.errors.PayloadTooLarge`; None for no limit.
        busy_timeout_ms: how long a write waits for another connection's lock.
        clock: epoch milliseconds, for the ``updated_at`` column.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        max_bytes: int | None = DEFAULT_MAX_BYTES,
        busy_timeout_ms: int = 5000,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        self.path = path
        self.busy_timeout_ms = busy_timeout_ms
        schema = ";\n".join(SQLITE_SCHEMA) + ";"
        self._database = Database(
            path, busy_timeout_ms=busy_timeout_ms, schema=schema, migrate=_migrate
        )
        self._driver = SQLiteDriver(self._database)
        super().__init__(self._driver, SQLITE_DIALECT, max_bytes=max_bytes, clock=clock)

    def close(self) -> None:
        """Close the connection (unless another object of this process on the file uses it);
        the next call opens it again."""
        self._driver.close()
