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

Each write transaction costs a commit, so a worker loop saves some. A message scheduled
through this object on the worker's event loop is written in a transaction that also leases
the worker what it has room for, counting the slot of the handler that schedules it (the
oldest due messages first, then the new one if due): a step's follow-up is mostly leased with
no lease transaction of its own. Delivered messages are marked done in batches, in whichever
transaction comes once the oldest has waited ``DONE_FLUSH_S`` (at once when the worker runs
out of work). Nothing is given up for it: a message is a row before
:meth:`SQLiteScheduler.schedule` returns and a lease is a row before its handler runs, so if
the process dies, what it had leased is delivered again after ``lease_ms``, including messages
delivered but not yet marked done (the dispatcher finds those stale); at once if the next
worker loop to start on the file runs on the same host (see
:meth:`SQLiteScheduler.release_dead_workers`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import sqlite3
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Literal

from refluxo.core.delivery import Decision, Redelivery
from refluxo.core.errors import SchedulerError
from refluxo.core.model import DispatchMessage
from refluxo.core.ports import Scheduler

from ._sqlite import Database, sqlite_clock

logger = logging.getLogger(__name__)

Handler = Callable[[DispatchMessage], Awaitable[object]]
"""What a worker delivers each message to; raising means "not delivered, try again later"."""

MessageState = Literal["pending", "leased", "done", "dead"]
_STATES: tuple[MessageState, ...] = ("pending", "leased", "done", "dead")

DAY_MS = 24 * 3600 * 1000
# Done rows are not deleted at once: a duplicate that arrives late collapses on its tombstone.
# The pruning pass itself is cheap but needs the write lock, so it runs at most this often.
PRUNE_EVERY_MS = 60_000
# How long a busy worker lets delivered messages wait to be marked done, so that one
# transaction marks many: their rows and index entries sit on a few pages, which it writes
# once. (A worker with nothing left to deliver marks them at once.) Until marked, a message is
# leased to the worker, which renews it; if the process dies first, it is delivered again.
DONE_FLUSH_S = 0.05
# Leasing while scheduling looks for expired leases at most this often (a worker's own lease
# transactions always look): a lease expires a minute after its worker died, so a second more
# changes nothing, and looking costs a query on every step.
EXPIRY_CHECK_EVERY_MS = 1_000
DEFAULT_LEASE_MS = 60_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    key TEXT PRIMARY KEY,
    run_id TEXT NOT NULL,
    version INTEGER NOT NULL,
    hop INTEGER NOT NULL,
    branch TEXT,  -- the parallel branch the delivery steps, if any (added by _migrate)
    due_at INTEGER NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'leased', 'done', 'dead')),
    lease_until INTEGER,
    lease_token TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,  -- deliveries that failed or whose lease expired
    last_error TEXT,
    created_at INTEGER NOT NULL,
    done_at INTEGER  -- when it became done or dead
);
-- A message changes state two or three times; with partial indexes each change touches the
-- entries of the states it leaves and enters only, not one entry per index. Queries that use
-- them say "state = '...'" with the literal (what SQLite's planner needs to pick them). Files
-- made by earlier versions had indexes on (state, due_at), (state, lease_until) and
-- (state, done_at); they are dropped.
DROP INDEX IF EXISTS messages_due;
DROP INDEX IF EXISTS messages_lease;
DROP INDEX IF EXISTS messages_done;
CREATE INDEX IF NOT EXISTS messages_pending ON messages (due_at) WHERE state = 'pending';
CREATE INDEX IF NOT EXISTS messages_leased ON messages (lease_until) WHERE state = 'leased';
CREATE INDEX IF NOT EXISTS messages_done_at ON messages (done_at) WHERE state = 'done';
CREATE INDEX IF NOT EXISTS messages_dead ON messages (due_at) WHERE state = 'dead';
-- The worker loops that lease messages (lease_token = token), so that a worker starting on
-- this host can tell that an earlier one died and take its leases back without waiting.
CREATE TABLE IF NOT EXISTS workers (
    token TEXT PRIMARY KEY,
    host TEXT NOT NULL,  -- host name, boot and pid namespace: where pid means something
    pid INTEGER NOT NULL,
    process_start TEXT,  -- the process's start time, so that a reused pid is not taken for it
    started_at INTEGER NOT NULL,
    stopped_at INTEGER  -- set when the loop returned
);
"""


def _migrate(db: sqlite3.Connection) -> None:
    """Add ``branch`` to files made before parallel branches existed."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(messages)")}
    if "branch" not in columns:
        db.execute("ALTER TABLE messages ADD COLUMN branch TEXT")


# A key seen before collapses into the existing row, unless that row is a done tombstone
# older than tombstone_ms: then the message is new again (the prune may not have run yet).
# A new row is pending, or leased at once to the worker it is handed to (see schedule).
_SCHEDULE = """
INSERT INTO messages (
    key, run_id, version, hop, branch, due_at, state, lease_until, lease_token, attempts,
    created_at
)
VALUES (
    :key, :run_id, :version, :hop, :branch, :due_at, :state, :lease_until, :lease_token, 0, :now
)
ON CONFLICT (key) DO UPDATE SET
    due_at = excluded.due_at, state = excluded.state, attempts = 0, last_error = NULL,
    lease_until = excluded.lease_until, lease_token = excluded.lease_token,
    created_at = excluded.created_at, done_at = NULL
WHERE state = 'done' AND done_at < :expired
"""

_MARK_DONE = (
    "UPDATE messages SET state = 'done', done_at = ?, lease_until = NULL, lease_token = NULL"
    " WHERE key = ? AND lease_token = ?"
)


def _read(path: str) -> str | None:
    try:
        with open(path) as file:
            return file.read().strip()
    except OSError:
        return None


def _host() -> str:
    """Where a pid names one process: this host, since its boot, in this pid namespace."""
    try:
        namespace = str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        namespace = ""
    return f"{socket.gethostname()}/{_read('/proc/sys/kernel/random/boot_id') or ''}/{namespace}"


def _process_start(pid: int) -> str | None:
    """The start time of process ``pid`` (Linux: field 22 of /proc/PID/stat), or None."""
    stat = _read(f"/proc/{pid}/stat")
    if stat is None:
        return None
    fields = stat.rsplit(")", 1)[-1].split()  # after the command name, which may hold spaces
    return fields[19] if len(fields) > 19 else None


def _process_gone(pid: int, process_start: str | None) -> bool:
    """True only when process ``pid`` of this host certainly no longer runs."""
    if os.name != "posix":
        return False  # No harmless probe (os.kill(pid, 0) is CTRL_C_EVENT on Windows).
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # It exists (another user's), or we cannot tell.
        return False
    current = _process_start(pid)
    return process_start is not None and current is not None and current != process_start


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


@dataclass(eq=False)
class _Worker:
    """A running worker loop (:meth:`SQLiteScheduler.run`), as :meth:`schedule` sees it."""

    loop: asyncio.AbstractEventLoop
    wake: asyncio.Event
    stop: asyncio.Event | None
    concurrency: int
    # Every lease this worker takes carries its token, so one statement renews them all.
    token: str = field(default_factory=lambda: uuid.uuid4().hex)
    inflight: dict[asyncio.Task[None], _Lease] = field(default_factory=dict)
    # Leased to this worker (committed) but not started: each will take a slot about to free.
    ready: deque[_Lease] = field(default_factory=deque)
    # Handler tasks that scheduled their follow-up into their own slot, which frees when they
    # return: each task promises its slot once.
    promised: set[asyncio.Task[None]] = field(default_factory=set)
    # Handlers returned, not yet marked done (still leased to this worker), oldest first.
    delivered: list[_Lease] = field(default_factory=list)
    delivered_since: float = 0.0  # loop.time() when the oldest of them was delivered

    def stopping(self) -> bool:
        return self.stop is not None and self.stop.is_set()

    def caller_slot(self) -> asyncio.Task[None] | None:
        """The handler task calling, if it runs for this worker and has not promised its slot."""
        task = asyncio.current_task()
        if task in self.inflight and task not in self.promised:
            return task
        return None

    def delivered_to_mark(self) -> list[_Lease]:
        """The delivered messages, once the oldest has waited DONE_FLUSH_S; else none."""
        if self.delivered and self.loop.time() - self.delivered_since >= DONE_FLUSH_S:
            return list(self.delivered)
        return []

    def room(self) -> int:
        """Slots neither running a handler nor promised to a ready lease."""
        return self.concurrency - len(self.inflight) - len(self.ready)


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
            drive :meth:`drain` with a fake clock. By default SQLite's own (see
            :func:`~refluxo.local._sqlite.sqlite_clock`): processes on one file share it.
        max_delay_ms: the longest delay :meth:`schedule` accepts.
        lease_ms: how long a delivery may go without its worker renewing the lease before
            another worker takes the message over. A worker loop starting on the same host
            does not wait for the leases of an earlier loop whose process died (or that
            stopped): it takes them back at once (see :meth:`release_dead_workers`).
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
        clock: Callable[[], int] = sqlite_clock,
        max_delay_ms: int = 365 * DAY_MS,
        lease_ms: int = DEFAULT_LEASE_MS,
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
        self.redelivery = Redelivery(
            base_ms=retry_base_ms, max_ms=retry_max_ms, max_attempts=max_attempts
        )
        self._database = Database(
            path, busy_timeout_ms=busy_timeout_ms, schema=_SCHEMA, migrate=_migrate
        )
        self._last_prune: int | None = None
        self._last_expiry_check: int | None = None
        # The worker loops running on this object (each with its event loop and wake-up event).
        self._workers: set[_Worker] = set()

    # Connection ------------------------------------------------------------------------

    def close(self) -> None:
        """Close the connection (unless another object of this process on the file uses it);
        the next call opens it again."""
        self._database.close()

    def _use(self, what: str) -> AbstractContextManager[sqlite3.Connection]:
        """``with self._use(what) as db:`` the connection, for the block alone; SQLite errors
        in it are raised as SchedulerErrors."""
        return self._database.use(SchedulerError, what)

    @contextlib.contextmanager
    def _transaction(self, what: str) -> Iterator[sqlite3.Connection]:
        # BEGIN IMMEDIATE takes the write lock up front (waiting up to busy_timeout), so what
        # the transaction reads cannot change before it writes: two workers never lease one row.
        with self._use(what) as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:  # A failed COMMIT may leave it open.
                    db.execute("ROLLBACK")
                raise

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
        due_at = now if at is None else at
        params = {
            "key": message.key,
            "run_id": message.run_id,
            "version": message.version,
            "hop": message.hop,
            "branch": message.branch,
            "due_at": due_at,
            "state": "pending",
            "lease_until": None,
            "lease_token": None,
            "now": now,
            "expired": now - self.tombstone_ms,
        }
        worker = self._worker_here()
        if worker is None:
            with self._use(f"schedule {message.key!r}") as db:
                db.execute(_SCHEDULE, params)
            self._wake()
            return
        # A worker loop runs on this event loop: lease it what it has room for in the same
        # transaction. A handler of that worker scheduling its follow-up counts its own slot,
        # which frees when it returns.
        caller = worker.caller_slot()
        room = max(worker.room(), 0) + (caller is not None)
        last = self._last_expiry_check
        delivered = worker.delivered_to_mark()
        leases = self._write(
            f"schedule {message.key!r}",
            worker.token,
            room,
            delivered=delivered,
            new=(message, params),
            expire=last is None or not 0 <= now - last < EXPIRY_CHECK_EVERY_MS,
            now=now,
        )
        del worker.delivered[: len(delivered)]
        worker.ready.extend(leases)
        if caller is not None and leases:
            worker.promised.add(caller)
        self._wake(skip=worker if len(worker.inflight) >= worker.concurrency else None)

    # Workers ---------------------------------------------------------------------------

    async def run(
        self, handler: Handler, *, stop: asyncio.Event | None = None, concurrency: int = 8
    ) -> None:
        """Deliver due messages to ``handler`` until ``stop`` is set (or the task is cancelled).

        Up to ``concurrency`` handlers run at once. A message whose handler returns is done
        (marked with others, within ``DONE_FLUSH_S``; until then it stays leased to this
        worker); one whose handler raises is retried after a backoff, and dead-lettered
        (logged at ERROR) after ``max_attempts``. Between messages the loop sleeps until the
        next due time, a :meth:`schedule` through this object, or ``poll_interval_s``,
        whichever comes first.

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
        worker = _Worker(loop=loop, wake=asyncio.Event(), stop=stop, concurrency=concurrency)
        wake, inflight = worker.wake, worker.inflight
        self._register(worker)
        self._workers.add(worker)
        helpers = [asyncio.create_task(self._renew_leases(worker))]
        if stop is not None:
            helpers.append(asyncio.create_task(_set_when(stop, wake)))

        def finished(task: asyncio.Task[None]) -> None:
            inflight.pop(task, None)
            worker.promised.discard(task)
            wake.set()

        def start(lease: _Lease) -> None:
            task = asyncio.create_task(self._deliver(handler, lease, worker))
            inflight[task] = lease
            task.add_done_callback(finished)

        try:
            while not worker.stopping():
                wake.clear()
                timeout = self.poll_interval_s
                try:
                    # Leases taken while scheduling first: they are committed, and older than
                    # anything a lease transaction would find now.
                    while worker.ready and len(inflight) < concurrency:
                        start(worker.ready.popleft())
                    if len(inflight) < concurrency:
                        # A read first: when handlers' schedule calls lease what comes next,
                        # nothing else is due, and the write lock would be taken for nothing.
                        timeout = self._idle_s()
                        if timeout <= 0:
                            for lease in self._lease(concurrency - len(inflight), worker):
                                start(lease)
                            if len(inflight) < concurrency:
                                timeout = self._idle_s()
                            else:
                                timeout = self.poll_interval_s
                    if worker.delivered:
                        # Handlers' schedule calls mark them done in passing; if none comes in
                        # time, or none will (no handler running), a transaction of their own.
                        left = DONE_FLUSH_S - (loop.time() - worker.delivered_since)
                        if left > 0 and inflight:
                            timeout = min(timeout, left)
                        else:
                            self._flush_delivered(worker)
                except SchedulerError as exc:
                    if not exc.transient:
                        raise
                    logger.warning("the worker loop will retry after: %s", exc)
                if not wake.is_set():
                    # Cheaper than wait_for, which wraps the wait in a task of its own.
                    timer = loop.call_later(timeout, wake.set)
                    try:
                        await wake.wait()
                    finally:
                        timer.cancel()
            if inflight:
                await asyncio.wait(list(inflight))
        finally:
            self._workers.discard(worker)
            for helper in helpers:
                helper.cancel()
            # A finished task whose done callback has not run yet is still in inflight; its
            # handler's outcome is recorded already, so it is not abandoned.
            abandoned = [lease for task, lease in inflight.items() if not task.done()]
            for task in inflight:
                task.cancel()
            await asyncio.gather(*inflight, *helpers, return_exceptions=True)
            # Leased for this worker but never started: free them for other workers now.
            abandoned.extend(worker.ready)
            worker.ready.clear()
            self._flush_delivered(worker, quiet=True)
            if abandoned:
                self._release(abandoned)
            self._unregister(worker)

    def release_dead_workers(self) -> int:
        """End at once the leases of worker loops on this host that died or stopped.

        A loop records its process (host, pid and the process's start time) when it starts
        and that it stopped when it returns. A lease held by a loop whose process no longer
        runs would otherwise keep its message for up to ``lease_ms``; it expires now instead
        (counted as a failed attempt, as any expired lease). :meth:`run` calls this when it
        starts. Loops of other hosts, or processes that cannot be probed, are left to
        ``lease_ms``.

        Returns:
            How many leases were ended.
        """
        host = _host()
        with self._transaction("release the leases of dead workers") as db:
            rows = db.execute(
                "SELECT token, pid, process_start, stopped_at FROM workers WHERE host = ?",
                (host,),
            ).fetchall()
            gone = [
                token
                for token, pid, process_start, stopped_at in rows
                if stopped_at is not None or _process_gone(pid, process_start)
            ]
            if not gone:
                return 0
            now = self.clock()
            cur = db.executemany(
                "UPDATE messages SET lease_until = ? WHERE state = 'leased' AND lease_token = ?",
                [(now, token) for token in gone],
            )
            released = max(cur.rowcount, 0)
            db.executemany("DELETE FROM workers WHERE token = ?", [(token,) for token in gone])
            self._last_expiry_check = None  # The next lease transaction looks at them.
        if released:
            logger.warning(
                "%d messages were leased by a worker of this host that died; delivering again",
                released,
            )
        return released

    def _register(self, worker: _Worker) -> None:
        try:
            self.release_dead_workers()
            with self._use("register a worker") as db:
                db.execute(
                    "INSERT INTO workers (token, host, pid, process_start, started_at)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (worker.token, _host(), os.getpid(), _process_start(os.getpid()), self.clock()),
                )
        except SchedulerError as exc:
            # Without its record, a dead worker's leases wait out lease_ms: slower, not wrong.
            logger.warning("could not record this worker: %s", exc)

    def _unregister(self, worker: _Worker) -> None:
        try:
            with self._use("unregister a worker") as db:
                db.execute(
                    "UPDATE workers SET stopped_at = ? WHERE token = ?",
                    (self.clock(), worker.token),
                )
        except SchedulerError as exc:
            logger.warning("could not record that this worker stopped: %s", exc)

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
        sql = (
            "SELECT key, run_id, version, hop, branch, state, due_at, attempts, last_error"
            " FROM messages"
        )
        if state is not None:
            if state not in _STATES:
                raise ValueError(f"state must be one of {', '.join(_STATES)}, not {state!r}")
            sql += f" WHERE state = '{state}'"  # A literal, so that its partial index is used.
        sql += " ORDER BY due_at, key LIMIT ?"
        with self._use("list messages") as db:
            rows = db.execute(sql, (limit,)).fetchall()
        return [
            MessageInfo(
                key=key,
                message=DispatchMessage(run_id=run_id, version=version, hop=hop, branch=branch),
                state=row_state,
                due_at=due_at,
                attempts=attempts,
                last_error=last_error,
            )
            for key, run_id, version, hop, branch, row_state, due_at, attempts, last_error in rows
        ]

    # Internals -------------------------------------------------------------------------

    def _worker_here(self) -> _Worker | None:
        """A worker loop of this object running on the current event loop and not stopping."""
        if not self._workers:
            return None
        try:
            current = asyncio.get_running_loop()
        except RuntimeError:
            return None
        for worker in tuple(self._workers):  # A copy: other threads' loops add and discard.
            if worker.loop is current and not worker.stopping():
                return worker
        return None

    def _wake(self, skip: _Worker | None = None) -> None:
        try:
            current: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            current = None
        for worker in list(self._workers):
            if worker is skip:
                continue
            if worker.loop is current:
                worker.wake.set()
            else:  # A worker on another thread's loop: asyncio.Event is not thread-safe.
                with contextlib.suppress(RuntimeError):  # That loop closed meanwhile.
                    worker.loop.call_soon_threadsafe(worker.wake.set)

    def _write(
        self,
        what: str,
        token: str,
        room: int,
        *,
        delivered: Sequence[_Lease] = (),
        new: tuple[DispatchMessage, dict[str, object]] | None = None,
        expire: bool = True,
        now: int | None = None,
    ) -> list[_Lease]:
        """The scheduler's one write transaction: mark ``delivered`` done, lease up to ``room``
        due messages to ``token`` (older ones first) and insert the ``new`` message, leased to
        ``token`` at once when it is due and room is left. Returns the leases taken."""
        now = self.clock() if now is None else now
        with self._transaction(what) as db:
            self._mark_done(db, delivered, now)
            leases = self._claim(db, now, room, token, expire=expire) if room > 0 else []
            if new is not None:
                message, params = new
                due_at = params["due_at"]
                assert isinstance(due_at, int)
                if due_at <= now and len(leases) < room:
                    params = {
                        **params,
                        "state": "leased",
                        "lease_until": now + self.lease_ms,
                        "lease_token": token,
                    }
                    # rowcount is 0 when the key collapsed into a stored row: nothing to deliver.
                    if db.execute(_SCHEDULE, params).rowcount == 1:
                        leases.append(_Lease(message.key, message, due_at, 0, token))
                else:
                    db.execute(_SCHEDULE, params)
        return leases

    def _lease(self, limit: int, worker: _Worker | None = None) -> list[_Lease]:
        """Lease up to ``limit`` due messages (pending, or leased by a worker that vanished);
        for a worker loop, also mark the messages it delivered done, in the same transaction."""
        if worker is None:
            return self._write("lease messages", uuid.uuid4().hex, limit)
        delivered = list(worker.delivered)
        leases = self._write("lease messages", worker.token, limit, delivered=delivered)
        del worker.delivered[: len(delivered)]
        return leases

    def _claim(
        self, db: sqlite3.Connection, now: int, limit: int, token: str, *, expire: bool = True
    ) -> list[_Lease]:
        """In a write transaction: lease up to ``limit`` due messages to ``token``, after
        returning expired leases to pending (or dead) when ``expire``."""
        if self._last_prune is None or now - self._last_prune >= PRUNE_EVERY_MS:
            db.execute(
                "DELETE FROM messages WHERE state = 'done' AND done_at < ?",
                (now - self.tombstone_ms,),
            )
            self._last_prune = now
        if expire:
            # Expired leases first: their worker died mid-delivery, which counts as a failed
            # attempt, so a message that kills its process is dead-lettered, not looped on.
            expired = db.execute(
                "SELECT key, attempts FROM messages WHERE state = 'leased' AND lease_until <= ?",
                (now,),
            ).fetchall()
            if expired:
                self._expire(db, now, expired)
            self._last_expiry_check = now
        rows = db.execute(
            "SELECT key, run_id, version, hop, branch, due_at, attempts FROM messages"
            " WHERE state = 'pending' AND due_at <= ? ORDER BY due_at, key LIMIT ?",
            (now, limit),
        ).fetchall()
        if rows:
            db.executemany(
                "UPDATE messages SET state = 'leased', lease_until = ?, lease_token = ?"
                " WHERE key = ?",
                [(now + self.lease_ms, token, row[0]) for row in rows],
            )
        return [
            _Lease(
                key=key,
                message=DispatchMessage(run_id=run_id, version=version, hop=hop, branch=branch),
                due_at=due_at,
                attempts=attempts,
                token=token,
            )
            for key, run_id, version, hop, branch, due_at, attempts in rows
        ]

    def _expire(self, db: sqlite3.Connection, now: int, expired: list[tuple[str, int]]) -> None:
        # An expired lease is a failed attempt, delivered again at once if any attempt is left.
        dead = [key for key, attempts in expired if self.redelivery.exhausted(attempts + 1)]
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
            [(key,) for key, attempts in expired if not self.redelivery.exhausted(attempts + 1)],
        )

    def _mark_done(self, db: sqlite3.Connection, leases: Sequence[_Lease], now: int) -> None:
        """In a write transaction: mark delivered messages done."""
        if not leases:
            return
        cur = db.executemany(_MARK_DONE, [(now, lease.key, lease.token) for lease in leases])
        if cur.rowcount < len(leases):
            # executemany counts rows, not which: name the ones that are not ours any more.
            for lease in leases:
                row = db.execute(
                    "SELECT 1 FROM messages WHERE key = ? AND state = 'done' AND done_at = ?",
                    (lease.key, now),
                ).fetchone()
                if row is None:
                    logger.warning("%s was delivered after its lease expired", lease.key)

    def _flush_delivered(self, worker: _Worker, *, quiet: bool = False) -> None:
        """Mark the worker's delivered messages done in a transaction of their own."""
        if not worker.delivered:
            return
        delivered = list(worker.delivered)
        try:
            self._write("mark messages done", worker.token, 0, delivered=delivered)
        except SchedulerError as exc:
            if not quiet:
                raise
            # Their leases will expire and they be delivered again: at least once.
            logger.warning("could not mark %d messages done: %s", len(delivered), exc)
            return
        del worker.delivered[: len(delivered)]

    async def _attempt(self, handler: Handler, lease: _Lease) -> bool:
        """Hand ``lease`` to ``handler``; False, with the failure recorded, if it raised."""
        try:
            await handler(lease.message)
        except Exception as exc:  # Any failure of the handler is a failed delivery.
            try:
                self._fail(lease, self.redelivery.decide(exc, lease.attempts + 1))
            except SchedulerError as db_exc:
                logger.warning("could not record the failure of %s: %s", lease.key, db_exc)
            return False
        return True

    async def _deliver(
        self, handler: Handler, lease: _Lease, worker: _Worker | None = None
    ) -> None:
        """Deliver ``lease``: for a worker loop, which marks it done with others later; for
        :meth:`drain` (no worker), marked done at once."""
        if not await self._attempt(handler, lease):
            return
        if worker is not None:
            if not worker.delivered:
                worker.delivered_since = worker.loop.time()
            worker.delivered.append(lease)
            return
        try:
            self._write(f"finish {lease.key!r}", lease.token, 0, delivered=[lease])
        except SchedulerError as exc:
            # The lease will expire and the message be delivered again: at least once.
            logger.warning("could not mark %s done: %s", lease.key, exc)

    def _fail(self, lease: _Lease, decision: Decision) -> None:
        attempts = lease.attempts + 1
        now = self.clock()
        dead = decision.action == "dead_letter"
        error = decision.error
        with self._use(f"retry {lease.key!r}") as db:
            db.execute(
                "UPDATE messages SET state = ?, due_at = ?, attempts = ?, last_error = ?,"
                " done_at = ?, lease_until = NULL, lease_token = NULL"
                " WHERE key = ? AND lease_token = ?",
                (
                    "dead" if dead else "pending",
                    now + decision.delay_ms,
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
                decision.delay_ms,
                error,
            )

    def _release(self, leases: Sequence[_Lease]) -> None:
        """Give back leases whose handler was cancelled, for immediate redelivery."""
        try:
            with self._use("release leases") as db:
                db.executemany(
                    "UPDATE messages SET state = 'pending', lease_until = NULL, lease_token = NULL"
                    " WHERE key = ? AND lease_token = ? AND state = 'leased'",
                    [(lease.key, lease.token) for lease in leases],
                )
        except SchedulerError as exc:
            logger.warning("could not release %d leases; they will expire: %s", len(leases), exc)

    async def _renew_leases(self, worker: _Worker) -> None:
        # A third of the lease: two renewals can be missed (a busy loop) before it expires.
        while True:
            await asyncio.sleep(self.lease_ms / 3000)
            if not (worker.inflight or worker.ready or worker.delivered):
                continue
            try:
                with self._use("renew leases") as db:
                    db.execute(
                        "UPDATE messages SET lease_until = ?"
                        " WHERE state = 'leased' AND lease_token = ?",
                        (self.clock() + self.lease_ms, worker.token),
                    )
            except SchedulerError as exc:
                logger.warning("could not renew leases: %s", exc)

    def _idle_s(self) -> float:
        """How long a worker with free slots may sleep: until the next due time, at most."""
        with self._use("find the next due time") as db:
            row = db.execute(
                "SELECT min(t) FROM ("
                " SELECT min(due_at) AS t FROM messages WHERE state = 'pending'"
                " UNION ALL"
                " SELECT min(lease_until) FROM messages WHERE state = 'leased')"
            ).fetchone()
        if row is None or row[0] is None:
            return self.poll_interval_s
        next_at: int = row[0]
        return min(max((next_at - self.clock()) / 1000, 0.0), self.poll_interval_s)


async def _set_when(source: asyncio.Event, target: asyncio.Event) -> None:
    await source.wait()
    target.set()
