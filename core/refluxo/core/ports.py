"""The two ports every runtime implements: where runs live, and how steps get delivered.

Adapters name the port they implement (``class SQLiteStateStore(StateStore)``) so a type
checker catches a missing method. Every adapter passes the contract suites of
``refluxo.testing``; each contract test is named after one sentence below.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from .model import DispatchMessage, NodeResult, Snapshot


@runtime_checkable
class StateStore(Protocol):
    """Stores snapshots by run id, with optimistic locking on ``Snapshot.version``.

    A store writes what :func:`~refluxo.core.model.encode_snapshot` makes of a snapshot: JSON
    proven to read back, within the store's size limit; it reads it back with
    :func:`~refluxo.core.model.decode_snapshot`. A SQL database needs only a driver and a
    dialect of :class:`~refluxo.core.sql.SqlStateStore`.

    Errors: every method raises :class:`~refluxo.core.errors.StoreError` when the backend
    fails; its ``transient`` flag says whether trying again may succeed.
    """

    async def create(self, snapshot: Snapshot) -> bool:
        """Store ``snapshot`` as a new run, only if no run with its id exists.

        Returns:
            True when it was stored; False when a run with that id already existed, in which
            case nothing was written.

        Raises:
            PayloadTooLarge: the snapshot is over the store's size limit; nothing was written.
                A run that is not finished must leave ``FINISH_HEADROOM_BYTES`` of the limit
                free (see :func:`~refluxo.core.model.encode_snapshot`), so it can always be
                failed or cancelled.
            NotStrictJson: the snapshot would not read back as it is; nothing was written.
            StoreError: the backend failed.
        """
        ...

    async def load(self, run_id: str) -> Snapshot:
        """Return the stored snapshot of ``run_id``.

        Raises:
            RunNotFound: no run has that id.
            StoreError: the backend failed.
        """
        ...

    async def save(self, snapshot: Snapshot, *, expected_version: int) -> None:
        """Replace the stored run with ``snapshot`` if its stored version is ``expected_version``.

        Afterwards the stored version is ``snapshot.version``. Of two saves that expect the
        same version, at most one succeeds.

        Raises:
            VersionConflict: the stored version is not ``expected_version``; nothing was written.
            RunNotFound: no run has that id; nothing was written.
            PayloadTooLarge: the snapshot is over the store's size limit; nothing was written.
                A run that is not finished must leave ``FINISH_HEADROOM_BYTES`` of the limit
                free (see :func:`~refluxo.core.model.encode_snapshot`), so it can always be
                failed or cancelled.
            NotStrictJson: the snapshot would not read back as it is; nothing was written.
            StoreError: the backend failed.
        """
        ...


@runtime_checkable
class Scheduler(Protocol):
    """Delivers :class:`DispatchMessage` s to the dispatcher, now or at a given time.

    Delivery is at least once: a message may arrive twice, late, or (on platforms whose clocks
    differ) a little early; the dispatcher tolerates all three. How a message reaches the
    dispatcher is the adapter's business (an HTTP call to ``/_dispatch``, a queue consumer, a
    worker loop).
    """

    @property
    def max_delay_ms(self) -> int:
        """The longest delay ``schedule`` accepts, in milliseconds; later times take hops."""
        ...

    async def schedule(self, message: DispatchMessage, *, at: int | None = None) -> None:
        """Deliver ``message`` at epoch milliseconds ``at``, or as soon as possible when None.

        A time in the past means as soon as possible. Scheduling a message whose ``key`` was
        scheduled before, within the adapter's deduplication window, may be collapsed into one
        delivery (adapters that can, do: it is how a duplicate step collapses); a scheduler
        that cannot deduplicate delivers both.

        Raises:
            ValueError: ``at`` is more than ``max_delay_ms`` from now.
            SchedulerError: the backend refused or failed; nothing may have been scheduled.
        """
        ...


@runtime_checkable
class ResultArchive(Protocol):
    """Optional: a store that keeps the results a retention limit trims out of snapshots.

    A workflow with ``retention=N, archive=True`` needs a store that implements this too.
    """

    async def archive_results(
        self, run_id: str, node_id: str, first_index: int, results: Sequence[NodeResult]
    ) -> None:
        """Keep ``results`` as the results of ``node_id`` numbered from ``first_index`` (0-based).

        Idempotent: an index that is kept already is left as it is.

        Raises:
            StoreError: the backend failed.
        """
        ...

    async def archived_results(self, run_id: str, node_id: str) -> list[NodeResult]:
        """Every kept result of ``node_id`` in ``run_id``, oldest first (empty when none).

        Raises:
            StoreError: the backend failed.
        """
        ...


@runtime_checkable
class DueRuns(Protocol):
    """Optional: a store that can find runs waiting for a delivery (used by the reconciler).

    Such a store keeps each run's due time (:func:`stored_due_time`) in an indexed column or
    field, written on every ``create`` and ``save``.
    """

    async def due_runs(self, *, due_before: int, limit: int) -> list[str]:
        """Ids of runs that are not finished and whose due time (``Snapshot.due_at()``,
        where ``active`` counts as due at its last save time) is at or before
        ``due_before`` (epoch ms), earliest first, at most ``limit``.

        Raises:
            StoreError: the backend failed.
        """
        ...


@dataclass(frozen=True)
class RunInfo:
    """One run as a :class:`RunIndex` lists it: a summary, never the whole snapshot.

    Attributes:
        run_id: the run's id.
        workflow: the name of its workflow definition (None when the run records none).
        status: ``active``, ``paused``, ``error``, ``completed`` or ``failed``.
        current_node: the node the run is at (None once it completed).
        version: the stored snapshot's version.
        created_at: when the run was stored first, epoch ms (None when the store did not
            keep it: runs stored before it did).
        updated_at: when the run was last written, epoch ms.
        failed_reason: ``metadata.failedReason`` of a failed run, else None.
    """

    run_id: str
    workflow: str | None
    status: str
    current_node: str | None
    version: int
    created_at: int | None
    updated_at: int
    failed_reason: str | None = None

    def to_wire(self) -> dict[str, Any]:
        """The summary as the HTTP API answers it (camelCase, epoch ms)."""
        return {
            "id": self.run_id,
            "workflow": self.workflow,
            "status": self.status,
            "currentNode": self.current_node,
            "version": self.version,
            "createdAt": self.created_at,
            "updatedAt": self.updated_at,
            "failedReason": self.failed_reason,
        }


def select_runs(
    runs: Iterable[RunInfo],
    *,
    workflow: str | None = None,
    status: str | None = None,
    updated_before: int | None = None,
    updated_after: int | None = None,
    after: tuple[int, str] | None = None,
    limit: int = 50,
) -> list[RunInfo]:
    """:meth:`RunIndex.find_runs` done in memory, for stores that read every run's summary."""
    found = [
        info
        for info in runs
        if (workflow is None or info.workflow == workflow)
        and (status is None or info.status == status)
        and (updated_before is None or info.updated_at < updated_before)
        and (updated_after is None or info.updated_at >= updated_after)
        and (after is None or (-info.updated_at, info.run_id) > (-after[0], after[1]))
    ]
    found.sort(key=lambda r: (-r.updated_at, r.run_id))
    return found[:limit]


def run_info(snapshot: Snapshot, *, created_at: int | None, updated_at: int) -> RunInfo:
    """The :class:`RunInfo` of ``snapshot`` stored at ``updated_at`` (for stores that list runs)."""
    reason = snapshot.metadata.get("failedReason") if snapshot.status == "failed" else None
    return RunInfo(
        run_id=snapshot.run_id,
        workflow=snapshot.definition.name if snapshot.definition is not None else None,
        status=snapshot.status,
        current_node=snapshot.current_node_id,
        version=snapshot.version,
        created_at=created_at,
        updated_at=updated_at,
        failed_reason=reason if isinstance(reason, str) else None,
    )


@runtime_checkable
class RunIndex(Protocol):
    """Optional: a store that lists runs, newest first, for operators (``GET /runs``).

    Runs are ordered by their last write, newest first, ties broken by run id (ascending):
    the order is total, so a page that starts after a given ``(updated_at, run_id)`` position
    never repeats or skips a run that was not written meanwhile. A run written between two
    pages moves to the front and is not seen again by a walk already past it.
    """

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
        """Up to ``limit`` runs, newest first, that match every filter given.

        Args:
            workflow: only runs of the workflow with this name.
            status: only runs with this status.
            updated_before: only runs last written before this time (epoch ms, exclusive).
            updated_after: only runs last written at or after this time (epoch ms).
            after: only runs that come after this ``(updated_at, run_id)`` position in the
                order (the last run of the previous page).
            limit: at most this many (at least 1).

        Raises:
            StoreError: the backend failed.
        """
        ...


def stored_due_time(snapshot: Snapshot, saved_at: int) -> int | None:
    """The due time a :class:`DueRuns` store keeps for ``snapshot`` saved at ``saved_at``.

    ``Snapshot.due_at()``, except that an ``active`` run, and a paused run with an event in
    its inbox (whose delivery is due at once), count as due at ``saved_at``: a run that has
    been due for longer than a grace period without being saved again has lost its delivery.
    None (never due) for paused runs without a deadline or an event, and finished runs.
    """
    if snapshot.status == "active":
        return saved_at
    if snapshot.status == "paused" and snapshot.next_event() is not None:
        return saved_at
    return snapshot.due_at()
