"""On Workers KV, one queue delivery writes its run's key once, however many steps it chains.

Workers KV takes about one write per second to a key (faster writes to one key answer 429),
and a run is one key. A delivery that runs consecutive steps of an active run (the
dispatcher's ``delivery_budget_ms``) saves after each step; on KV those saves would be writes
of one key milliseconds apart. So while the Worker handles a queue message, the KV store's
saves are held in memory and the run is written once, when the delivery ends, with the same
version check as any save; the messages the delivery schedules are sent after that write,
as the dispatcher sends them after its saves.

What holding changes, and why it is safe:

* A held save is checked as a save is: against the version held (the one loaded, then each
  held save's), and through :func:`~refluxo.core.model.encode_snapshot` (size, strict JSON).
* The write at the end expects the version the delivery loaded. If only events reached the
  run meanwhile (an event sent to it moves its version, not its step version), they are kept:
  the run is written with the delivery's steps and those events, as the dispatcher merges
  events into a step's save, and what the delivery scheduled for the run is sent for the
  version written. If more changed (a cancel, a retry, a duplicate delivery's steps), the
  write is refused, nothing the delivery scheduled for that run is sent, and the message is
  delivered again (a transient :class:`~refluxo.core.errors.StoreError`): the redelivery
  finds the run as the other writer left it. A step's executor may so run twice, as it may
  when a delivery dies between a step and its save: delivery is at least once.
* A delivery that raises writes nothing and sends nothing; the message is retried.
* Runs created during a delivery (a sub-workflow's child) are written at once, as before, and
  what the delivery scheduled for them is sent even when another run's write is refused.

What a delivery holds belongs to the task that runs it: an HTTP request or a cron trigger the
isolate serves meanwhile writes through, unchanged. D1 is not held: it has no
per-key write limit, and each step's save there is its own transaction.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from contextvars import ContextVar
from dataclasses import dataclass, field

from refluxo.core.dispatcher import with_events
from refluxo.core.errors import StoreError, VersionConflict
from refluxo.core.model import DispatchMessage, Snapshot, encode_snapshot
from refluxo.core.ports import DueRuns, RunIndex, RunInfo, Scheduler, StateStore

from .store import KVStateStore

__all__ = ["HeldKVStateStore", "HeldScheduler", "HeldWrites"]

_MAX_EVENT_MERGES = 8
"""How many times the write at the end of a delivery takes in events that keep arriving."""


@dataclass
class _Held:
    loaded: Snapshot  # the run as the delivery loaded it
    snapshot: Snapshot  # the latest held save (or the loaded snapshot)
    dirty: bool = False

    @property
    def base(self) -> int:
        """The version the write at the end expects: the one the delivery loaded."""
        return self.loaded.version


@dataclass
class _Delivery:
    """What one queue delivery holds: its runs' latest saves and the messages it scheduled."""

    runs: dict[str, _Held] = field(default_factory=dict)
    messages: list[tuple[DispatchMessage, int | None]] = field(default_factory=list)


class HeldWrites:
    """A KV store and a scheduler whose writes and sends a delivery holds until it ends.

    Hand :attr:`store` and :attr:`scheduler` to the dispatcher, and run each queue delivery
    inside :meth:`delivery`; outside one, both pass every call through. What a delivery holds
    belongs to its own task (a context variable): an HTTP request the isolate serves meanwhile
    writes through, as it would without a delivery.

    Args:
        store: the runs' KV store.
        scheduler: the steps queue's scheduler.
    """

    def __init__(self, store: KVStateStore, scheduler: Scheduler) -> None:
        self.kv = store
        self.queue = scheduler
        self.store = HeldKVStateStore(self)
        self.scheduler = HeldScheduler(self)
        self._current: ContextVar[_Delivery | None] = ContextVar(
            f"refluxo-kv-delivery-{id(self)}", default=None
        )
        self.writes = 0
        """KV writes of held runs made so far (one per delivery that changed its run)."""

    @property
    def open(self) -> bool:
        """True inside :meth:`delivery`, in the task that runs it."""
        return self._current.get() is not None

    def current(self) -> _Delivery | None:
        """What the delivery running in this task holds, or None outside one."""
        return self._current.get()

    @contextlib.asynccontextmanager
    async def delivery(self) -> AsyncIterator[None]:
        """Hold the saves and sends made inside; write and send them when it ends normally.

        A run that only received events meanwhile is written with its steps and those events
        (as the dispatcher merges them into a step's save); a run that changed otherwise is
        not written.

        Raises:
            StoreError: (transient) another writer changed a run during the delivery (more
                than events); that run was not written, nor anything scheduled for it sent.
            Whatever the body, the write or the sends raise.
        """
        if self.open:
            raise RuntimeError("a delivery is already open")
        delivery = _Delivery()
        token = self._current.set(delivery)
        try:
            yield
        finally:
            self._current.reset(token)
        unwritten: set[str] = set()
        try:
            await self._write(delivery, unwritten)
        finally:
            # What the delivery scheduled for runs it wrote, or did not hold (a child it
            # created), is sent even when another run's write failed: those runs exist as
            # the messages expect. Messages of an unwritten run are dropped.
            for message, at in delivery.messages:
                if message.run_id not in unwritten:
                    await self.queue.schedule(message, at=at)

    async def _write(self, delivery: _Delivery, unwritten: set[str]) -> None:
        """Write every changed run; ``unwritten`` collects those not written (yet)."""
        unwritten.update(run_id for run_id, held in delivery.runs.items() if held.dirty)
        for run_id, held in delivery.runs.items():
            if not held.dirty:
                continue
            written = await self._write_run(held)
            if written.version != held.snapshot.version:
                # Events joined the run: what the delivery scheduled for its last version
                # is for the version written.
                delivery.messages = [
                    (m.model_copy(update={"version": written.version}), at)
                    if m.run_id == run_id
                    and m.branch is None
                    and m.version == held.snapshot.version
                    else (m, at)
                    for m, at in delivery.messages
                ]
            unwritten.discard(run_id)
            self.writes += 1

    async def _write_run(self, held: _Held) -> Snapshot:
        snapshot, previous = held.snapshot, held.loaded
        for _ in range(_MAX_EVENT_MERGES + 1):
            try:
                await self.kv.save(snapshot, expected_version=previous.version)
                return snapshot
            except VersionConflict as exc:
                stored = await self.kv.load(snapshot.run_id)
                merged = with_events(held.loaded, stored, previous, snapshot)
                if merged is None:
                    raise StoreError(
                        f"run {snapshot.run_id!r} changed in KV while a delivery ran its steps "
                        "(a cancel, a retry or another delivery); its steps were not written "
                        "and run again when the message is delivered again",
                        transient=True,
                    ) from exc
                snapshot, previous = merged, stored
        raise StoreError(
            f"run {snapshot.run_id!r} kept receiving events while a delivery wrote its steps; "
            "the message is delivered again",
            transient=True,
        )


class HeldKVStateStore(StateStore, DueRuns, RunIndex):
    """The KV store as the dispatcher sees it: saves held while a delivery is open."""

    def __init__(self, held: HeldWrites) -> None:
        self._held = held

    async def create(self, snapshot: Snapshot) -> bool:
        return await self._held.kv.create(snapshot)

    async def load(self, run_id: str) -> Snapshot:
        held = self._held
        delivery = held.current()
        if delivery is not None and run_id in delivery.runs:
            return delivery.runs[run_id].snapshot
        snapshot = await held.kv.load(run_id)
        if delivery is not None:
            delivery.runs[run_id] = _Held(loaded=snapshot, snapshot=snapshot)
        return snapshot

    async def save(self, snapshot: Snapshot, *, expected_version: int) -> None:
        held = self._held
        delivery = held.current()
        run = delivery.runs.get(snapshot.run_id) if delivery is not None else None
        if run is None:  # outside a delivery, or a run it did not load: write through
            await held.kv.save(snapshot, expected_version=expected_version)
            return
        if run.snapshot.version != expected_version:
            raise VersionConflict(snapshot.run_id, expected_version, run.snapshot.version)
        encode_snapshot(snapshot, held.kv.max_bytes)  # refuse what the write would refuse
        run.snapshot, run.dirty = snapshot, True

    async def due_runs(self, *, due_before: int, limit: int) -> list[str]:
        return await self._held.kv.due_runs(due_before=due_before, limit=limit)

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
        return await self._held.kv.find_runs(
            workflow=workflow,
            status=status,
            updated_before=updated_before,
            updated_after=updated_after,
            after=after,
            limit=limit,
        )


class HeldScheduler(Scheduler):
    """The steps queue as the dispatcher sees it: sends held while a delivery is open."""

    def __init__(self, held: HeldWrites) -> None:
        self._held = held

    @property
    def max_delay_ms(self) -> int:
        return self._held.queue.max_delay_ms

    async def schedule(self, message: DispatchMessage, *, at: int | None = None) -> None:
        delivery = self._held.current()
        if delivery is not None:
            delivery.messages.append((message, at))
        else:
            await self._held.queue.schedule(message, at=at)
