"""The contract of :class:`refluxo.core.ports.DueRuns`, for stores that can find due runs.

An adapter's test module subclasses :class:`DueRunsContract` and defines the ``store`` fixture
(a fresh, empty store that is a ``DueRuns``), as for the state store contract. Times are set
hours apart from the real clock, so a store keeps its own clock for the save time of active
runs.

Each test is named after one sentence of the port's docstring.
"""

from __future__ import annotations

from typing import Any, cast

import pytest

from refluxo.core.model import now_ms
from refluxo.core.ports import DueRuns

from .store import snapshot

HOUR = 3_600_000


def _retrying(run_id: str, at: int) -> Any:
    return snapshot(
        run_id, status="error", retryState={"nodeId": "start", "attempts": 1, "nextRetryAt": at}
    )


def _sleeping(run_id: str, until: int) -> Any:
    return snapshot(run_id, status="paused", wait={"kind": "sleep", "until": until})


class DueRunsContract:
    @pytest.fixture
    def store(self) -> Any:
        raise NotImplementedError("a DueRunsContract subclass must define the 'store' fixture")

    async def test_due_runs_lists_unfinished_runs_due_by_the_time_given_earliest_first(
        self, store: Any
    ) -> None:
        assert isinstance(cast(object, store), DueRuns)
        now = now_ms()
        await store.create(snapshot("active"))  # due since it was saved: now
        await store.create(_sleeping("sleeping", now + HOUR))
        await store.create(_retrying("retrying", now + 2 * HOUR))
        await store.create(snapshot("waiting", status="paused", wait={"kind": "event"}))
        await store.create(snapshot("paused", status="paused"))
        await store.create(snapshot("completed", status="completed"))
        await store.create(snapshot("failed", status="failed"))

        assert await store.due_runs(due_before=now + 3 * HOUR, limit=10) == [
            "active",
            "sleeping",
            "retrying",
        ]
        assert await store.due_runs(due_before=now + HOUR, limit=10) == ["active", "sleeping"]
        assert await store.due_runs(due_before=now - HOUR, limit=10) == []

    async def test_due_runs_returns_at_most_limit(self, store: Any) -> None:
        now = now_ms()
        for i in range(5):
            await store.create(_sleeping(f"r{i}", now - (5 - i) * HOUR))
        assert await store.due_runs(due_before=now, limit=2) == ["r0", "r1"]

    async def test_a_save_writes_the_new_due_time(self, store: Any) -> None:
        now = now_ms()
        await store.create(_sleeping("r", now - HOUR))
        assert await store.due_runs(due_before=now, limit=10) == ["r"]
        await store.save(
            snapshot("r", version=1, status="completed"), expected_version=0
        )  # finished: never due
        assert await store.due_runs(due_before=now + HOUR, limit=10) == []
        await store.create(snapshot("s", status="paused"))
        await store.save(
            _sleeping("s", now + HOUR).model_copy(update={"version": 1}), expected_version=0
        )
        assert await store.due_runs(due_before=now + 2 * HOUR, limit=10) == ["s"]

    async def test_a_paused_run_with_an_event_it_takes_is_due_since_its_save(
        self, store: Any
    ) -> None:
        now = now_ms()
        event = {"payload": 1, "name": "go", "receivedAt": now}
        await store.create(
            snapshot("takes", status="paused", wait={"kind": "event", "event": "go"}, inbox=[event])
        )
        await store.create(
            snapshot("other", status="paused", wait={"kind": "event", "event": "no"}, inbox=[event])
        )
        assert await store.due_runs(due_before=now + HOUR, limit=10) == ["takes"]
