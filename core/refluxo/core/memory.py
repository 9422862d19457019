"""In-memory adapters of both ports: for tests, for one process, and for ``execute``-style use.

Both take an injectable clock (epoch milliseconds), so tests control time.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Sequence

from .errors import RunNotFound, VersionConflict
from .model import (
    DispatchMessage,
    NodeResult,
    Snapshot,
    WrittenSnapshots,
    decode_result,
    decode_snapshot,
    encode_snapshot,
    now_ms,
)
from .ports import (
    DueRuns,
    ResultArchive,
    RunIndex,
    RunInfo,
    Scheduler,
    StateStore,
    run_info,
    select_runs,
    stored_due_time,
)


class MemoryStateStore(StateStore, ResultArchive, DueRuns, RunIndex):
    """Keeps snapshots as JSON text in a dict; copies in and out so callers share nothing.

    A load that finds the text this store wrote hands out a copy of the snapshot it wrote
    instead of decoding the text (:class:`~refluxo.core.model.WrittenSnapshots`: the results
    and values inside are shared with the saved snapshot, never its containers).

    It also keeps the results a retention limit trims (:class:`ResultArchive`) and finds due
    runs (:class:`DueRuns`) and lists them (:class:`RunIndex`).

    Args:
        max_bytes: refuse snapshots whose JSON is larger (None: no limit).
        clock: epoch milliseconds, for the due time of active runs.
    """

    def __init__(self, *, max_bytes: int | None = None, clock: Callable[[], int] = now_ms) -> None:
        self._runs: dict[str, str] = {}
        self._versions: dict[str, int] = {}
        self._due: dict[str, int] = {}
        self._times: dict[str, tuple[int, int]] = {}  # run id -> (created, updated)
        self._archive: dict[tuple[str, str], dict[int, str]] = {}
        self._written = WrittenSnapshots()
        self.max_bytes = max_bytes
        self.clock = clock

    def _set_due(self, snapshot: Snapshot) -> None:
        due = stored_due_time(snapshot, self.clock())
        if due is None:
            self._due.pop(snapshot.run_id, None)
        else:
            self._due[snapshot.run_id] = due

    def _encode(self, snapshot: Snapshot) -> str:
        return encode_snapshot(snapshot, self.max_bytes)

    async def create(self, snapshot: Snapshot) -> bool:
        raw = self._encode(snapshot)
        if snapshot.run_id in self._runs:
            return False
        self._runs[snapshot.run_id] = raw
        self._written.wrote(snapshot, raw)
        self._versions[snapshot.run_id] = snapshot.version
        now = self.clock()
        self._times[snapshot.run_id] = (now, now)
        self._set_due(snapshot)
        return True

    async def load(self, run_id: str) -> Snapshot:
        raw = self._runs.get(run_id)
        if raw is None:
            raise RunNotFound(run_id)
        known = self._written.read(run_id, raw)
        if known is not None:
            return known
        return decode_snapshot(run_id, raw, "the memory store")

    async def save(self, snapshot: Snapshot, *, expected_version: int) -> None:
        run_id = snapshot.run_id
        if run_id not in self._runs:
            raise RunNotFound(run_id)
        current = self._versions[run_id]
        if current != expected_version:
            raise VersionConflict(run_id, expected_version, current)
        raw = self._encode(snapshot)
        self._runs[run_id] = raw
        self._written.wrote(snapshot, raw)
        self._versions[run_id] = snapshot.version
        self._times[run_id] = (self._times[run_id][0], self.clock())
        self._set_due(snapshot)

    async def due_runs(self, *, due_before: int, limit: int) -> list[str]:
        due = sorted((at, run_id) for run_id, at in self._due.items() if at <= due_before)
        return [run_id for _, run_id in due[:limit]]

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
        infos = (
            run_info(Snapshot.from_json(raw), created_at=created, updated_at=updated)
            for run_id, raw in self._runs.items()
            for created, updated in [self._times[run_id]]
        )
        return select_runs(
            infos,
            workflow=workflow,
            status=status,
            updated_before=updated_before,
            updated_after=updated_after,
            after=after,
            limit=limit,
        )

    async def archive_results(
        self, run_id: str, node_id: str, first_index: int, results: Sequence[NodeResult]
    ) -> None:
        kept = self._archive.setdefault((run_id, node_id), {})
        for offset, result in enumerate(results):
            kept.setdefault(first_index + offset, result.to_json())

    async def archived_results(self, run_id: str, node_id: str) -> list[NodeResult]:
        kept = self._archive.get((run_id, node_id), {})
        return [decode_result(run_id, kept[i], "the memory store") for i in sorted(kept)]

    def run_ids(self) -> list[str]:
        """Every stored run id."""
        return list(self._runs)


class MemoryScheduler(Scheduler):
    """Holds messages in a heap ordered by due time; deduplicates by ``key``.

    Nothing is delivered by itself: call :meth:`pop_due` and hand the messages to a
    dispatcher, as a worker loop would. It remembers every key and every schedule call (in
    :attr:`scheduled`, for assertions): meant for tests and short-lived processes.
    """

    def __init__(
        self, *, clock: Callable[[], int] = now_ms, max_delay_ms: int = 30 * 24 * 3600 * 1000
    ) -> None:
        self.clock = clock
        self._max_delay_ms = max_delay_ms
        self._heap: list[tuple[int, int, DispatchMessage]] = []
        self._keys: set[str] = set()
        self._seq = itertools.count()
        self.scheduled: list[tuple[DispatchMessage, int | None]] = []

    @property
    def max_delay_ms(self) -> int:
        return self._max_delay_ms

    async def schedule(self, message: DispatchMessage, *, at: int | None = None) -> None:
        now = self.clock()
        if at is not None and at - now > self._max_delay_ms:
            raise ValueError(f"at is {at - now} ms away, over the maximum of {self._max_delay_ms}")
        self.scheduled.append((message, at))
        if message.key in self._keys:
            return
        self._keys.add(message.key)
        heapq.heappush(self._heap, (at if at is not None else now, next(self._seq), message))

    def pending(self) -> list[tuple[int, DispatchMessage]]:
        """Every undelivered message with its due time, soonest first."""
        return [(due, msg) for due, _, msg in sorted(self._heap)]

    def next_due(self) -> int | None:
        """The due time of the soonest message, or None when there is none."""
        return self._heap[0][0] if self._heap else None

    def pop_due(self) -> list[DispatchMessage]:
        """Remove and return every message that is due now, soonest first."""
        now = self.clock()
        due: list[DispatchMessage] = []
        while self._heap and self._heap[0][0] <= now:
            due.append(heapq.heappop(self._heap)[2])
        return due
