"""The contract of :class:`refluxo.core.ports.ResultArchive`, for stores that archive results.

An adapter's test module subclasses :class:`ResultArchiveContract` and defines the ``store``
fixture (a fresh, empty store that is also a ``ResultArchive``), as for the state store
contract; a store class usually subclasses all three mixins with one ``store`` fixture.

Each test is named after one sentence of the port's docstring.
"""

from __future__ import annotations

from typing import Any

from refluxo.core.model import NodeResult
from refluxo.core.ports import ResultArchive


def results(first: int, count: int) -> list[NodeResult]:
    """``count`` results whose outputs are their indexes, from ``first`` on."""
    return [
        NodeResult(output={"i": i}, timestamp=1_700_000_000_000 + i)
        for i in range(first, first + count)
    ]


class ResultArchiveContract:
    """Mixin: every test takes the adapter's ``store`` fixture, which must be a ResultArchive."""

    async def test_archived_results_are_kept_as_numbered_and_returned_oldest_first(
        self, store: Any
    ) -> None:
        assert isinstance(store, ResultArchive)
        await store.archive_results("run-1", "tick", 3, results(3, 2))
        await store.archive_results("run-1", "tick", 0, results(0, 3))
        kept = await store.archived_results("run-1", "tick")
        assert [r.output for r in kept] == [{"i": i} for i in range(5)]

    async def test_archiving_is_idempotent_an_index_kept_already_is_left_as_it_is(
        self, store: Any
    ) -> None:
        await store.archive_results("run-1", "tick", 0, results(0, 2))
        again = [NodeResult(output="changed", timestamp=1), *results(2, 1)]
        await store.archive_results("run-1", "tick", 1, again)
        kept = await store.archived_results("run-1", "tick")
        assert [r.output for r in kept] == [{"i": 0}, {"i": 1}, {"i": 2}]

    async def test_archived_results_are_empty_when_none_were_kept(self, store: Any) -> None:
        assert await store.archived_results("run-1", "tick") == []
        await store.archive_results("run-1", "tick", 0, results(0, 1))
        assert await store.archived_results("run-1", "other") == []
        assert await store.archived_results("run-2", "tick") == []
