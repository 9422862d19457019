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
* The write at the end expects the version the delivery loaded. If another writer got in
  between (an event sent to the run, a duplicate delivery), the write is refused, nothing the
  delivery scheduled is sent, and the message is delivered again (a transient
  :class:`~refluxo.core.errors.StoreError`): the redelivery finds the run as the other writer
  left it and runs the steps again. A step's executor may so run twice, as it may when a
  delivery dies between a step and its save: delivery is at least once.
* A delivery that raises writes nothing and sends nothing; the message is retried.
* Runs created during a delivery (a sub-workflow's child) are written at once, as before, and
  what the delivery scheduled for them is sent even when another run's write is refused.

HTTP requests and the cron trigger write through, unchanged. D1 is not held: it has no
per-key write limit, and each step's save there is its own transaction.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from refluxo.core.errors import StoreError, VersionConflict
from refluxo.core.model import DispatchMessage, Snapshot, encode_snapshot
from refluxo.core.ports import DueRuns, RunIndex, RunInfo, Scheduler, StateStore

from .store import KVStateStore

__all__ = ["HeldKVStateStore", "HeldScheduler", "HeldWrites"]


@dataclass
class _Held:
    base: int  # the version the delivery loaded: what the write at the end expects
    snapshot: Snapshot  # the latest held save (or the loaded snapshot)
    dirty: bool = False


class HeldWrites:
    """A KV store and a scheduler whose writes and sends a delivery holds until it ends.

    Hand :attr:`store` and :attr:`scheduler` to the dispatcher, and run each queue delivery
    inside :meth:`delivery`; outside one, both pass every call through.

    Args:
        store: the runs' KV store.
        scheduler: the steps queue's scheduler.
    """

    def __init__(self, store: KVStateStore, scheduler: Scheduler) -> None:
        self.kv = store
        self.queue = scheduler
        self.store = HeldKVStateStore(self)
        self.scheduler = HeldScheduler(self)
        self.open = False
        self.runs: dict[str, _Held] = {}
        self.messages: list[tuple[DispatchMessage, int | None]] = []
        self.writes = 0
        """KV writes of held runs made so far (one per delivery that changed its run)."""

    @contextlib.asynccontextmanager
    async def delivery(self) -> AsyncIterator[None]:
        """Hold the saves and sends made inside; write and send them when it ends normally.

        Raises:
            StoreError: (transient) another writer changed a run during the delivery; that
                run was not written, nor anything scheduled for it sent.
            Whatever the body, the write or the sends raise.
        """
        if self.open:
            raise RuntimeError("a delivery is already open")
        self.open = True
        try:
            yield
            self.open = False
            unwritten: set[str] = set()
            try:
                await self._write(unwritten)
            finally:
                # What the delivery scheduled for runs it wrote, or did not hold (a child it
                # created), is sent even when another run's write failed: those runs exist
                # as the messages expect. Messages of an unwritten run are dropped.
                for message, at in self.messages:
                    if message.run_id not in unwritten:
                        await self.queue.schedule(message, at=at)
        finally:
            self.open = False
            self.runs.clear()
            self.messages.clear()

    async def _write(self, unwritten: set[str]) -> None:
        """Write every changed run; ``unwritten`` collects those not written (yet)."""
        unwritten.update(run_id for run_id, held in self.runs.items() if held.dirty)
        for run_id, held in self.runs.items():
            if not held.dirty:
                continue
            try:
                await self.kv.save(held.snapshot, expected_version=held.base)
            except VersionConflict as exc:
                raise StoreError(
                    f"run {run_id!r} changed in KV while a delivery ran its steps (an event, "
                    "or another delivery); its steps were not written and run again when the "
                    "message is delivered again",
                    transient=True,
                ) from exc
            unwritten.discard(run_id)
            self.writes += 1


class HeldKVStateStore(StateStore, DueRuns, RunIndex):
    """The KV store as the dispatcher sees it: saves held while a delivery is open."""

    def __init__(self, held: HeldWrites) -> None:
        self._held = held

    async def create(self, snapshot: Snapshot) -> bool:
        return await self._held.kv.create(snapshot)

    async def load(self, run_id: str) -> Snapshot:
        held = self._held
        if held.open and run_id in held.runs:
            return held.runs[run_id].snapshot
        snapshot = await held.kv.load(run_id)
        if held.open:
            held.runs[run_id] = _Held(base=snapshot.version, snapshot=snapshot)
        return snapshot

    async def save(self, snapshot: Snapshot, *, expected_version: int) -> None:
        held = self._held
        run = held.runs.get(snapshot.run_id) if held.open else None
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
        if self._held.open:
            self._held.messages.append((message, at))
        else:
            await self._held.queue.schedule(message, at=at)
