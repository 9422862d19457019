"""The :class:`StateStore` on Cloudflare: :class:`D1StateStore` (strict) and :class:`KVStateStore`.

Use D1 unless you have a reason not to. D1 is SQLite: ``save`` is one conditional ``UPDATE``
and ``create`` one ``INSERT ... ON CONFLICT DO NOTHING``, both atomic, so of two writers
exactly one wins, as the port promises. Workers KV has no conditional write at all; the KV
store does the most KV allows and says below what that leaves open.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import replace
from functools import partial
from typing import Any

from refluxo.core.errors import PayloadTooLarge, RunNotFound, StoreError, VersionConflict
from refluxo.core.model import Snapshot, decode_snapshot, encode_snapshot, now_ms
from refluxo.core.ports import (
    DueRuns,
    RunIndex,
    RunInfo,
    StateStore,
    select_runs,
    stored_due_time,
)
from refluxo.core.sql import (
    Row,
    SqlDialect,
    SqlDriver,
    SqlStateStore,
    archive_table,
    find_runs_statement,
    standard_dialect,
)

from ._bindings import D1Database, D1PreparedStatement, KVNamespace
from ._errors import describe, is_transient, store_error
from .limits import D1_MAX_ROW_BYTES, KV_MAX_KEY_BYTES, KV_MAX_VALUE_BYTES

__all__ = [
    "D1_MAX_ROW_BYTES",
    "D1_SCHEMA",
    "DEFAULT_D1_MAX_BYTES",
    "KV_MAX_KEY_BYTES",
    "KV_MAX_VALUE_BYTES",
    "D1Driver",
    "D1StateStore",
    "KVStateStore",
    "d1_dialect",
]

DEFAULT_D1_MAX_BYTES = D1_MAX_ROW_BYTES - 1024
"""The default limit on a snapshot's JSON in D1: a row's limit less room for the other columns
(the whole row is checked as well)."""


def _field(obj: Any, name: str) -> Any:
    """``obj[name]`` for a dict (what the SDK makes of a JS object) or ``obj.name``; else None."""
    if obj is None:
        return None
    if isinstance(obj, Mapping):
        return obj.get(name)
    return getattr(obj, name, None)


# --------------------------------------------------------------------------------------------
# Workers KV
# --------------------------------------------------------------------------------------------


KV_PREFIX_SEPARATOR = "/"
"""What every KV prefix ends with; no run id contains it (see ``check_run_id``)."""

LEGACY_KV_PREFIX = "run:"
"""The default prefix of earlier versions, kept so their runs stay readable."""


def check_kv_prefix(prefix: str) -> str:
    """Return ``prefix`` if no other valid prefix's keys can fall in its range, else ValueError.

    A valid prefix ends in ``/`` (or is the legacy ``run:``) and holds no control character.
    Since run ids never contain ``/``, the key ``prefix + run_id`` of one deployment is never
    the key of another deployment's run, whichever two valid prefixes they use.
    """
    if prefix != LEGACY_KV_PREFIX and not (
        prefix.endswith(KV_PREFIX_SEPARATOR)
        and prefix.isprintable()
        and len(prefix.encode("utf-8", "surrogatepass")) <= 256
    ):
        raise ValueError(
            f"invalid KV prefix {prefix!r}: it must end in {KV_PREFIX_SEPARATOR!r} (which no run "
            "id contains, so no two deployments' keys overlap), be printable and at most 256 "
            "bytes, e.g. 'run/' or 'run/staging/'"
        )
    return prefix


class KVStateStore(StateStore, DueRuns, RunIndex):
    """Keeps each run as one Workers KV value; read, check, write, and check again.

    Layout: key ``prefix + run_id``; value the snapshot's JSON text; KV metadata
    ``{"version": N, "writer": W, "due": D, ...}``, where ``W`` is a random token fresh for
    every write and ``D`` the run's due time (:func:`~refluxo.core.ports.stored_due_time`, None
    when it is not due), written with the value in one ``put``. The metadata also holds what
    ``find_runs`` lists (status ``s``, workflow ``w``, node ``n``, failed reason ``f``, each cut
    to keep the whole within KV's 1024 bytes of metadata; created ``c`` and updated ``u`` in
    epoch ms).

    * ``create`` reads the key and writes only if it is absent.
    * ``save`` reads the stored version (from the metadata) and writes only if it is
      ``expected_version``.
    * After writing, both read the key again: if the metadata carries another writer's
      token, a concurrent writer got in between and won; ``create`` then answers False and
      ``save`` raises :class:`VersionConflict`, so the loser drops its step, as on a store
      with compare-and-set.

    What it cannot guarantee, because KV has no compare-and-set and is eventually consistent:

    * **Lost updates between concurrent writers.** The check and the write are two calls.
      Two writers that both read before either writes both write, and if each re-reads its
      own value before the other's write lands, both believe they won: the later write
      silently replaces the earlier one (a step's result, or an event added to the inbox, is
      lost). The re-read narrows this window; it does not close it. Its contract tests
      therefore declare no ``atomic_compare_and_set``.
    * **Stale reads across locations.** A write is visible at once where it was made, but
      other Cloudflare locations may keep serving the previous value for up to 60 seconds
      (KV's cache). An invocation in another location can load an old version, and even
      pass the version check against that stale copy and overwrite a newer run.
    * **One write per second per key.** KV refuses faster writes to one key with 429; that
      surfaces as a transient :class:`StoreError` and the queue consumer retries with backoff.
      Steps of one run closer than a second apart are therefore slowed down, not lost. The
      Worker writes a run's key once per queue delivery, however many steps the delivery
      runs (:mod:`refluxo.cloudflare.delivery`), so a run of fast steps stays near one write
      per delivery.

    * **Listing runs (``find_runs``, ``GET /runs``) lists every run too**: KV can list keys
      by prefix only, in key order, so every filter (workflow, status, time) and the order
      (newest first) are applied here to all the keys' metadata. One page costs one list
      call per 1,000 runs of the namespace's prefix, whatever its size, and the listing is
      eventually consistent (up to a minute late). Runs written before the metadata held
      these fields list with their status unknown (``?``) until their next save.
    * **Finding due runs lists every run.** KV has no query: ``due_runs`` lists the prefix's
      keys with their metadata (1,000 a call) and filters them, so it costs one list call per
      1,000 runs, finished ones included. KV's listing is eventually consistent too: a run
      written in the last minute, or its new due time, may be missing from it, so the
      reconciler sees such a run one cron tick later. A key written by a version without the
      ``due`` metadata is not found until its next save.

    Good enough for runs that only one invocation drives at a time from one location, and for
    trying things out; use :class:`D1StateStore` when correctness under concurrency matters.

    Args:
        namespace: the KV namespace binding (``env.STATE``).
        prefix: put before every run id to make the key; lets several deployments share a
            namespace. It must end in ``/``, which no run id contains, so no deployment's
            keys fall in another's range (``run/`` and ``run/staging/`` are apart, where
            ``run:`` and ``run:staging:`` were not: the run ``staging:x`` of the first was the
            run ``x`` of the second). ``run:``, the default of earlier versions, is still
            accepted, since every other prefix ends in ``/``.
        max_bytes: refuse snapshots whose JSON is larger (at most KV's 25 MiB value limit).
        clock: epoch milliseconds, for the due time of active runs and the write times.

    ``create`` raises ValueError for a run id whose key would pass KV's 512-byte limit;
    ``load`` and ``save`` answer RunNotFound for one, since no such run can exist.
    """

    def __init__(
        self,
        namespace: KVNamespace,
        *,
        prefix: str = "run:",
        max_bytes: int = KV_MAX_VALUE_BYTES,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        if not 0 < max_bytes <= KV_MAX_VALUE_BYTES:
            raise ValueError(
                f"max_bytes must be between 1 and {KV_MAX_VALUE_BYTES} (KV's value limit), "
                f"got {max_bytes}"
            )
        check_kv_prefix(prefix)
        self._kv = namespace
        self.prefix = prefix
        self.max_bytes = max_bytes
        self._clock = clock

    # --- the port --------------------------------------------------------------------------

    async def create(self, snapshot: Snapshot) -> bool:
        run_id = snapshot.run_id
        key = self._key(run_id)
        if key is None:
            raise ValueError(
                f"cannot store run id {run_id!r}: with the prefix {self.prefix!r} its KV key "
                f"would be empty or over {KV_MAX_KEY_BYTES} bytes"
            )
        raw = encode_snapshot(snapshot, self.max_bytes)
        existing = await self._call(self._kv.get(key), f"read run {run_id!r} before creating it")
        if existing is not None:
            return False
        token = await self._write(key, raw, snapshot, f"create run {run_id!r}", None)
        writer, _ = await self._writer(key, run_id)
        return writer == token

    async def load(self, run_id: str) -> Snapshot:
        key = self._key(run_id)
        if key is None:
            raise RunNotFound(run_id)
        raw = await self._call(self._kv.get(key, type="text"), f"load run {run_id!r}")
        if raw is None:
            raise RunNotFound(run_id)
        return decode_snapshot(run_id, raw, f"KV key {key!r}")

    async def save(self, snapshot: Snapshot, *, expected_version: int) -> None:
        run_id = snapshot.run_id
        key = self._key(run_id)
        if key is None:
            raise RunNotFound(run_id)
        raw = encode_snapshot(snapshot, self.max_bytes)
        found = await self._call(
            self._kv.getWithMetadata(key, type="text"), f"read run {run_id!r} before saving it"
        )
        value = _field(found, "value")
        if value is None:
            raise RunNotFound(run_id)
        stored = _version_of(_field(found, "metadata"), value)
        if stored != expected_version:
            raise VersionConflict(run_id, expected_version, stored)
        created = _field(_field(found, "metadata"), "c")
        token = await self._write(key, raw, snapshot, f"save run {run_id!r}", created)
        writer, version = await self._writer(key, run_id)
        if writer != token:
            # Another writer passed the same check and wrote after us: its snapshot stands.
            raise VersionConflict(run_id, expected_version, version)

    # --- DueRuns ----------------------------------------------------------------------------

    async def due_runs(self, *, due_before: int, limit: int) -> list[str]:
        """Runs due at or before ``due_before``, earliest first: a listing of every key."""
        due: list[tuple[int, str]] = []
        cursor: str | None = None
        while True:
            options: dict[str, Any] = {"prefix": self.prefix}
            if cursor:
                options["cursor"] = cursor
            page = await self._call(self._kv.list(**options), "list runs to find the due ones")
            for key in _field(page, "keys") or []:
                name = _field(key, "name")
                at = _field(_field(key, "metadata"), "due")
                if isinstance(at, float) and at.is_integer():
                    at = int(at)
                if not isinstance(name, str) or not isinstance(at, int) or at > due_before:
                    continue
                run_id = name[len(self.prefix) :]
                # Under the legacy prefix, another deployment's 'run:x/' keys are listed too.
                if KV_PREFIX_SEPARATOR not in run_id:
                    due.append((at, run_id))
            cursor = _field(page, "cursor")
            if _field(page, "list_complete") or not cursor:
                break
        return [run_id for _, run_id in sorted(due)[:limit]]

    # --- RunIndex -----------------------------------------------------------------------------

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
        """Runs newest first (see :class:`~refluxo.core.ports.RunIndex`): a listing of every
        key of the prefix, filtered and sorted here (see the class docstring for the cost)."""
        found: list[RunInfo] = []
        cursor: str | None = None
        while True:
            options: dict[str, Any] = {"prefix": self.prefix}
            if cursor:
                options["cursor"] = cursor
            page = await self._call(self._kv.list(**options), "list runs")
            for key in _field(page, "keys") or []:
                name = _field(key, "name")
                if not isinstance(name, str):
                    continue
                run_id = name[len(self.prefix) :]
                if KV_PREFIX_SEPARATOR in run_id:  # another deployment's key (legacy prefix)
                    continue
                meta = _field(key, "metadata")
                updated = _ms(_field(meta, "u")) or 0
                info = RunInfo(
                    run_id=run_id,
                    workflow=_text(_field(meta, "w")),
                    status=_text(_field(meta, "s")) or "?",
                    current_node=_text(_field(meta, "n")),
                    version=_ms(_field(meta, "version")) or 0,
                    created_at=_ms(_field(meta, "c")),
                    updated_at=updated,
                    failed_reason=_text(_field(meta, "f")),
                )
                found.append(info)
            cursor = _field(page, "cursor")
            if _field(page, "list_complete") or not cursor:
                break
        return select_runs(
            found,
            workflow=workflow,
            status=status,
            updated_before=updated_before,
            updated_after=updated_after,
            after=after,
            limit=limit,
        )

    # --- internals -------------------------------------------------------------------------

    def _key(self, run_id: str) -> str | None:
        if KV_PREFIX_SEPARATOR in run_id:  # would reach into another prefix's range
            return None
        key = self.prefix + run_id
        try:
            size = len(key.encode("utf-8"))
        except UnicodeEncodeError:  # lone surrogates
            return None
        if not run_id or size > KV_MAX_KEY_BYTES or key in (".", ".."):
            return None
        return key

    async def _write(self, key: str, raw: str, snapshot: Snapshot, doing: str, created: Any) -> str:
        token = uuid.uuid4().hex
        now = self._clock()
        due = stored_due_time(snapshot, now)
        reason = snapshot.metadata.get("failedReason") if snapshot.status == "failed" else None
        metadata = {
            "version": snapshot.version,
            "writer": token,
            "due": due,
            "s": snapshot.status,
            "w": _cut(snapshot.definition.name if snapshot.definition is not None else None, 100),
            "n": _cut(snapshot.current_node_id, 150),
            "f": _cut(reason if isinstance(reason, str) else None, 250),
            "c": _ms(created) if created is not None else now,
            "u": now,
        }
        await self._call(self._kv.put(key, raw, metadata=metadata), doing)
        return token

    async def _writer(self, key: str, run_id: str) -> tuple[str | None, int | None]:
        """The writer token and version the key holds now (read back after a write)."""
        found = await self._call(
            self._kv.getWithMetadata(key, type="text"), f"read run {run_id!r} back after writing"
        )
        value = _field(found, "value")
        if value is None:  # deleted meanwhile
            return None, None
        metadata = _field(found, "metadata")
        writer = _field(metadata, "writer")
        return (writer if isinstance(writer, str) else None), _version_of(metadata, value)

    @staticmethod
    async def _call(pending: Awaitable[Any], doing: str) -> Any:
        try:
            return await pending
        except Exception as exc:
            raise store_error(exc, "Workers KV", doing) from exc


def _cut(text: str | None, limit: int) -> str | None:
    """``text`` cut so that its JSON, every character escaped, takes at most ``limit`` bytes:
    KV refuses a write whose metadata passes 1024 bytes."""
    if text is None:
        return None
    while len(json.dumps(text)) > limit:
        text = text[: max(0, len(text) - max(1, (len(json.dumps(text)) - limit) // 6))]
    return text


def _ms(value: Any) -> int | None:
    """An integer from KV metadata (JS numbers may come back as floats), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value if isinstance(value, int) else None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _version_of(metadata: Any, value: Any) -> int | None:
    """The stored version: from the metadata, or from the JSON when the metadata lacks it."""
    version = _field(metadata, "version")
    if isinstance(version, int) and not isinstance(version, bool):
        return version
    if isinstance(version, float) and version.is_integer():  # JS numbers may come back so
        return int(version)
    if isinstance(value, str):
        try:
            version = json.loads(value).get("version")
        except (ValueError, AttributeError):
            return None
        if isinstance(version, int) and not isinstance(version, bool):
            return version
    return None


# --------------------------------------------------------------------------------------------
# D1
# --------------------------------------------------------------------------------------------

D1_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS {table} (
    id TEXT PRIMARY KEY NOT NULL,
    version INTEGER NOT NULL,
    status TEXT NOT NULL,
    workflow TEXT,
    snapshot TEXT NOT NULL,
    updated_at INTEGER NOT NULL,
    due_at INTEGER
)""",
    "CREATE INDEX IF NOT EXISTS {table}_status ON {table} (status, updated_at)",
    "CREATE INDEX IF NOT EXISTS {table}_due ON {table} (due_at) WHERE due_at IS NOT NULL",
    archive_table("{table}_results") + " WITHOUT ROWID",
)
"""The statements that create the runs table and its results archive (``{table}`` is the
runs table's name); idempotent."""

# Statements per D1 batch when archiving: one round trip each, well under D1's limits.
_ARCHIVE_BATCH = 50

_NO_TABLE = re.compile(r"no such table", re.IGNORECASE)
_NO_DUE_AT = re.compile(r"(no such column|has no column named):? due_at", re.IGNORECASE)
D1_ADD_DUE_AT = (
    "ALTER TABLE {table} ADD COLUMN due_at INTEGER",
    # A run active when the table was migrated counts as due since its last write; the others
    # get their due time at their next save.
    "UPDATE {table} SET due_at = updated_at WHERE status = 'active'",
)
"""The migration of a runs table created before ``due_at`` (run when a statement misses it)."""


def _schema_missing(message: str) -> bool:
    return bool(_NO_TABLE.search(message) or _NO_DUE_AT.search(message))


async def _prepare_d1(driver: SqlDriver, dialect: SqlDialect) -> None:
    """Create the tables; a table from before ``due_at`` gets the column first (its index
    would not be created without it)."""
    try:
        await driver.script(dialect.schema)
    except StoreError as exc:
        if not _NO_DUE_AT.search(str(exc)):
            raise
    else:
        return
    try:
        await driver.script([sql.format(table=dialect.runs) for sql in D1_ADD_DUE_AT])
    except StoreError as exc:
        if not re.search(r"duplicate column", str(exc), re.IGNORECASE):
            raise
    await driver.script(dialect.schema)


def d1_dialect(table: str = "refluxo_runs") -> SqlDialect:
    """The D1 statements: the standard ones on ``table`` and ``<table>_results``, the schema of
    :data:`D1_SCHEMA`, created (or migrated) when a statement finds it missing.

    Raises:
        ValueError: ``table`` is not letters, digits and ``_``.
    """
    try:
        dialect = standard_dialect("D1", runs=table)
    except ValueError:
        raise ValueError(f"invalid D1 table name {table!r}: letters, digits and '_'") from None
    return replace(
        dialect,
        schema=tuple(sql.format(table=table) for sql in D1_SCHEMA),
        schema_missing=_schema_missing,
        prepare=_prepare_d1,
        # The table keeps no creation time: runs list with ``created_at`` None.
        find_rows=find_runs_statement(table, created_at="NULL"),
    )


def _row(obj: Any) -> Row:
    """A D1 row as a mapping (the SDK gives a dict; an unconverted JS object is converted)."""
    if isinstance(obj, Mapping):
        return obj
    to_py = getattr(obj, "to_py", None)
    if to_py is not None:
        converted = to_py()
        if isinstance(converted, Mapping):
            return converted
    raise StoreError(
        f"D1 answered a row that is not an object: {type(obj).__name__}", transient=False
    )


class D1Driver:
    """A :class:`~refluxo.core.sql.SqlDriver` on a D1 binding (``env.DB``).

    D1 takes ``?`` placeholders as they are; every call is one round trip, ``script`` and
    ``execute_many`` a ``batch`` (D1 runs a batch as one transaction). Binding failures become
    StoreErrors, transient as D1's retryable errors are (see :mod:`._errors`).
    """

    def __init__(self, database: D1Database) -> None:
        self._db = database

    def _statement(self, sql: str, params: Sequence[Any]) -> D1PreparedStatement:
        statement = self._db.prepare(sql)
        return statement.bind(*params) if params else statement

    @staticmethod
    async def _call(call: Callable[[], Awaitable[Any]]) -> Any:
        try:
            return await call()
        except Exception as exc:
            raise StoreError(describe(exc), transient=is_transient(exc)) from exc

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        result = await self._call(lambda: self._statement(sql, params).run())
        return _changes(result)

    async def execute_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        for start in range(0, len(rows), _ARCHIVE_BATCH):
            await self._call(partial(self._batch, sql, rows[start : start + _ARCHIVE_BATCH]))

    def _batch(self, sql: str, rows: Sequence[Sequence[Any]]) -> Awaitable[Any]:
        return self._db.batch([self._statement(sql, row) for row in rows])

    async def fetch_one(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        row = await self._call(lambda: self._statement(sql, params).first())
        return None if row is None else _row(row)

    async def fetch_all(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        found = await self._call(lambda: self._statement(sql, params).all())
        return [_row(row) for row in _field(found, "results") or []]

    async def script(self, statements: Sequence[str]) -> None:
        await self._call(lambda: self._db.batch([self._db.prepare(sql) for sql in statements]))


class D1StateStore(SqlStateStore):
    """Keeps each run as one row of a D1 (SQLite) table; every write is one atomic statement.

    The SQL store of :mod:`refluxo.core.sql` on :class:`D1Driver` with :func:`d1_dialect`.
    The table (``refluxo_runs`` by default; created on first use, or ahead of time with
    :meth:`ensure_schema`)::

        id          TEXT PRIMARY KEY   the run id (case-sensitive)
        version     INTEGER            the snapshot's version: the locking column
        status      TEXT               the snapshot's status          (indexed with updated_at)
        workflow    TEXT NULL          snapshot.definition.name
        snapshot    TEXT               the whole snapshot as JSON text
        updated_at  INTEGER            epoch milliseconds of the last write
        due_at      INTEGER NULL       when the run is due (indexed): ``due_runs`` reads it;
                                       a table without it is migrated on first use

    * ``create``: ``INSERT ... ON CONFLICT (id) DO NOTHING``; ``meta.changes`` says whether
      the row was inserted.
    * ``save``: ``UPDATE ... WHERE id = ? AND version = ?``; zero changed rows means the
      version moved on (VersionConflict) or the run does not exist (RunNotFound), which one
      read then tells apart.

    SQLite runs each statement atomically, so of concurrent writers exactly one wins: this
    store passes the whole StateStore contract, concurrency included.

    It also keeps the results a retention limit trims out of snapshots
    (:class:`~refluxo.core.ports.ResultArchive`), one row each in ``<table>_results``
    (``run_id``, ``node_id``, ``idx``, ``result`` JSON; inserted ``ON CONFLICT DO NOTHING``).

    Args:
        database: the D1 binding (``env.DB``).
        table: the table's name (letters, digits, ``_``).
        max_bytes: refuse snapshots whose JSON is larger; at most D1's row limit
            (:data:`~refluxo.cloudflare.limits.D1_MAX_ROW_BYTES`), which is checked for the
            whole row as well.
        clock: epoch milliseconds, for ``updated_at``.
    """

    def __init__(
        self,
        database: D1Database,
        *,
        table: str = "refluxo_runs",
        max_bytes: int = DEFAULT_D1_MAX_BYTES,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        dialect = d1_dialect(table)
        if not 0 < max_bytes <= D1_MAX_ROW_BYTES:
            raise ValueError(
                f"max_bytes must be between 1 and {D1_MAX_ROW_BYTES} (D1's row limit), "
                f"got {max_bytes}"
            )
        self.table = table
        super().__init__(D1Driver(database), dialect, max_bytes=max_bytes, clock=clock)

    def encode(self, snapshot: Snapshot) -> str:
        """The snapshot's JSON; PayloadTooLarge when it, or the whole row, is too big."""
        raw = super().encode(snapshot)
        workflow = snapshot.definition.name if snapshot.definition is not None else None
        row = (snapshot.run_id, snapshot.status, workflow, raw)
        size = sum(len(v.encode("utf-8")) for v in row if isinstance(v, str)) + 16
        if size > D1_MAX_ROW_BYTES:
            raise PayloadTooLarge(f"D1 row of run {snapshot.run_id!r}", size, D1_MAX_ROW_BYTES)
        return raw


def _changes(result: Any) -> int:
    changes = _field(_field(result, "meta"), "changes")
    if isinstance(changes, float) and changes.is_integer():
        changes = int(changes)
    if not isinstance(changes, int):
        raise StoreError(f"D1 answered no meta.changes for a write: {result!r}", transient=False)
    return changes
