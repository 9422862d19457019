"""Long runs stay flat: a retention limit bounds the snapshot whatever the run's length."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from refluxo.core import DefinitionError, NodeResult, Snapshot
from refluxo.core.dispatcher import DEFAULT_RETENTION, RunService
from refluxo.core.memory import MemoryScheduler, MemoryStateStore
from refluxo.core.ports import ResultArchive, StateStore
from refluxo.testing import run_to_end
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
    sizes = await run_loop(store, loop_workflow(400, retention=None))
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
        loop_workflow(3, retention=None, archive=True)


async def test_archiving_is_idempotent() -> None:
    store = MemoryStateStore()
    first = NodeResult(output=1, timestamp=1)
    await store.archive_results("r", "n", 0, [first])
    await store.archive_results("r", "n", 0, [NodeResult(output=2, timestamp=2)])
    assert [r.output for r in await store.archived_results("r", "n")] == [1]


async def test_a_workflow_that_sets_nothing_keeps_its_snapshots_bounded(store: StateStore) -> None:
    iterations = 4 * DEFAULT_RETENTION
    sizes = await run_loop(store, loop_workflow(iterations), every=DEFAULT_RETENTION)
    snap = await store.load("loop-1")
    assert snap.status == "completed"
    assert snap.counts == {"tick": iterations, "end": 1}
    assert len(snap.context["tick"]) == DEFAULT_RETENTION
    assert snap.context["end"][0].output == {"ran": iterations, "last": iterations - 1}
    assert sizes[iterations] <= sizes[DEFAULT_RETENTION] * 1.05  # flat once the limit is reached


async def test_by_default_trimmed_results_go_to_the_stores_archive(store: StateStore) -> None:
    assert isinstance(store, ResultArchive)
    iterations = DEFAULT_RETENTION + 20
    await run_loop(store, loop_workflow(iterations))
    snap = await store.load("loop-1")
    archived = await store.archived_results("loop-1", "tick")
    assert len(snap.context["tick"]) == DEFAULT_RETENTION
    history = [r.output["i"] for r in [*archived, *snap.context["tick"]]]
    assert history == list(range(iterations))


async def test_by_default_a_store_without_an_archive_drops_trimmed_results() -> None:
    store = NoArchiveStore()
    iterations = DEFAULT_RETENTION + 2
    await run_loop(store, loop_workflow(iterations))  # type: ignore[arg-type]
    snap = await store.load("loop-1")
    assert snap.status == "completed"
    assert [r.output["i"] for r in snap.context["tick"]] == list(range(2, iterations))


@pytest.mark.parametrize("reads", ["{{ tick.all }}", "{{ tick.first.data.i }}"])
async def test_an_expression_reaching_a_trimmed_result_fails_the_node_without_retries(
    reads: str,
) -> None:
    store = MemoryStateStore()
    workflow = loop_workflow(5, retention=2, end_data={"seen": reads}, end_retries=3)
    await run_loop(store, workflow)
    snap = await store.load("loop-1")
    assert snap.status == "failed"
    reason = snap.metadata["failedReason"]
    assert "needs results the run no longer holds" in reason
    assert "retention" in reason
    assert [r.attempt for r in snap.context["end"]] == [1]  # not retried


async def test_an_expression_reading_every_result_works_while_none_were_trimmed() -> None:
    store = MemoryStateStore()
    workflow = loop_workflow(3, retention=3, end_data={"seen": "{{ len(tick.all) }}"})
    await run_loop(store, workflow)
    snap = await store.load("loop-1")
    assert snap.status == "completed"
    assert snap.context["end"][0].output == {"seen": 3}


async def test_a_run_with_its_full_history_continues_under_the_default_retention() -> None:
    """A snapshot holding every result (a run started with retention=None, or one the
    TypeScript engine wrote) loads under the default; its trimmed results go to the archive."""
    store = MemoryStateStore()
    scheduler = MemoryScheduler()
    iterations = DEFAULT_RETENTION + 50
    full = RunService(
        [loop_workflow(iterations, retention=None)], store, scheduler, delivery_budget_ms=0
    )
    await full.start("loop", run_id="loop-1")
    for _ in range(DEFAULT_RETENTION + 20):
        for message in scheduler.pop_due():
            assert (await full.dispatch(message)).outcome == "stepped"
    assert len((await store.load("loop-1")).context["tick"]) == DEFAULT_RETENTION + 20
    bounded = RunService([loop_workflow(iterations)], store, scheduler)
    await run_to_end(bounded, scheduler, max_messages=10**6)
    snap = await store.load("loop-1")
    assert snap.status == "completed"
    assert snap.counts == {"tick": iterations, "end": 1}
    assert len(snap.context["tick"]) == DEFAULT_RETENTION
    archived = await store.archived_results("loop-1", "tick")
    history = [r.output["i"] for r in [*archived, *snap.context["tick"]]]
    assert history == list(range(iterations))
