"""A durable :class:`~refluxo.core.ports.Scheduler` in one SQLite file, with a worker loop.

Messages are rows of a ``messages`` table. A worker (:meth:`SQLiteScheduler.run`, in this
process or another on the same file) leases due rows, hands each to a handler (the dispatcher)
and marks it done; a failed delivery is retried with backoff and dead-lettered after
``max_attempts``; a lease whose process died expires and the message is delivered again.

A row goes through these states::

    pending ──lease──> leased ──handler returned──> done ──(tombstone_ms later)──> deleted
       ^                 │ ╲
       └── handler raised┘  ╲── last attempt failed, or its lease expired once too often ──> dead
           (backoff)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import threading
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

from refluxo.core.errors import SchedulerError
from refluxo.core.model import DispatchMessage, now_ms
from refluxo.core.ports import Scheduler

from ._sqlite import connect, translated

logger = logging.getLogger(__name__)

Handler = Callable[[DispatchMessage], Awaitable[object]]
"""What a worker delivers each message to; raising means "not delivered, try again later"."""

MessageState = Literal["pending", "leased", "done", "dead"]

DAY_MS = 24 * 3600 * 1000
# Done rows are not deleted at once: a duplicate that arrives late collapses on its tombstone.
# The pruning pass itself is cheap but needs the write lock, so it runs at most this often.
PRUNE_EVERY_MS = 60_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    key TEXT PRIMARY KEY,
    run_id TEXT NOT NULL,
    version INTEGER NOT NULL,
    hop INTEGER NOT NULL,
    due_at INTEGER NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'leased', 'done', 'dead')),
    lease_until INTEGER,
    lease_token TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,  -- deliveries that failed or whose lease expired
    last_error TEXT,
    created_at INTEGER NOT NULL,
    done_at INTEGER  -- when it became done or dead
);
CREATE INDEX IF NOT EXISTS messages_due ON messages (state, due_at);
CREATE INDEX IF NOT EXISTS messages_lease ON messages (state, lease_until);
CREATE INDEX IF NOT EXISTS messages_done ON messages (state, done_at);
"""

# A key seen before collapses into the existing row, unless that row is a done tombstone
# older than tombstone_ms: then the message is new again (the prune may not have run yet).
_SCHEDULE = """
INSERT INTO messages (key, run_id, version, hop, due_at, state, attempts, created_at)
VALUES (:key, :run_id, :version, :hop, :due_at, 'pending', 0, :now)
ON CONFLICT (key) DO UPDATE SET
    due_at = excluded.due_at, state = 'pending', attempts = 0, last_error = NULL,
    lease_until = NULL, lease_token = NULL, created_at = excluded.created_at, done_at = NULL
WHERE state = 'done' AND done_at < :expired
"""


@dataclass(frozen=True)
class MessageInfo:
    """One stored message, as :meth:`SQLiteScheduler.list_messages` shows it.

    Attributes:
        key: the message's deduplication key.
        message: the message itself.
        state: ``pending``, ``leased``, ``done`` or ``dead``.
        due_at: when it is (or was) due, in epoch milliseconds.
        attempts: deliveries that failed or whose lease expired.
        last_error: what the last failed delivery raised, if any.
    """

    key: str
    message: DispatchMessage
    state: MessageState
    due_at: int
    attempts: int
    last_error: str | None


@dataclass(frozen=True)
class _Lease:
    key: str
    message: DispatchMessage
    due_at: int
    attempts: int
    token: str


class SQLiteScheduler(Scheduler):
    """Schedules messages into one SQLite file and delivers them from a worker loop.

    Delivery is at least once. Scheduling a key that is already stored does nothing (a
    duplicate step collapses), including for an hour after its delivery (``tombstone_ms``).
    Several processes may schedule into and run workers on one file: a message is leased to
    one worker at a time, for ``lease_ms`` (renewed while its handler runs), so it reaches a
    second worker only if the first one's process dies.

    Like :class:`~refluxo.local.store.SQLiteStateStore`, calls into SQLite are synchronous;
    while another process holds the write lock they block the event loop for up to
    ``busy_timeout_ms``. The file is opened on first use, not in the constructor.

    Args:
        path: the database file (may be the state store's); created when missing.
        clock: epoch milliseconds; due times, leases and backoff follow it, so tests can
            drive :meth:`drain` with a fake clock.
        max_delay_ms: the longest delay :meth:`schedule` accepts.
        lease_ms: how long a delivery may go without its worker renewing the lease before
            another worker takes the message over.
        max_attempts: deliveries (failed or lost to an expired lease) before dead-lettering.
        retry_base_ms: the delay before the first retry; each further retry doubles it.
        retry_max_ms: the longest delay between retries.
        tombstone_ms: how long a delivered key keeps collapsing duplicates.
        poll_interval_s: the longest a worker sleeps before looking for messages other
            processes scheduled (messages scheduled through this object wake it at once).
        busy_timeout_ms: how long a write waits for another connection's lock.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        clock: Callable[[], int] = now_ms,
        max_delay_ms: int = 365 * DAY_MS,
        lease_ms: int = 60_000,
        max_attempts: int = 10,
        retry_base_ms: int = 1_000,
        retry_max_ms: int = 300_000,
        tombstone_ms: int = 3_600_000,
        poll_interval_s: float = 1.0,
        busy_timeout_ms: int = 5_000,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.path = path
        self.clock = clock
        self._max_delay_ms = max_delay_ms
        self.lease_ms = lease_ms
        self.max_attempts = max_attempts
        self.retry_base_ms = retry_base_ms
        self.retry_max_ms = retry_max_ms
        self.tombstone_ms = tombstone_ms
        self.poll_interval_s = poll_interval_s
        self.busy_timeout_ms = busy_timeout_ms
        self._conn: sqlite3.Connection | None = None
        # The connection is shared; the lock keeps two threads' transactions from interleaving.
        self._lock = threading.Lock()
        self._last_prune: int | None = None
        # One wake-up event per running worker loop, with the loop that owns it.
        self._wakers: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()

    # Connection ------------------------------------------------------------------------

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            conn = connect(self.path, busy_timeout_ms=self.busy_timeout_ms)
            try:
                conn.executescript(_SCHEMA)
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def close(self) -> None:
        """Close the connection; the next call opens it again."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    @contextlib.contextmanager
    def _transaction(self, what: str) -> Iterator[sqlite3.Connection]:
        # BEGIN IMMEDIATE takes the write lock up front (waiting up to busy_timeout), so what
        # the transaction reads cannot change before it writes: two workers never lease one row.
        with self._lock, translated(SchedulerError, what):
            db = self._db()
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    # The port --------------------------------------------------------------------------

    @property
    def max_delay_ms(self) -> int:
        """The longest delay :meth:`schedule` accepts, in milliseconds (a year by default)."""
        return self._max_delay_ms

    async def schedule(self, message: DispatchMessage, *, at: int | None = None) -> None:
        """Deliver ``message`` at epoch milliseconds ``at``, or as soon as possible when None.

        A time in the past means as soon as possible. A key that is stored already (pending,
        leased, dead, or delivered less than ``tombstone_ms`` ago) is not scheduled again.

        Raises:
            ValueError: ``at`` is more than ``max_delay_ms`` from now.
            SchedulerError: SQLite failed; ``transient`` when the file was locked.
        """
        now = self.clock()
        if at is not None and at - now > self._max_delay_ms:
            raise ValueError(f"at is {at - now} ms away, over the maximum of {self._max_delay_ms}")
        params = {
            "key": message.key,
            "run_id": message.run_id,
            "version": message.version,
            "hop": message.hop,
            "due_at": now if at is None else at,
            "now": now,
            "expired": now - self.tombstone_ms,
        }
        with self._lock, translated(SchedulerError, f"schedule {message.key!r}"):
            self._db().execute(_SCHEDULE, params)
        self._wake()

    # Workers ---------------------------------------------------------------------------

    async def run(
        self, handler: Handler, *, stop: asyncio.Event | None = None, concurrency: int = 8
    ) -> None:
        """Deliver due messages to ``handler`` until ``stop`` is set (or the task is cancelled).

        Up to ``concurrency`` handlers run at once. A message whose handler returns is done;
        one whose handler raises is retried after a backoff, and dead-lettered (logged at
        ERROR) after ``max_attempts``. Between messages the loop sleeps until the next due time,
        a :meth:`schedule` through this object, or ``poll_interval_s``, whichever comes first.

        When ``stop`` is set, no new message is leased and ``run`` returns once the handlers
        in flight have finished. When the task is cancelled, handlers in flight are cancelled
        and their messages released for immediate redelivery.

        Raises:
            SchedulerError: SQLite failed in a way that retrying will not fix; transient
                failures (a locked file) are logged and retried.
        """
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        loop = asyncio.get_running_loop()
        wake = asyncio.Event()
        waker = (loop, wake)
        self._wakers.add(waker)
        inflight: dict[asyncio.Task[None], _Lease] = {}
        helpers = [asyncio.create_task(self._renew_leases(inflight))]
        if stop is not None:
            helpers.append(asyncio.create_task(_set_when(stop, wake)))

        def finished(task: asyncio.Task[None]) -> None:
            inflight.pop(task, None)
            wake.set()

        try:
            while stop is None or not stop.is_set():
                wake.clear()
                timeout = self.poll_interval_s
                try:
                    free = concurrency - len(inflight)
                    for lease in self._lease(free) if free > 0 else []:
                        task = asyncio.create_task(self._deliver(handler, lease))
                        inflight[task] = lease
                        task.add_done_callback(finished)
                    # With every slot taken, only a finishing handler (it sets wake) matters.
                    if len(inflight) < concurrency:
                        timeout = self._idle_s()
                except SchedulerError as exc:
                    if not exc.transient:
                        raise
                    logger.warning("the worker loop will retry after: %s", exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), timeout)
            if inflight:
                await asyncio.wait(list(inflight))
        finally:
            self._wakers.discard(waker)
            for helper in helpers:
                helper.cancel()
            if inflight:
                abandoned = list(inflight.values())
                for task in inflight:
                    task.cancel()
                await asyncio.gather(*inflight, *helpers, return_exceptions=True)
                self._release(abandoned)
            else:
                await asyncio.gather(*helpers, return_exceptions=True)

    async def drain(self, handler: Handler, *, max_messages: int | None = None) -> int:
        """Deliver every message due now, one at a time, then return; for tests and scripts.

        Messages that handlers schedule for now are delivered too. A handler that raises is
        treated as in :meth:`run` (retried later, so not again in this call). If ``drain`` is
        interrupted mid-delivery, that message stays leased until ``lease_ms`` has passed.

        Args:
            handler: what each message is delivered to.
            max_messages: stop after this many deliveries (a workflow that loops forever
                would otherwise keep ``drain`` busy).

        Returns:
            How many messages were delivered.
        """
        delivered = 0
        while max_messages is None or delivered < max_messages:
            leases = self._lease(1)
            if not leases:
                break
            await self._deliver(handler, leases[0])
            delivered += 1
        return delivered

    async def list_messages(
        self, *, state: MessageState | None = None, limit: int = 100
    ) -> list[MessageInfo]:
        """Stored messages, soonest due first; for the CLI and for tests.

        Args:
            state: only messages in this state (``dead`` lists the dead letters).
            limit: at most this many.
        """
        sql = "SELECT key, run_id, version, hop, state, due_at, attempts, last_error FROM messages"
        params: list[object] = []
        if state is not None:
            sql += " WHERE state = ?"
            params.append(state)
        sql += " ORDER BY due_at, key LIMIT ?"
        params.append(limit)
        with self._lock, translated(SchedulerError, "list messages"):
            rows = self._db().execute(sql, params).fetchall()
        return [
            MessageInfo(
                key=key,
                message=DispatchMessage(run_id=run_id, version=version, hop=hop),
                state=row_state,
                due_at=due_at,
                attempts=attempts,
                last_error=last_error,
            )
            for key, run_id, version, hop, row_state, due_at, attempts, last_error in rows
        ]

    # Internals -------------------------------------------------------------------------

    def _wake(self) -> None:
        try:
            current: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            current = None
        for loop, event in list(self._wakers):
            if loop is current:
                event.set()
            else:  # A worker on another thread's loop: asyncio.Event is not thread-safe.
                with contextlib.suppress(RuntimeError):  # That loop closed meanwhile.
                    loop.call_soon_threadsafe(event.set)

    def _backoff_ms(self, attempts: int) -> int:
        return int(min(self.retry_base_ms * 2 ** (attempts - 1), self.retry_max_ms))

    def _lease(self, limit: int) -> list[_Lease]:
        """Lease up to ``limit`` due messages (pending, or leased by a worker that vanished)."""
        now = self.clock()
        token = uuid.uuid4().hex
        with self._transaction("lease messages") as db:
            if self._last_prune is None or now - self._last_prune >= PRUNE_EVERY_MS:
                db.execute(
                    "DELETE FROM messages WHERE state = 'done' AND done_at < ?",
                    (now - self.tombstone_ms,),
                )
                self._last_prune = now
            # Expired leases first: their worker died mid-delivery, which counts as a failed
            # attempt, so a message that kills its process is dead-lettered, not looped on.
            expired = db.execute(
                "SELECT key, attempts FROM messages WHERE state = 'leased' AND lease_until <= ?",
                (now,),
            ).fetchall()
            dead = [key for key, attempts in expired if attempts + 1 >= self.max_attempts]
            db.executemany(
                "UPDATE messages SET state = 'dead', attempts = attempts + 1, done_at = ?,"
                " lease_until = NULL, lease_token = NULL,"
                " last_error = 'lease expired: the worker died or hung' WHERE key = ?",
                [(now, key) for key in dead],
            )
            for key in dead:
                logger.error(
                    "dead-lettered %s after %d attempts: its lease expired (worker died or hung)",
                    key,
                    self.max_attempts,
                )
            db.executemany(
                "UPDATE messages SET state = 'pending', attempts = attempts + 1,"
                " lease_until = NULL, lease_token = NULL,"
                " last_error = 'lease expired: the worker died or hung' WHERE key = ?",
                [(key,) for key, attempts in expired if attempts + 1 < self.max_attempts],
            )
            rows = db.execute(
                "SELECT key, run_id, version, hop, due_at, attempts FROM messages"
                " WHERE state = 'pending' AND due_at <= ? ORDER BY due_at, key LIMIT ?",
                (now, limit),
            ).fetchall()
            db.executemany(
                "UPDATE messages SET state = 'leased', lease_until = ?, lease_token = ?"
                " WHERE key = ?",
                [(now + self.lease_ms, token, row[0]) for row in rows],
            )
        return [
            _Lease(
                key=key,
                message=DispatchMessage(run_id=run_id, version=version, hop=hop),
                due_at=due_at,
                attempts=attempts,
                token=token,
            )
            for key, run_id, version, hop, due_at, attempts in rows
        ]

    async def _deliver(self, handler: Handler, lease: _Lease) -> None:
        try:
            await handler(lease.message)
        except Exception as exc:  # Any failure of the handler is a failed delivery.
            error = f"{type(exc).__name__}: {exc}"
            try:
                self._fail(lease, error)
            except SchedulerError as db_exc:
                logger.warning("could not record the failure of %s: %s", lease.key, db_exc)
            return
        try:
            self._finish(lease)
        except SchedulerError as exc:
            # The lease will expire and the message be delivered again: at least once.
            logger.warning("could not mark %s done: %s", lease.key, exc)

    def _finish(self, lease: _Lease) -> None:
        with self._lock, translated(SchedulerError, f"finish {lease.key!r}"):
            cur = self._db().execute(
                "UPDATE messages SET state = 'done', done_at = ?, lease_until = NULL,"
                " lease_token = NULL WHERE key = ? AND lease_token = ?",
                (self.clock(), lease.key, lease.token),
            )
        if cur.rowcount == 0:
            logger.warning("%s was delivered after its lease expired", lease.key)

    def _fail(self, lease: _Lease, error: str) -> None:
        attempts = lease.attempts + 1
        now = self.clock()
        dead = attempts >= self.max_attempts
        with self._lock, translated(SchedulerError, f"retry {lease.key!r}"):
            self._db().execute(
                "UPDATE messages SET state = ?, due_at = ?, attempts = ?, last_error = ?,"
                " done_at = ?, lease_until = NULL, lease_token = NULL"
                " WHERE key = ? AND lease_token = ?",
                (
                    "dead" if dead else "pending",
                    now if dead else now + self._backoff_ms(attempts),
                    attempts,
                    error,
                    now if dead else None,
                    lease.key,
                    lease.token,
                ),
            )
        if dead:
            logger.error("dead-lettered %s after %d attempts: %s", lease.key, attempts, error)
        else:
            logger.warning(
                "delivery %d of %s failed, retrying in %d ms: %s",
                attempts,
                lease.key,
                self._backoff_ms(attempts),
                error,
            )

    def _release(self, leases: Sequence[_Lease]) -> None:
        """Give back leases whose handler was cancelled, for immediate redelivery."""
        try:
            with self._lock, translated(SchedulerError, "release leases"):
                self._db().executemany(
                    "UPDATE messages SET state = 'pending', lease_until = NULL, lease_token = NULL"
                    " WHERE key = ? AND lease_token = ? AND state = 'leased'",
                    [(lease.key, lease.token) for lease in leases],
                )
        except SchedulerError as exc:
            logger.warning("could not release %d leases; they will expire: %s", len(leases), exc)

    async def _renew_leases(self, inflight: dict[asyncio.Task[None], _Lease]) -> None:
        # A third of the lease: two renewals can be missed (a busy loop) before it expires.
        while True:
            await asyncio.sleep(self.lease_ms / 3000)
            tokens = sorted({lease.token for lease in inflight.values()})
            if not tokens:
                continue
            marks = ", ".join("?" * len(tokens))
            try:
                with self._lock, translated(SchedulerError, "renew leases"):
                    self._db().execute(
                        "UPDATE messages SET lease_until = ?"
                        f" WHERE state = 'leased' AND lease_token IN ({marks})",
                        (self.clock() + self.lease_ms, *tokens),
                    )
            except SchedulerError as exc:
                logger.warning("could not renew leases: %s", exc)

    def _idle_s(self) -> float:
        """How long a worker with free slots may sleep: until the next due time, at most."""
        with self._lock, translated(SchedulerError, "find the next due time"):
            row = (
                self._db()
                .execute(
                    "SELECT min(t) FROM ("
                    " SELECT min(due_at) AS t FROM messages WHERE state = 'pending'"
                    " UNION ALL"
                    " SELECT min(lease_until) FROM messages WHERE state = 'leased')"
                )
                .fetchone()
            )
        if row is None or row[0] is None:
            return self.poll_interval_s
        next_at: int = row[0]
        return min(max((next_at - self.clock()) / 1000, 0.0), self.poll_interval_s)


async def _set_when(source: asyncio.Event, target: asyncio.Event) -> None:
    await source.wait()
    target.set()
