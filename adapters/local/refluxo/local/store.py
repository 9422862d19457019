"""A :class:`~refluxo.core.ports.StateStore` in one SQLite file, shared safely by processes."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass

from refluxo.core.errors import RunNotFound, StoreError, VersionConflict
from refluxo.core.model import NodeResult, Snapshot, encode_snapshot, now_ms
from refluxo.core.ports import (
    DueRuns,
    ResultArchive,
    RunIndex,
    RunInfo,
    StateStore,
    stored_due_time,
)

from ._sqlite import Database

DEFAULT_MAX_BYTES = 10 * 1024 * 1024

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    workflow TEXT,
    status TEXT NOT NULL,
    version INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    snapshot TEXT NOT NULL,
    due_at INTEGER
);
-- Every save rewrites the entries of each index whose columns its UPDATE sets, so the indexes
-- leave out updated_at (set by every save) and workflow is never updated (it is fixed at
-- create). Active runs, the bulk of the saves, are not in runs_settled at all: a save that
-- keeps a run active touches no index. Files made by earlier versions had indexes on
-- (status, updated_at) and (workflow, updated_at); they are dropped.
DROP INDEX IF EXISTS runs_by_status;
DROP INDEX IF EXISTS runs_by_workflow;
CREATE INDEX IF NOT EXISTS runs_workflow ON runs (workflow);
CREATE INDEX IF NOT EXISTS runs_settled ON runs (status) WHERE status <> 'active';
-- runs_due (on due_at, for the reconciler) is created by _migrate: files made by earlier
-- versions get the column first.
CREATE TABLE IF NOT EXISTS archived_results (
    run_id TEXT NOT NULL,
    node_id TEXT NOT NULL,
    idx INTEGER NOT NULL,
    result TEXT NOT NULL,
    PRIMARY KEY (run_id, node_id, idx)
) WITHOUT ROWID;
"""


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


@dataclass(frozen=True)
class RunSummary:
    """One run as :meth:`SQLiteStateStore.list_runs` lists it, without its snapshot.

    Attributes:
        run_id: the run's id.
        workflow: the name of its workflow definition, or None when the run has none.
        status: the run's status (``active``, ``paused``, ``error``, ``completed``, ``failed``).
        version: the stored snapshot's version.
        updated_at: when the run was last written, in epoch milliseconds.
    """

    run_id: str
    workflow: str | None
    status: str
    version: int
    updated_at: int


class SQLiteStateStore(StateStore, ResultArchive, DueRuns, RunIndex):
    """Stores each run as one row of a ``runs`` table: the snapshot's JSON plus a few columns.

    Several processes may share one file: creates are ``INSERT OR IGNORE`` and saves are
    ``UPDATE ... WHERE version = ?``, each one atomic statement, so optimistic locking holds
    across processes. The file is opened in WAL mode on first use, not in the constructor.

    The methods are ``async`` to fit the port but call SQLite synchronously: a statement takes
    microseconds, and a thread hop would cost more. While another process holds the write lock,
    a call blocks the event loop for up to ``busy_timeout_ms`` before it fails with a transient
    :class:`~refluxo.core.errors.StoreError`.

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
        self.max_bytes = max_bytes
        self.busy_timeout_ms = busy_timeout_ms
        self.clock = clock
        self._database = Database(
            path, busy_timeout_ms=busy_timeout_ms, schema=_SCHEMA, migrate=_migrate
        )

    def close(self) -> None:
        """Close the connection (unless another object of this process on the file uses it);
        the next call opens it again."""
        self._database.close()

    def _use(self, what: str) -> AbstractContextManager[sqlite3.Connection]:
        """``with self._use(what) as db:`` the connection, for the block alone; SQLite errors
        in it are raised as StoreErrors."""
        return self._database.use(StoreError, what)

    def _encode(self, snapshot: Snapshot) -> str:
        return encode_snapshot(snapshot, self.max_bytes)

    def _columns(self, snapshot: Snapshot) -> tuple[str | None, str, int, int, str, int | None]:
        workflow = snapshot.definition.name if snapshot.definition is not None else None
        raw = self._encode(snapshot)
        now = self.clock()
        return workflow, snapshot.status, snapshot.version, now, raw, stored_due_time(snapshot, now)

    async def create(self, snapshot: Snapshot) -> bool:
        """Store ``snapshot`` as a new run, only if no run with its id exists.

        Returns:
            True when it was stored; False when the id was taken (nothing was written).

        Raises:
            PayloadTooLarge: the snapshot's JSON is over ``max_bytes``; nothing was written.
            StoreError: SQLite failed; ``transient`` when the file was locked.
        """
        columns = self._columns(snapshot)
        with self._use(f"create {snapshot.workflow_id!r}") as db:
            cur = db.execute(
                "INSERT OR IGNORE INTO runs"
                " (id, workflow, status, version, updated_at, snapshot, due_at, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (snapshot.workflow_id, *columns, columns[3]),
            )
            return cur.rowcount == 1

    async def load(self, run_id: str) -> Snapshot:
        """Return the stored snapshot of ``run_id``.

        Raises:
            RunNotFound: no run has that id.
            StoreError: SQLite failed, or the stored JSON is not a valid snapshot.
        """
        with self._use(f"load {run_id!r}") as db:
            row = db.execute("SELECT snapshot FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            raise RunNotFound(run_id)
        return Snapshot.from_stored(run_id, row[0], "the SQLite store")

    async def save(self, snapshot: Snapshot, *, expected_version: int) -> None:
        """Replace the stored run with ``snapshot`` if its stored version is ``expected_version``.

        Raises:
            VersionConflict: the stored version differs; nothing was written.
            RunNotFound: no run has that id; nothing was written.
            PayloadTooLarge: the snapshot's JSON is over ``max_bytes``; nothing was written.
            StoreError: SQLite failed; ``transient`` when the file was locked.
        """
        run_id = snapshot.workflow_id
        workflow = snapshot.definition.name if snapshot.definition is not None else None
        raw = self._encode(snapshot)
        now = self.clock()
        values = (snapshot.status, snapshot.version, now, raw, stored_due_time(snapshot, now))
        match = (run_id, expected_version)
        with self._use(f"save {run_id!r}") as db:
            # Setting workflow, even to its stored value, would rewrite its index entry; a run
            # keeps its definition's name, so the column is set only when it does change.
            cur = db.execute(
                "UPDATE runs SET status = ?, version = ?, updated_at = ?, snapshot = ?,"
                " due_at = ? WHERE id = ? AND version = ? AND workflow IS ?",
                (*values, *match, workflow),
            )
            if cur.rowcount == 0:
                cur = db.execute(
                    "UPDATE runs SET status = ?, version = ?, updated_at = ?, snapshot = ?,"
                    " due_at = ?, workflow = ? WHERE id = ? AND version = ?",
                    (*values, workflow, *match),
                )
            if cur.rowcount == 1:
                return
            # Nothing matched: tell a missing run from a stale version. Runs are never deleted,
            # so a row seen now existed when the UPDATE ran; its version may have moved since,
            # which only makes ``actual`` fresher.
            row = db.execute("SELECT version FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            raise RunNotFound(run_id)
        raise VersionConflict(run_id, expected_version, int(row[0]))

    async def archive_results(
        self, run_id: str, node_id: str, first_index: int, results: Sequence[NodeResult]
    ) -> None:
        """Keep results trimmed out of a snapshot (see :class:`ResultArchive`); idempotent."""
        rows = [(run_id, node_id, first_index + i, r.to_json()) for i, r in enumerate(results)]
        with self._use(f"archive results of {run_id!r}") as db:
            db.executemany(
                "INSERT OR IGNORE INTO archived_results (run_id, node_id, idx, result)"
                " VALUES (?, ?, ?, ?)",
                rows,
            )

    async def archived_results(self, run_id: str, node_id: str) -> list[NodeResult]:
        """Every archived result of ``node_id`` in ``run_id``, oldest first."""
        with self._use(f"read archived results of {run_id!r}") as db:
            rows = db.execute(
                "SELECT result FROM archived_results WHERE run_id = ? AND node_id = ? ORDER BY idx",
                (run_id, node_id),
            ).fetchall()
        return [NodeResult.model_validate_json(row[0]) for row in rows]

    async def due_runs(self, *, due_before: int, limit: int) -> list[str]:
        """Ids of unfinished runs due at or before ``due_before``, earliest first (see
        :class:`~refluxo.core.ports.DueRuns`); served by the ``runs_due`` index.

        Raises:
            StoreError: SQLite failed.
        """
        with self._use("find due runs") as db:
            rows = db.execute(
                "SELECT id FROM runs WHERE due_at IS NOT NULL AND due_at <= ?"
                " ORDER BY due_at, id LIMIT ?",
                (due_before, limit),
            ).fetchall()
        return [row[0] for row in rows]

    async def list_runs(
        self, *, status: str | None = None, workflow: str | None = None, limit: int = 100
    ) -> list[RunSummary]:
        """The most recently updated runs, newest first, without their snapshots.

        Args:
            status: only runs with this status.
            workflow: only runs of the workflow definition with this name.
            limit: at most this many.

        Raises:
            StoreError: SQLite failed.
        """
        where: list[str] = []
        params: list[object] = []
        if status is not None:
            where.append("status = ?")
            params.append(status)
            if status != "active":
                # Says in so many words what the partial index runs_settled covers, which is
                # the only way SQLite's planner uses it; active runs are found by a scan.
                where.append("status <> 'active'")
        if workflow is not None:
            where.append("workflow = ?")
            params.append(workflow)
        sql = "SELECT id, workflow, status, version, updated_at FROM runs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        # id breaks ties so that pages of runs written in the same millisecond are stable.
        sql += " ORDER BY updated_at DESC, id LIMIT ?"
        params.append(limit)
        with self._use("list runs") as db:
            rows = db.execute(sql, params).fetchall()
        return [RunSummary(*row) for row in rows]

    async def find_runs(
        self,
        *,
        workflow: str | None = None,
        status: str | None = None,
        updated_before: int | None = None,
        updated_after: int | None = None,
        after: tuple[int, str] | None = None,
        limit: int = 50,
    ) -> list[RunInfo]:
        """Runs newest first with keyset pagination (see :class:`~refluxo.core.ports.RunIndex`).

        The current node and the failed reason are read from the JSON of the rows returned
        only (``json_extract``), so a page costs ``limit`` snapshot reads; without a filter
        the ids are sorted by a scan of the table (``updated_at`` is left unindexed to keep
        saves cheap).

        Raises:
            StoreError: SQLite failed.
        """
        where: list[str] = []
        params: list[object] = []
        if status is not None:
            where.append("status = ?")
            params.append(status)
            if status != "active":
                where.append("status <> 'active'")  # lets the planner use runs_settled
        if workflow is not None:
            where.append("workflow = ?")
            params.append(workflow)
        if updated_before is not None:
            where.append("updated_at < ?")
            params.append(updated_before)
        if updated_after is not None:
            where.append("updated_at >= ?")
            params.append(updated_after)
        if after is not None:
            where.append("(updated_at < ? OR (updated_at = ? AND id > ?))")
            params.extend((after[0], after[0], after[1]))
        # The page's ids first, then the JSON of those rows alone: a sort carries every column
        # it outputs, so reading the snapshots in the sort would parse every matching row.
        page = "SELECT id FROM runs"
        if where:
            page += " WHERE " + " AND ".join(where)
        page += " ORDER BY updated_at DESC, id LIMIT ?"
        params.append(limit)
        sql = (
            "SELECT r.id, r.workflow, r.status, json_extract(r.snapshot, '$.currentNodeId'),"
            " r.version, r.created_at, r.updated_at, CASE r.status WHEN 'failed' THEN"
            " json_extract(r.snapshot, '$.metadata.failedReason') END"
            f" FROM ({page}) AS page JOIN runs AS r ON r.id = page.id"
            " ORDER BY r.updated_at DESC, r.id"
        )
        with self._use("find runs") as db:
            rows = db.execute(sql, params).fetchall()
        return [
            RunInfo(
                run_id=row[0],
                workflow=row[1],
                status=row[2],
                current_node=row[3] if isinstance(row[3], str) else None,
                version=row[4],
                created_at=row[5],
                updated_at=row[6],
                failed_reason=row[7] if isinstance(row[7], str) else None,
            )
            for row in rows
        ]
