"""A durable :class:`~refluxo.core.ports.Scheduler` on PostgreSQL, with a worker loop.

Messages are rows of ``refluxo_messages``. Worker loops (:meth:`PostgresScheduler.run`, in any
number of processes on any number of machines) lease due rows with ``FOR UPDATE SKIP LOCKED``,
hand each to a handler (the dispatcher) and mark it done. A new message wakes the waiting
loops through ``NOTIFY``. A failed delivery is retried with backoff and dead-lettered after
``max_attempts``; a lease that its worker stops renewing (the process died) expires, and the
message is delivered again. Due times and leases are read from the database's clock, so
machines whose clocks differ agree on them::

    pending ──lease──> leased ──handler returned──> done ──(tombstone_ms later)──> deleted
       ^                 │ ╲
       └── handler raised┘  ╲── last attempt failed, or its lease expired once too often ──> dead
           (backoff)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from asyncio import FIRST_COMPLETED
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import psycopg
from psycopg_pool import AsyncConnectionPool

from refluxo.core.errors import SchedulerError
from refluxo.core.model import DispatchMessage, now_ms
from refluxo.core.ports import Scheduler

logger = logging.getLogger(__name__)

Handler = Callable[[DispatchMessage], Awaitable[object]]
"""What a worker delivers each message to; raising means "not delivered, try again later"."""

MessageState = Literal["pending", "leased", "done", "dead"]

DAY_MS = 24 * 3600 * 1000
DEFAULT_LEASE_MS = 60_000
CHANNEL = "refluxo_messages"
# Deleting old tombstones is cheap but pointless more often than this.
PRUNE_EVERY_MS = 60_000
# The database's clock, in epoch milliseconds: one clock for every machine.
NOW = "(extract(epoch FROM clock_timestamp()) * 1000)::bigint"

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS refluxo_messages (
    key text PRIMARY KEY,
    run_id text NOT NULL,
    version bigint NOT NULL,
    hop bigint NOT NULL,
    branch text,  -- the parallel branch the delivery steps, if any
    due_at bigint NOT NULL,
    state text NOT NULL CHECK (state IN ('pending', 'leased', 'done', 'dead')),
    lease_until bigint,
    lease_token text,
    attempts integer NOT NULL DEFAULT 0,  -- deliveries that failed or whose lease expired
    last_error text,
    created_at bigint NOT NULL DEFAULT {NOW},
    done_at bigint  -- when it became done or dead
);
ALTER TABLE refluxo_messages ADD COLUMN IF NOT EXISTS branch text;
CREATE INDEX IF NOT EXISTS refluxo_messages_pending
    ON refluxo_messages (due_at) WHERE state = 'pending';
CREATE INDEX IF NOT EXISTS refluxo_messages_leased
    ON refluxo_messages (lease_until) WHERE state = 'leased';
CREATE INDEX IF NOT EXISTS refluxo_messages_done
    ON refluxo_messages (done_at) WHERE state = 'done';
"""

# A key seen before collapses into its row, unless that row is a done tombstone older than
# tombstone_ms (the prune may not have run yet): then the message is new again.
_SCHEDULE = f"""
WITH added AS (
    INSERT INTO refluxo_messages AS m (key, run_id, version, hop, branch, due_at, state)
    VALUES (
        %(key)s, %(run_id)s, %(version)s, %(hop)s, %(branch)s, coalesce(%(at)s, {NOW}), 'pending'
    )
    ON CONFLICT (key) DO UPDATE SET
        due_at = excluded.due_at, state = 'pending', attempts = 0, last_error = NULL,
        lease_until = NULL, lease_token = NULL, created_at = {NOW}, done_at = NULL
    WHERE m.state = 'done' AND m.done_at < {NOW} - %(tombstone_ms)s
    RETURNING m.due_at
)
SELECT pg_notify('{CHANNEL}', due_at::text) FROM added
"""

_LEASE = f"""
UPDATE refluxo_messages AS m
SET state = 'leased', lease_token = %(token)s, lease_until = {NOW} + %(lease_ms)s
FROM (
    SELECT key FROM refluxo_messages WHERE state = 'pending' AND due_at <= {NOW}
    ORDER BY due_at LIMIT %(limit)s FOR UPDATE SKIP LOCKED
) AS due
WHERE m.key = due.key
RETURNING m.key, m.run_id, m.version, m.hop, m.branch, m.attempts
"""

# A lease that ran out counts as one attempt: a message that kills every worker it reaches
# ends dead instead of taking them all down in turn.
_EXPIRE = f"""
UPDATE refluxo_messages AS m
SET attempts = m.attempts + 1, lease_until = NULL, lease_token = NULL, due_at = {NOW},
    last_error = 'its worker stopped renewing the lease',
    state = CASE WHEN m.attempts + 1 >= %(max_attempts)s THEN 'dead' ELSE 'pending' END,
    done_at = CASE WHEN m.attempts + 1 >= %(max_attempts)s THEN {NOW} END
FROM (
    SELECT key FROM refluxo_messages WHERE state = 'leased' AND lease_until < {NOW}
    FOR UPDATE SKIP LOCKED
) AS expired
WHERE m.key = expired.key
RETURNING m.key, m.state
"""


@dataclass(frozen=True)
class MessageInfo:
    """One stored message, as :meth:`PostgresScheduler.list_messages` shows it."""

    key: str
    message: DispatchMessage
    state: MessageState
    due_at: int
    attempts: int
    last_error: str | None


@dataclass
class _Wake:
    """What wakes a worker loop: an event, and the next due time it knows (epoch ms)."""

    event: asyncio.Event = field(default_factory=asyncio.Event)
    deadline: int = 0


@dataclass(frozen=True)
class _Lease:
    key: str
    message: DispatchMessage
    attempts: int
    token: str


class PostgresScheduler(Scheduler):
    """Durable messages in PostgreSQL, delivered by :meth:`run` loops on any machine.

    Args:
        pool: an open psycopg ``AsyncConnectionPool`` (autocommit connections; see
            :func:`refluxo.postgres.open_pool`). A running :meth:`run` loop holds one of its
            connections for ``LISTEN``.
        max_delay_ms: the longest delay :meth:`schedule` accepts.
        lease_ms: how long a delivery may go without its worker renewing the lease before
            another worker takes the message over (the worker renews every third of it).
        max_attempts: failed deliveries (or expired leases) before a message is dead.
        retry_base_ms, retry_max_ms: the backoff after a failed delivery doubles from the base
            up to the maximum.
        tombstone_ms: how long a delivered message's key still collapses a duplicate.
        poll_interval_s: the longest an idle loop waits without a notification.
    """

    def __init__(
        self,
        pool: AsyncConnectionPool[Any],
        *,
        max_delay_ms: int = 365 * DAY_MS,
        lease_ms: int = DEFAULT_LEASE_MS,
        max_attempts: int = 10,
        retry_base_ms: int = 1_000,
        retry_max_ms: int = 300_000,
        tombstone_ms: int = DAY_MS,
        poll_interval_s: float = 5.0,
    ) -> None:
        self.pool = pool
        self._max_delay_ms = max_delay_ms
        self.lease_ms = lease_ms
        self.max_attempts = max_attempts
        self.retry_base_ms = retry_base_ms
        self.retry_max_ms = retry_max_ms
        self.tombstone_ms = tombstone_ms
        self.poll_interval_s = poll_interval_s
        self._ready = False

    @property
    def max_delay_ms(self) -> int:
        return self._max_delay_ms

    async def _sql(self, what: str, query: str, params: Any = None) -> list[tuple[Any, ...]]:
        if not self._ready:
            await self.create_schema()
        for attempt in (1, 2):
            try:
                async with self.pool.connection() as conn:
                    try:
                        cur = await conn.execute(query, params)
                        return await cur.fetchall() if cur.description else []
                    except psycopg.OperationalError:
                        # A connection the server dropped (a restart, a failover) fails its
                        # next statement; the pool discards it. Every statement here may run
                        # twice (an upsert, or updates guarded by state and token), so one
                        # more try on a fresh connection is safe.
                        if attempt == 1 and conn.broken:
                            continue
                        raise
            except psycopg.Error as exc:
                transient = isinstance(exc, psycopg.OperationalError)
                raise SchedulerError(f"could not {what}: {exc}", transient=transient) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    async def create_schema(self) -> None:
        """Create the table and its indexes if missing (done on first use)."""
        try:
            async with self.pool.connection() as conn, conn.transaction():
                # Two processes creating the same table at once would collide: take turns.
                await conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (CHANNEL,))
                await conn.execute(SCHEMA)
        except psycopg.Error as exc:
            raise SchedulerError(f"could not create the schema: {exc}", transient=True) from exc
        self._ready = True

    async def schedule(self, message: DispatchMessage, *, at: int | None = None) -> None:
        if at is not None and at - now_ms() > self._max_delay_ms:
            raise ValueError(f"at is more than max_delay_ms={self._max_delay_ms} from now")
        await self._sql(
            f"schedule {message.key!r}",
            _SCHEDULE,
            {
                "key": message.key,
                "run_id": message.run_id,
                "version": message.version,
                "hop": message.hop,
                "branch": message.branch,
                "at": at,
                "tombstone_ms": self.tombstone_ms,
            },
        )

    async def run(self, handler: Handler, *, stop: asyncio.Event, concurrency: int = 8) -> None:
        """Deliver due messages to ``handler``, ``concurrency`` at a time, until ``stop`` is set.

        Returns once the deliveries in flight have ended. Cancelling it cancels them; their
        messages are released for another worker at once.
        """
        if not self._ready:
            await self.create_schema()
        token = uuid.uuid4().hex
        wake = _Wake()
        inflight: dict[asyncio.Task[None], _Lease] = {}
        helpers = [
            asyncio.create_task(self._listen(wake)),
            asyncio.create_task(self._renew_leases(token, inflight)),
        ]
        stopping = asyncio.create_task(stop.wait())
        try:
            next_expiry = next_prune = 0
            while not stop.is_set():
                room = concurrency - len(inflight)
                timeout: float | None = None
                if room > 0:
                    wake.event.clear()
                    try:
                        if now_ms() >= next_expiry:
                            await self._sql("expire leases", _EXPIRE, self._params())
                            next_expiry = now_ms() + 1000
                        if now_ms() >= next_prune:
                            await self.prune()
                            next_prune = now_ms() + PRUNE_EVERY_MS
                        for lease in await self._lease(token, room):
                            task = asyncio.create_task(self._deliver(handler, lease))
                            inflight[task] = lease
                            task.add_done_callback(inflight.pop)
                        if len(inflight) < concurrency:
                            # Asked again only when the known next due time has come: a
                            # NOTIFY that another loop answered first costs one query here.
                            if wake.deadline <= now_ms():
                                wake.deadline = now_ms() + await self._idle_ms()
                            timeout = max(wake.deadline - now_ms(), 0) / 1000
                    except SchedulerError as exc:
                        # The database is away: keep the steps in flight, try again soon.
                        logger.warning("worker loop: %s; trying again in 1 s", exc)
                        timeout = 1.0
                        wake.deadline = 0
                waiting = asyncio.create_task(wake.event.wait())
                await asyncio.wait(
                    {waiting, stopping, *inflight}, timeout=timeout, return_when=FIRST_COMPLETED
                )
                waiting.cancel()
            if inflight:
                await asyncio.wait(set(inflight))
        finally:
            stopping.cancel()
            for task in [*inflight, *helpers]:
                task.cancel()
            await asyncio.gather(*inflight, *helpers, return_exceptions=True)

    async def _listen(self, wake: _Wake) -> None:
        """Wake the loop on every NOTIFY; reconnect when the connection is lost."""
        while True:
            try:
                async with self.pool.connection() as conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    wake.deadline = 0  # what was scheduled while nobody listened
                    wake.event.set()
                    async for notice in conn.notifies():
                        due = int(notice.payload) if notice.payload.isdigit() else 0
                        if due > now_ms():  # a message due later: sleep no longer than that
                            wake.deadline = min(wake.deadline, due)
                        wake.event.set()
            except psycopg.Error as exc:
                logger.warning("lost the LISTEN connection, reconnecting in 1 s: %s", exc)
                await asyncio.sleep(1)

    async def drain(self, handler: Handler, *, max_messages: int | None = None) -> int:
        """Deliver the messages due now, one at a time, in this task; returns how many."""
        token = uuid.uuid4().hex
        count = 0
        await self._sql("expire leases", _EXPIRE, self._params())
        while max_messages is None or count < max_messages:
            leases = await self._lease(token, 1)
            if not leases:
                break
            await self._deliver(handler, leases[0])
            count += 1
        return count

    async def list_messages(self, state: MessageState | None = None) -> list[MessageInfo]:
        """The stored messages (those in ``state``), earliest due first."""
        rows = await self._sql(
            "list messages",
            "SELECT key, run_id, version, hop, branch, state, due_at, attempts, last_error"
            " FROM refluxo_messages WHERE %(state)s::text IS NULL OR state = %(state)s"
            " ORDER BY due_at, key",
            {"state": state},
        )
        return [
            MessageInfo(
                r[0], DispatchMessage(run_id=r[1], version=r[2], hop=r[3], branch=r[4]), *r[5:]
            )
            for r in rows
        ]

    async def prune(self) -> int:
        """Delete done messages older than ``tombstone_ms``; returns how many."""
        rows = await self._sql(
            "prune done messages",
            f"DELETE FROM refluxo_messages WHERE state = 'done' AND done_at < {NOW} - %s"
            " RETURNING 1",
            (self.tombstone_ms,),
        )
        return len(rows)

    def _params(self) -> dict[str, int]:
        return {"max_attempts": self.max_attempts}

    async def _lease(self, token: str, limit: int) -> list[_Lease]:
        rows = await self._sql(
            "lease messages", _LEASE, {"token": token, "lease_ms": self.lease_ms, "limit": limit}
        )
        return [
            _Lease(
                key,
                DispatchMessage(run_id=run_id, version=version, hop=hop, branch=branch),
                attempts,
                token,
            )
            for key, run_id, version, hop, branch, attempts in rows
        ]

    async def _deliver(self, handler: Handler, lease: _Lease) -> None:
        try:
            await handler(lease.message)
        except asyncio.CancelledError:
            with contextlib.suppress(SchedulerError):
                await asyncio.shield(self._release(lease))
            raise
        except Exception as exc:
            await self._after(self._fail(lease, f"{type(exc).__name__}: {exc}"), lease)
        else:
            await self._after(self._done(lease), lease)

    async def _after(self, bookkeeping: Awaitable[None], lease: _Lease) -> None:
        try:
            await bookkeeping
        except SchedulerError as exc:
            logger.warning("%s is delivered again once its lease ends: %s", lease.key, exc)

    async def _done(self, lease: _Lease) -> None:
        rows = await self._sql(
            f"mark {lease.key!r} done",
            f"UPDATE refluxo_messages SET state = 'done', done_at = {NOW}, lease_until = NULL,"
            " lease_token = NULL WHERE key = %s AND lease_token = %s RETURNING 1",
            (lease.key, lease.token),
        )
        if not rows:
            logger.warning("%s was delivered after its lease expired", lease.key)

    def _backoff_ms(self, attempts: int) -> int:
        return min(self.retry_base_ms << max(attempts - 1, 0), self.retry_max_ms)

    async def _fail(self, lease: _Lease, error: str) -> None:
        attempts = lease.attempts + 1
        dead = attempts >= self.max_attempts
        await self._sql(
            f"retry {lease.key!r}",
            f"WITH failed AS (UPDATE refluxo_messages SET state = %(state)s,"
            f" due_at = {NOW} + %(delay)s, attempts = %(attempts)s, last_error = %(error)s,"
            f" lease_until = NULL, lease_token = NULL, done_at = CASE WHEN %(dead)s THEN {NOW} END"
            " WHERE key = %(key)s AND lease_token = %(token)s RETURNING state, due_at)"
            f" SELECT pg_notify('{CHANNEL}', due_at::text) FROM failed WHERE state = 'pending'",
            {
                "state": "dead" if dead else "pending",
                "delay": 0 if dead else self._backoff_ms(attempts),
                "attempts": attempts,
                "error": error,
                "dead": dead,
                "key": lease.key,
                "token": lease.token,
            },
        )
        if dead:
            logger.error("dead-lettered %s after %d attempts: %s", lease.key, attempts, error)
        else:
            logger.warning("delivery %d of %s failed, retrying: %s", attempts, lease.key, error)

    async def _release(self, lease: _Lease) -> None:
        await self._sql(
            f"release {lease.key!r}",
            "WITH released AS (UPDATE refluxo_messages SET state = 'pending', lease_until = NULL,"
            " lease_token = NULL WHERE key = %s AND lease_token = %s AND state = 'leased'"
            f" RETURNING due_at) SELECT pg_notify('{CHANNEL}', due_at::text) FROM released",
            (lease.key, lease.token),
        )

    async def _renew_leases(self, token: str, inflight: dict[asyncio.Task[None], _Lease]) -> None:
        # A third of the lease: two renewals can be missed (a busy loop) before it expires.
        while True:
            await asyncio.sleep(self.lease_ms / 3000)
            if not inflight:
                continue
            try:
                await self._sql(
                    "renew leases",
                    f"UPDATE refluxo_messages SET lease_until = {NOW} + %s"
                    " WHERE state = 'leased' AND lease_token = %s",
                    (self.lease_ms, token),
                )
            except SchedulerError as exc:
                logger.warning("could not renew leases: %s", exc)

    async def _idle_ms(self) -> int:
        """How long a loop with free slots may wait: until the next due time, at most."""
        rows = await self._sql(
            "find the next due time",
            "SELECT least("
            " (SELECT min(due_at) FROM refluxo_messages WHERE state = 'pending'),"
            f" (SELECT min(lease_until) FROM refluxo_messages WHERE state = 'leased')) - {NOW}",
        )
        poll_ms = round(self.poll_interval_s * 1000)
        left = rows[0][0] if rows else None
        return poll_ms if left is None else int(min(max(left, 0), poll_ms))
