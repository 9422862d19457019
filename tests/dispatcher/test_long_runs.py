"""Long runs stay flat: a retention limit bounds the snapshot whatever the run's length."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from refluxo.core import DefinitionError, NodeResult, Snapshot
from refluxo.core.dispatcher import RunService
from refluxo.core.memory import MemoryScheduler, MemoryStateStore
from refluxo.core.ports import ResultArchive, StateStore
from tests.conftest import FakeClock

from .conftest import open_store
from .longrun import loop_workflow, run_loop

ITERATIONS = 10_000
MIB = 1024 * 1024


@pytest.fixture(params=["memory", "sqlite"])
async def store(
    request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock
) -> AsyncIterator[StateStore]:
    """Memory and SQLite: the Firestore long runs are in tests/gcp (sampled, they take long)."""
    async with open_store(request.param, request, tmp_path, clock) as opened:
        yield opened


async def test_a_10000_step_loop_completes_with_a_bounded_snapshot(store: StateStore) -> None:
    sizes = await run_loop(store, loop_workflow(ITERATIONS, retention=5))
    snap = await store.load("loop-1")
    assert snap.status == "completed"
    assert snap.counts == {"tick": ITERATIONS, "end": 1}
    assert [r.output["i"] for r in snap.context["tick"]] == list(range(ITERATIONS - 5, ITERATIONS))
    assert snap.context["end"][0].output == {"ran": ITERATIONS, "last": ITERATIONS - 1}
    assert max(sizes.values()) < MIB
    assert sizes[ITERATIONS] <= sizes[100] * 1.05  # flat: step 10,000 writes what step 100 did


async def test_archived_results_keep_the_whole_history_outside_the_snapshot(
    store: StateStore,
) -> None:
    assert isinstance(store, ResultArchive)  # both stores under test keep an archive
    await run_loop(store, loop_workflow(1_000, retention=3, archive=True))
    snap = await store.load("loop-1")
    archived = await store.archived_results("loop-1", "tick")
    history = [r.output["i"] for r in [*archived, *snap.context["tick"]]]
    assert history == list(range(1_000))
    assert len(snap.context["tick"]) == 3


async def test_without_retention_the_snapshot_grows_with_the_run() -> None:
    store = MemoryStateStore()
    sizes = await run_loop(store, loop_workflow(400))
    assert sizes[400] > 3 * sizes[100]  # what retention is for


class NoArchiveStore:
    """A StateStore without the optional archive (delegates to memory)."""

    def __init__(self) -> None:
        self._inner = MemoryStateStore()

    async def create(self, snapshot: Snapshot) -> bool:
        return await self._inner.create(snapshot)

    async def load(self, run_id: str) -> Snapshot:
        return await self._inner.load(run_id)

    async def save(self, snapshot: Snapshot, *, expected_version: int) -> None:
        await self._inner.save(snapshot, expected_version=expected_version)


def test_archiving_needs_a_store_that_archives_and_a_retention() -> None:
    with pytest.raises(DefinitionError, match="keeps no archive"):
        RunService(
            [loop_workflow(3, retention=2, archive=True)], NoArchiveStore(), MemoryScheduler()
        )
    with pytest.raises(DefinitionError, match="needs a retention"):
        loop_workflow(3, archive=True)


async def test_archiving_is_idempotent() -> None:
    store = MemoryStateStore()
    first = NodeResult(output=1, timestamp=1)
    await store.archive_results("r", "n", 0, [first])
    await store.archive_results("r", "n", 0, [NodeResult(output=2, timestamp=2)])
    assert [r.output for r in await store.archived_results("r", "n")] == [1]
