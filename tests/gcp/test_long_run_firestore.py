"""A 10,000-step loop on the Firestore emulator: the document stays far under the 1 MiB limit."""

from __future__ import annotations

from typing import Any

from refluxo.gcp import FirestoreStateStore
from tests.dispatcher.longrun import loop_workflow, run_loop

ITERATIONS = 10_000


async def test_a_10000_step_loop_completes_on_firestore_with_a_bounded_snapshot(
    firestore_client: Any,
) -> None:
    store = FirestoreStateStore(firestore_client, collection="long_runs")
    sizes = await run_loop(store, loop_workflow(ITERATIONS, retention=5), every=500)
    snap = await store.load("loop-1")
    assert snap.status == "completed"
    assert snap.counts == {"tick": ITERATIONS, "end": 1}
    assert snap.context["end"][0].output == {"ran": ITERATIONS, "last": ITERATIONS - 1}
    assert max(sizes.values()) < 1024 * 1024
    assert sizes[ITERATIONS] <= sizes[100] * 1.05


async def test_trimmed_results_are_archived_in_a_subcollection(firestore_client: Any) -> None:
    store = FirestoreStateStore(firestore_client, collection="long_runs")
    await run_loop(store, loop_workflow(60, retention=3, archive=True))
    snap = await store.load("loop-1")
    archived = await store.archived_results("loop-1", "tick")
    assert [r.output["i"] for r in [*archived, *snap.context["tick"]]] == list(range(60))
