from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from refluxo.core.memory import MemoryStateStore
from refluxo.core.ports import StateStore
from tests.conftest import FakeClock


def _sqlite(tmp_path: Path, clock: FakeClock) -> StateStore | None:
    try:
        from refluxo.local import SQLiteStateStore
    except ImportError:  # pragma: no cover - the embedded adapter ships with the kit
        return None
    return SQLiteStateStore(tmp_path / "runs.db", clock=clock)


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock) -> Iterator[StateStore]:
    if request.param == "memory":
        yield MemoryStateStore(clock=clock)
        return
    store = _sqlite(tmp_path, clock)
    if store is None:
        pytest.fail("refluxo.local is not importable")
    yield store
    close = getattr(store, "close", None)
    if close is not None:
        close()
