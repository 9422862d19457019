"""One :class:`~refluxo.core.ports.StateStore` for every SQL database, written once.

A backend supplies two things:

* a **driver** (:class:`SqlDriver`): five async calls over its connection or binding
  (execute, execute many, fetch one, fetch all, run a script), rows as mappings, failures as
  :class:`~refluxo.core.errors.StoreError`;
* a **dialect** (:class:`SqlDialect`): the statements, as data: the schema, the
  compare-and-set ``UPDATE ... WHERE id = ? AND version = ?``, the re-read that tells
  RunNotFound from VersionConflict, the results archive, ``due_runs``, ``list_runs`` and
  ``find_runs`` (the operator's run listing, with filters and a cursor).
  :func:`standard_dialect` writes them in the SQL that SQLite, D1 and PostgreSQL share; a
  backend replaces only what differs.

:class:`SqlStateStore` does the rest: snapshot encoding within the size limit
(:func:`~refluxo.core.model.encode_snapshot`), decoding what was stored
(:func:`~refluxo.core.model.decode_snapshot`), the ``due_at`` column
(:func:`~refluxo.core.ports.stored_due_time`), and error messages that say what failed.

The table a dialect creates (its names are the dialect's)::

    id          TEXT PRIMARY KEY   the run id (case-sensitive)
    workflow    TEXT NULL          snapshot.definition.name
    status      TEXT               the snapshot's status
    version     INTEGER            the snapshot's version: the locking column
    updated_at  INTEGER            epoch milliseconds of the last write
    snapshot    TEXT               the whole snapshot as JSON text
    due_at      INTEGER NULL       when the run is due (indexed): ``due_runs`` reads it

and the archive ``(run_id, node_id, idx, result)`` with primary key ``(run_id, node_id, idx)``.

Pure Python: no driver is imported here, so the module loads under Pyodide and in the core.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar, runtime_checkable

from .errors import RunNotFound, StoreError, VersionConflict
from .model import (
    NodeResult,
    Snapshot,
    WrittenSnapshots,
    decode_result,
    decode_snapshot,
    encode_snapshot,
    now_ms,
)
from .ports import DueRuns, ResultArchive, RunIndex, RunInfo, StateStore, stored_due_time

__all__ = [
    "Row",
    "RunSummary",
    "SqlDialect",
    "SqlDriver",
    "SqlStateStore",
    "archive_table",
    "find_runs_statement",
    "standard_dialect",
]

Row = Mapping[str, Any]
"""One row a driver fetched: column name (as the statement's select list names it) to value."""

T = TypeVar("T")


@runtime_checkable
class SqlDriver(Protocol):
    """What :class:`SqlStateStore` needs from a database: five calls, all async.

    A driver must:

    * **Take ``?`` placeholders** (qmark style), bound in order from ``params``. A database
      that numbers them (PostgreSQL's ``$1``) or uses ``%s`` translates: the statements it
      receives contain ``?`` only as placeholders, never inside string literals.
    * **Run each call on its own** (autocommit): a statement is atomic, and the store relies
      on a single ``UPDATE ... WHERE version = ?`` being a compare-and-set. Only
      :meth:`script` groups statements.
    * **Return rows as mappings** from the select list's column names to Python values
      (``int`` for INTEGER, ``str`` for TEXT, None for NULL).
    * **Raise** :class:`~refluxo.core.errors.StoreError` ``from`` the database's own exception
      for every failure of the database (connection, lock, SQL), with ``transient=True`` when
      the same call may succeed if tried again (lock contention, lost connection, timeout).
      The message is the database's; the store puts what it was doing in front of it.
    * Open its connection lazily (not in its constructor) if it has one to open, and may run
      the schema itself when it does (SQLite runs it once per connection).
    """

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one statement; return how many rows it inserted, updated or deleted."""
        ...

    async def execute_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """Run one statement once per parameter row (a batch, or ``executemany``).

        Used for ``INSERT ... ON CONFLICT DO NOTHING``: idempotent, so a batch cut short by a
        failure may be run again.
        """
        ...

    async def fetch_one(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        """Run a query; return its first row, or None when it has none."""
        ...

    async def fetch_all(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        """Run a query; return all its rows, in the order the query gives."""
        ...

    async def script(self, statements: Sequence[str]) -> None:
        """Run ``statements`` (no parameters) in order, in one transaction: all or none.

        Creates and migrates the schema; the statements are idempotent (``IF NOT EXISTS``).
        """
        ...


@dataclass(frozen=True)
class RunSummary:
    """One run as :meth:`SqlStateStore.list_runs` lists it, without its snapshot.

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


@dataclass(frozen=True)
class SqlDialect:
    """The statements of one database, as data; :func:`standard_dialect` fills them in.

    Every statement takes ``?`` placeholders, bound in the order given here.

    Attributes:
        name: the database, for error messages (``"SQLite failed to save run 'x': ..."``).
        runs: the runs table's name.
        results: the archive table's name.
        schema: statements that create the tables and indexes; idempotent. Run by
            :meth:`SqlStateStore.ensure_schema` (unless the driver runs them itself).
        insert: ``(id, workflow, status, version, updated_at, snapshot, due_at)``; changes no
            row when the id exists.
        update: ``(workflow, status, version, updated_at, snapshot, due_at, id,
            expected_version)``; changes the row only if its version is the expected one.
        update_same_workflow: optional, tried before ``update``: ``(status, version,
            updated_at, snapshot, due_at, id, expected_version, workflow)``, changing the row
            only if its workflow is that one too (so the workflow column, and its index, is
            not rewritten on every save); None to run ``update`` alone.
        select_snapshot: ``(id)`` -> the column ``snapshot``.
        select_version: ``(id)`` -> the column ``version``: the re-read after a refused save.
        archive: ``(run_id, node_id, idx, result)``; changes no row when the key exists.
        archived: ``(run_id, node_id)`` -> the column ``result``, by ``idx``.
        due: ``(due_before, limit)`` -> the column ``id``, earliest ``due_at`` first.
        list_runs: ``SELECT id, workflow, status, version, updated_at FROM <runs>``, to which
            :meth:`SqlStateStore.list_runs` adds its conditions, order and limit.
        find_page: ``SELECT id FROM <runs>``, to which :meth:`SqlStateStore.find_runs` adds
            its conditions, order and limit: the ids of one page.
        find_rows: the page's runs as ``id, workflow, status, node, version, created_at,
            updated_at, reason`` (the current node and a failed run's reason read from the
            snapshot's JSON), newest first, with ``{page}`` where the page's query goes; see
            :func:`find_runs_statement`.
        settled_hint: a condition added to ``list_runs`` when it asks for a status other than
            ``active`` (a partial index's own predicate, which SQLite's planner needs to use
            the index); empty for none.
        schema_missing: whether a failure's message says the schema is missing or older
            (then the store runs :attr:`prepare` and tries once more); None when the driver
            ensures the schema itself.
        prepare: creates or migrates the schema through the driver; by default runs
            :attr:`schema` as one script.
    """

    name: str
    runs: str
    results: str
    schema: tuple[str, ...]
    insert: str
    update: str
    update_same_workflow: str | None
    select_snapshot: str
    select_version: str
    archive: str
    archived: str
    due: str
    list_runs: str
    find_page: str
    find_rows: str
    settled_hint: str = ""
    schema_missing: Callable[[str], bool] | None = None
    prepare: Callable[[SqlDriver, SqlDialect], Awaitable[None]] | None = None


def archive_table(results: str) -> str:
    """``CREATE TABLE IF NOT EXISTS`` of the archive table ``results``, in the SQL that SQLite,
    D1 and PostgreSQL share (a dialect may add to its end, such as SQLite's ``WITHOUT ROWID``)."""
    return (
        f"CREATE TABLE IF NOT EXISTS {results} (\n"
        "    run_id TEXT NOT NULL,\n"
        "    node_id TEXT NOT NULL,\n"
        "    idx INTEGER NOT NULL,\n"
        "    result TEXT NOT NULL,\n"
        "    PRIMARY KEY (run_id, node_id, idx)\n"
        ")"
    )


def find_runs_statement(
    runs: str,
    *,
    current_node: str = "json_extract(r.snapshot, '$.currentNodeId')",
    failed_reason: str = "json_extract(r.snapshot, '$.metadata.failedReason')",
    created_at: str = "r.created_at",
) -> str:
    """The dialect's ``find_rows``: the runs of a page (``{page}``, a query of their ids),
    joined back to ``runs`` (as ``r``) so that only their JSON is read.

    A sort carries every column it outputs, so reading the snapshots in the sort itself would
    parse every matching row; the page's ids are sorted first.

    Args:
        runs: the runs table.
        current_node: the SQL that reads ``currentNodeId`` from ``r.snapshot``.
        failed_reason: the SQL that reads ``metadata.failedReason`` from ``r.snapshot``.
        created_at: the creation time's column, or ``NULL`` for a table that keeps none.
    """
    return (
        "SELECT r.id AS id, r.workflow AS workflow, r.status AS status,"
        f" {current_node} AS node, r.version AS version, {created_at} AS created_at,"
        f" r.updated_at AS updated_at, CASE r.status WHEN 'failed' THEN {failed_reason}"
        f" END AS reason FROM ({{page}}) AS page JOIN {runs} AS r ON r.id = page.id"
        " ORDER BY r.updated_at DESC, r.id"
    )


_TABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,55}")


def standard_dialect(
    name: str,
    *,
    runs: str = "refluxo_runs",
    results: str | None = None,
    schema: Sequence[str] = (),
) -> SqlDialect:
    """The statements in the SQL that SQLite (3.24+), D1 and PostgreSQL share.

    Args:
        name: the database, for error messages.
        runs: the runs table (letters, digits, ``_``).
        results: the archive table; ``<runs>_results`` by default.
        schema: the statements that create both tables (their types differ by database).

    Raises:
        ValueError: a table name is not letters, digits and ``_``.
    """
    results = results if results is not None else f"{runs}_results"
    for table in (runs, results):
        if not _TABLE_NAME.fullmatch(table):
            raise ValueError(f"invalid table name {table!r}: letters, digits and '_'")
    return SqlDialect(
        name=name,
        runs=runs,
        results=results,
        schema=tuple(schema),
        insert=(
            f"INSERT INTO {runs} (id, workflow, status, version, updated_at, snapshot, due_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING"
        ),
        update=(
            f"UPDATE {runs} SET workflow = ?, status = ?, version = ?, updated_at = ?,"
            " snapshot = ?, due_at = ? WHERE id = ? AND version = ?"
        ),
        update_same_workflow=None,
        select_snapshot=f"SELECT snapshot FROM {runs} WHERE id = ?",
        select_version=f"SELECT version FROM {runs} WHERE id = ?",
        archive=(
            f"INSERT INTO {results} (run_id, node_id, idx, result) VALUES (?, ?, ?, ?)"
            " ON CONFLICT DO NOTHING"
        ),
        archived=f"SELECT result FROM {results} WHERE run_id = ? AND node_id = ? ORDER BY idx",
        due=(
            f"SELECT id FROM {runs} WHERE due_at IS NOT NULL AND due_at <= ?"
            " ORDER BY due_at, id LIMIT ?"
        ),
        list_runs=f"SELECT id, workflow, status, version, updated_at FROM {runs}",
        find_page=f"SELECT id FROM {runs}",
        find_rows=find_runs_statement(runs),
    )


class SqlStateStore(StateStore, ResultArchive, DueRuns, RunIndex):
    """Keeps each run as one row; ``create`` and ``save`` are each one atomic statement.

    * ``create``: the dialect's ``insert`` (``ON CONFLICT (id) DO NOTHING``); one changed row
      means it was stored.
    * ``save``: ``UPDATE ... WHERE id = ? AND version = ?``; zero changed rows means the
      version moved on (VersionConflict) or the run does not exist (RunNotFound), which one
      read then tells apart. Runs are never deleted, so a row seen then existed when the
      UPDATE ran; its version may have moved since, which only makes ``actual`` fresher.

    The database runs each statement atomically, so of concurrent writers exactly one wins:
    the whole StateStore contract holds, concurrency included. Results trimmed out of a
    snapshot by a retention limit are kept one row each in the archive table.

    The schema is created by :meth:`ensure_schema` (call it at start-up), by the dialect on
    demand (``schema_missing``: D1 creates its table at the first statement that misses it),
    or by the driver when it opens a connection (SQLite).

    Args:
        driver: the connection (see :class:`SqlDriver`).
        dialect: the statements (see :class:`SqlDialect`, :func:`standard_dialect`).
        max_bytes: refuse snapshots whose JSON is larger, with
            :class:`~refluxo.core.errors.PayloadTooLarge`; None for no limit.
        clock: epoch milliseconds, for ``updated_at`` and ``due_at``.
    """

    def __init__(
        self,
        driver: SqlDriver,
        dialect: SqlDialect,
        *,
        max_bytes: int | None,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        self.driver = driver
        self.dialect = dialect
        self.max_bytes = max_bytes
        self.clock = clock
        self._written = WrittenSnapshots()

    # --- schema ----------------------------------------------------------------------------

    async def ensure_schema(self) -> None:
        """Create (or migrate) the tables and indexes if need be; safe to call any time.

        Raises:
            StoreError: the database failed.
        """
        d = self.dialect
        try:
            if d.prepare is not None:
                await d.prepare(self.driver, d)
            elif d.schema:
                await self.driver.script(d.schema)
        except StoreError as exc:
            raise self._failed(exc, f"create table {d.runs!r}") from exc.__cause__ or exc

    async def _run(self, doing: str, call: Callable[[], Awaitable[T]]) -> T:
        """``await call()``; when it fails because the schema is missing (or older), prepare
        the schema and try once more. A failure is raised as a StoreError saying ``doing``."""
        try:
            return await call()
        except StoreError as exc:
            missing = self.dialect.schema_missing
            if missing is None or not missing(str(exc)):
                raise self._failed(exc, doing) from exc.__cause__ or exc
        await self.ensure_schema()
        try:
            return await call()
        except StoreError as exc:
            raise self._failed(exc, doing) from exc.__cause__ or exc

    def _failed(self, exc: StoreError, doing: str) -> StoreError:
        return StoreError(f"{self.dialect.name} failed to {doing}: {exc}", transient=exc.transient)

    # --- encoding --------------------------------------------------------------------------

    def encode(self, snapshot: Snapshot) -> str:
        """The JSON stored for ``snapshot`` (see :func:`~refluxo.core.model.encode_snapshot`);
        a backend with its own limits (a row's size) checks them here too."""
        return encode_snapshot(snapshot, self.max_bytes)

    def _columns(self, snapshot: Snapshot) -> tuple[str | None, str, tuple[Any, ...]]:
        """The workflow column, the JSON, and (status, version, updated_at, snapshot, due_at)."""
        raw = self.encode(snapshot)
        workflow = snapshot.definition.name if snapshot.definition is not None else None
        now = self.clock()
        return (
            workflow,
            raw,
            (
                snapshot.status,
                snapshot.version,
                now,
                raw,
                stored_due_time(snapshot, now),
            ),
        )

    # --- the port --------------------------------------------------------------------------

    async def create(self, snapshot: Snapshot) -> bool:
        """Store ``snapshot`` as a new run, only if no run with its id exists.

        Returns:
            True when it was stored; False when the id was taken (nothing was written).

        Raises:
            PayloadTooLarge: the snapshot's JSON is over ``max_bytes``; nothing was written.
            NotStrictJson: the snapshot would not read back as it is; nothing was written.
            StoreError: the database failed; ``transient`` when trying again may succeed.
        """
        run_id = snapshot.run_id
        workflow, raw, values = self._columns(snapshot)
        params = (run_id, workflow, *values)
        changed = await self._run(
            f"create run {run_id!r}", lambda: self.driver.execute(self.dialect.insert, params)
        )
        if changed == 1:
            self._written.wrote(snapshot, raw)
        return changed == 1

    async def load(self, run_id: str) -> Snapshot:
        """Return the stored snapshot of ``run_id``.

        Raises:
            RunNotFound: no run has that id.
            StoreError: the database failed, or the stored JSON is not a valid snapshot.
        """
        row = await self._run(
            f"load run {run_id!r}",
            lambda: self.driver.fetch_one(self.dialect.select_snapshot, (run_id,)),
        )
        if row is None:
            raise RunNotFound(run_id)
        raw = row["snapshot"]
        known = self._written.read(run_id, raw)
        if known is not None:
            return known
        return decode_snapshot(run_id, raw, f"{self.dialect.name} table {self.dialect.runs!r}")

    async def save(self, snapshot: Snapshot, *, expected_version: int) -> None:
        """Replace the stored run with ``snapshot`` if its stored version is ``expected_version``.

        Raises:
            VersionConflict: the stored version differs; nothing was written.
            RunNotFound: no run has that id; nothing was written.
            PayloadTooLarge: the snapshot's JSON is over ``max_bytes``; nothing was written.
            NotStrictJson: the snapshot would not read back as it is; nothing was written.
            StoreError: the database failed; ``transient`` when trying again may succeed.
        """
        d = self.dialect
        run_id = snapshot.run_id
        workflow, raw, values = self._columns(snapshot)
        match = (run_id, expected_version)
        doing = f"save run {run_id!r}"
        if d.update_same_workflow is not None:
            same = d.update_same_workflow
            changed = await self._run(
                doing, lambda: self.driver.execute(same, (*values, *match, workflow))
            )
            if changed == 1:
                self._written.wrote(snapshot, raw)
                return
        changed = await self._run(
            doing, lambda: self.driver.execute(d.update, (workflow, *values, *match))
        )
        if changed == 1:
            self._written.wrote(snapshot, raw)
            return
        row = await self._run(
            f"read run {run_id!r} after a refused save",
            lambda: self.driver.fetch_one(d.select_version, (run_id,)),
        )
        if row is None:
            raise RunNotFound(run_id)
        actual = row["version"]
        raise VersionConflict(run_id, expected_version, int(actual) if actual is not None else None)

    # --- DueRuns ---------------------------------------------------------------------------

    async def due_runs(self, *, due_before: int, limit: int) -> list[str]:
        """Ids of unfinished runs due at or before ``due_before``, earliest first (see
        :class:`~refluxo.core.ports.DueRuns`); served by the index on ``due_at``.

        Raises:
            StoreError: the database failed.
        """
        rows = await self._run(
            "find due runs", lambda: self.driver.fetch_all(self.dialect.due, (due_before, limit))
        )
        return [str(row["id"]) for row in rows]

    # --- ResultArchive ---------------------------------------------------------------------

    async def archive_results(
        self, run_id: str, node_id: str, first_index: int, results: Sequence[NodeResult]
    ) -> None:
        """Keep results trimmed out of a snapshot (see :class:`ResultArchive`); idempotent.

        Raises:
            StoreError: the database failed.
        """
        rows = [(run_id, node_id, first_index + i, r.to_json()) for i, r in enumerate(results)]
        if rows:
            await self._run(
                f"archive results of run {run_id!r}",
                lambda: self.driver.execute_many(self.dialect.archive, rows),
            )

    async def archived_results(self, run_id: str, node_id: str) -> list[NodeResult]:
        """Every archived result of ``node_id`` in ``run_id``, oldest first.

        Raises:
            StoreError: the database failed, or holds a result that is not valid (the error
                does not repeat the stored content).
        """
        rows = await self._run(
            f"read archived results of run {run_id!r}",
            lambda: self.driver.fetch_all(self.dialect.archived, (run_id, node_id)),
        )
        where = f"{self.dialect.name} table {self.dialect.results!r}"
        return [decode_result(run_id, row["result"], where) for row in rows]

    # --- listing ---------------------------------------------------------------------------

    async def list_runs(
        self, *, status: str | None = None, workflow: str | None = None, limit: int = 100
    ) -> list[RunSummary]:
        """The most recently updated runs, newest first, without their snapshots.

        Args:
            status: only runs with this status.
            workflow: only runs of the workflow definition with this name.
            limit: at most this many.

        Raises:
            StoreError: the database failed.
        """
        where: list[str] = []
        params: list[object] = []
        if status is not None:
            where.append("status = ?")
            params.append(status)
            if status != "active" and self.dialect.settled_hint:
                where.append(self.dialect.settled_hint)
        if workflow is not None:
            where.append("workflow = ?")
            params.append(workflow)
        sql = self.dialect.list_runs
        if where:
            sql += " WHERE " + " AND ".join(where)
        # id breaks ties so that pages of runs written in the same millisecond are stable.
        sql += " ORDER BY updated_at DESC, id LIMIT ?"
        params.append(limit)
        rows = await self._run("list runs", lambda: self.driver.fetch_all(sql, params))
        return [
            RunSummary(
                str(row["id"]),
                row["workflow"],
                str(row["status"]),
                int(row["version"]),
                int(row["updated_at"]),
            )
            for row in rows
        ]

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

        The page's ids are found first, then the current node and the failed reason are read
        from the JSON of those rows alone, so a page costs ``limit`` snapshot reads. A table
        that keeps no creation time lists ``created_at`` as None.

        Raises:
            StoreError: the database failed.
        """
        where: list[str] = []
        params: list[object] = []
        if status is not None:
            where.append("status = ?")
            params.append(status)
            if status != "active" and self.dialect.settled_hint:
                where.append(self.dialect.settled_hint)
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
        page = self.dialect.find_page
        if where:
            page += " WHERE " + " AND ".join(where)
        page += " ORDER BY updated_at DESC, id LIMIT ?"
        params.append(limit)
        sql = self.dialect.find_rows.replace("{page}", page)
        rows = await self._run("find runs", lambda: self.driver.fetch_all(sql, params))
        return [
            RunInfo(
                run_id=str(row["id"]),
                workflow=_text(row["workflow"]),
                status=str(row["status"]),
                current_node=_text(row["node"]),
                version=int(row["version"]),
                created_at=_ms(row["created_at"]),
                updated_at=int(row["updated_at"]),
                failed_reason=_text(row["reason"]),
            )
            for row in rows
        ]


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _ms(value: object) -> int | None:
    # D1 gives numbers as floats; bool is not a time.
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return int(value)
