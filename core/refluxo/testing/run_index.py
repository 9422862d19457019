"""The contract of :class:`refluxo.core.ports.RunIndex`, for stores that list runs.

An adapter's test module subclasses :class:`RunIndexContract` and defines ``make_store``, a
fixture that returns a function building a fresh, empty store on a given clock (epoch ms), so
the tests control every write's time; ``run_index_capabilities`` says what the store keeps
beyond the required fields. Each test is named after one sentence of the port's
docstring.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from refluxo.core.ports import RunIndex, StateStore

from .clock import FakeClock
from .store import snapshot


def _run(run_id: str, status: str, workflow: str, version: int = 0, **fields: Any) -> Any:
    return snapshot(
        run_id,
        status=status,
        definition={"name": workflow, "hash": "0123456789abcdef"},
        version=version,
        **fields,
    )


class RunIndexContract:
    @pytest.fixture
    def make_store(self) -> Callable[[Callable[[], int]], Any]:
        raise NotImplementedError("a RunIndexContract subclass must define 'make_store'")

    @pytest.fixture
    def run_index_capabilities(self) -> frozenset[str]:
        """``created_at``: the store keeps when each run was created."""
        return frozenset({"created_at"})

    @pytest.fixture
    async def listed(self, make_store: Callable[[Callable[[], int]], Any]) -> tuple[Any, Any]:
        clock = FakeClock()
        store: Any = make_store(clock)
        assert isinstance(store, RunIndex) and isinstance(store, StateStore)
        # a (t0), b (t0+1), c (t0+1), d (t0+2); then a is saved again at t0+3, failed.
        await store.create(_run("a", "active", "orders"))
        clock.advance(1)
        await store.create(_run("b", "paused", "billing"))
        await store.create(_run("c", "active", "orders"))
        clock.advance(1)
        await store.create(_run("d", "completed", "orders"))
        clock.advance(1)
        failed = _run("a", "failed", "orders", version=1, metadata={"failedReason": "boom"})
        await store.save(failed, expected_version=0)
        return store, clock

    async def test_runs_are_ordered_by_their_last_write_newest_first_ties_by_run_id(
        self, listed: tuple[Any, Any], run_index_capabilities: frozenset[str]
    ) -> None:
        store, clock = listed
        found = await store.find_runs()
        assert [r.run_id for r in found] == ["a", "d", "b", "c"]
        a = found[0]
        assert (a.workflow, a.status, a.version, a.failed_reason) == (
            "orders",
            "failed",
            1,
            "boom",
        )
        assert a.updated_at == clock.now
        created = clock.now - 3 if "created_at" in run_index_capabilities else None
        assert a.created_at == created
        assert found[2].current_node == "start" and found[2].failed_reason is None

    async def test_up_to_limit_runs_that_match_every_filter_given(
        self, listed: tuple[Any, Any]
    ) -> None:
        store, clock = listed

        def ids(runs: list[Any]) -> list[str]:
            return [r.run_id for r in runs]

        assert ids(await store.find_runs(workflow="orders")) == ["a", "d", "c"]
        assert ids(await store.find_runs(status="active")) == ["c"]
        assert ids(await store.find_runs(workflow="orders", status="completed")) == ["d"]
        assert ids(await store.find_runs(workflow="nope")) == []
        assert ids(await store.find_runs(updated_before=clock.now - 1)) == ["b", "c"]
        assert ids(await store.find_runs(updated_after=clock.now - 1)) == ["a", "d"]
        assert ids(await store.find_runs(limit=2)) == ["a", "d"]

    async def test_a_page_that_starts_after_a_position_never_repeats_or_skips_a_run(
        self, listed: tuple[Any, Any]
    ) -> None:
        store, _ = listed
        seen: list[str] = []
        after = None
        for _ in range(5):
            page = await store.find_runs(after=after, limit=1)
            if not page:
                break
            seen.extend(r.run_id for r in page)
            after = (page[-1].updated_at, page[-1].run_id)
        assert seen == ["a", "d", "b", "c"]
        b = (await store.find_runs(status="paused"))[0]
        rest = await store.find_runs(workflow="orders", after=(b.updated_at, b.run_id))
        assert [r.run_id for r in rest] == ["c"]
