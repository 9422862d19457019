"""A store that finds the text it wrote hands out the snapshot it wrote, without decoding it.

The memory store and the SQL store (here on SQLite, two stores on one file as two writers)
remember what they last wrote for each run; any other text is decoded.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from refluxo.core import MemoryStateStore, NodeResult, Snapshot, StateStore
from refluxo.core import model as model_module
from refluxo.core.model import WHOLE_PROOF_BELOW, WrittenSnapshots
from refluxo.local import SQLiteStateStore


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every snapshot decoded from JSON text, by run id, in order."""
    seen: list[str] = []
    original = model_module.Snapshot.from_json.__func__  # type: ignore[attr-defined]

    def counting(cls: type[Snapshot], raw: str | bytes) -> Snapshot:
        snapshot: Snapshot = original(cls, raw)
        seen.append(snapshot.run_id)
        return snapshot

    monkeypatch.setattr(model_module.Snapshot, "from_json", classmethod(counting))
    yield seen


StoreMaker = Callable[[], StateStore]


@pytest.fixture(params=["memory", "sqlite"])
async def stores(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StoreMaker]:
    """Makes stores over one storage: each is another writer of the same runs."""
    if request.param == "memory":
        shared = MemoryStateStore()
        yield lambda: shared
        return
    opened: list[SQLiteStateStore] = []

    def make() -> StateStore:
        opened.append(SQLiteStateStore(tmp_path / "runs.db"))
        return opened[-1]

    yield make
    for store in opened:
        store.close()


def stepped(snap: Snapshot, n: int, output: Any = None) -> Snapshot:
    result = NodeResult(output={"n": n} if output is None else output, timestamp=1000 + n)
    context = {**snap.context, "a": [*snap.context.get("a", []), result]}
    return snap.model_copy(update={"context": context, "version": snap.version + 1})


def first() -> Snapshot:
    return Snapshot(run_id="r1", status="active", current_node_id="a", input={"x": [1]})


async def test_a_load_after_this_stores_save_returns_an_equal_snapshot_without_decoding(
    stores: StoreMaker, decodes: list[str]
) -> None:
    store = stores()
    snap = first()
    assert await store.create(snap)
    assert await store.load("r1") == snap
    for n in range(1, 4):
        new = stepped(snap, n)
        await store.save(new, expected_version=snap.version)
        assert await store.load("r1") == new
        snap = new
    assert decodes == []


async def test_a_load_after_another_writers_save_decodes(
    stores: StoreMaker, decodes: list[str]
) -> None:
    one, other = stores(), stores()
    snap = first()
    assert await one.create(snap)
    theirs = stepped(Snapshot.from_json(snap.to_json()), 1)
    decodes.clear()
    await other.save(theirs, expected_version=0)
    loaded = await one.load("r1")
    assert loaded == theirs and loaded.version == 1
    assert decodes == ([] if one is other else ["r1"])


async def test_a_refused_save_leaves_the_load_as_the_stored_snapshot(
    stores: StoreMaker,
) -> None:
    store = stores()
    snap = first()
    assert await store.create(snap)
    with pytest.raises(Exception, match="version"):
        await store.save(stepped(snap, 1), expected_version=7)
    assert await store.load("r1") == snap


async def test_changing_a_loaded_or_saved_snapshots_containers_never_reaches_the_store(
    stores: StoreMaker,
) -> None:
    store = stores()
    saved = stepped(first(), 1)
    assert await store.create(saved)
    expected = Snapshot.from_json(saved.to_json())
    saved.context["a"].append(NodeResult(output="late", timestamp=9))
    saved.metadata["x"] = "late"
    loaded = await store.load("r1")
    loaded.context["a"].clear()
    loaded.context["b"] = []
    loaded.metadata["y"] = 1
    loaded.input["x"] = "changed"
    loaded.status = "failed"
    assert await store.load("r1") == expected


@pytest.mark.parametrize("pad", [0, WHOLE_PROOF_BELOW], ids=["small", "large"])
async def test_a_snapshot_that_would_not_decode_as_itself_is_decoded_on_load(
    stores: StoreMaker, decodes: list[str], pad: int
) -> None:
    store = stores()
    snap = Snapshot(
        run_id="r1",
        status="active",
        current_node_id="a",
        metadata={"pair": (1, 2)},
        input="x" * pad,
    )
    assert await store.create(snap)
    loaded = await store.load("r1")
    assert loaded.metadata == {"pair": [1, 2]} and decodes == ["r1"]
    odd = stepped(loaded, 1, output=(3, 4))
    await store.save(odd, expected_version=0)
    assert (await store.load("r1")).context["a"][0].output == [3, 4]
    assert decodes == ["r1", "r1"]


async def test_a_result_that_reads_back_as_another_value_is_never_handed_out_as_it_was(
    stores: StoreMaker, decodes: list[str]
) -> None:
    store = stores()
    small = stepped(first(), 1, output={"pair": (1, 2)})
    small.to_json()  # proven whole, not asked whether it decodes as itself
    grown = stepped(small, 2, output={"pad": "x" * WHOLE_PROOF_BELOW})
    assert await store.create(grown)
    loaded = await store.load("r1")
    assert loaded.context["a"][0].output == {"pair": [1, 2]} and decodes == ["r1"]


def test_what_is_remembered_is_bounded_in_runs_and_in_characters() -> None:
    written = WrittenSnapshots(max_runs=2, max_chars=3000)
    texts = {}
    for i in range(3):
        snap = Snapshot(run_id=f"r{i}", status="active", current_node_id="a")
        texts[snap.run_id] = snap.to_json()
        written.wrote(snap, texts[snap.run_id])
    assert [written.read(r, texts[r]) is not None for r in ("r0", "r1", "r2")] == [
        False,
        True,
        True,
    ]
    big = Snapshot(run_id="big", status="active", current_node_id="a", input="x" * 2500)
    big_text = big.to_json()
    written.wrote(big, big_text)
    assert written.read("big", big_text) == big
    assert written.read("r1", texts["r1"]) is None
    huge = Snapshot(run_id="huge", status="active", current_node_id="a", input="x" * 4000)
    huge_text = huge.to_json()
    written.wrote(huge, huge_text)
    assert written.read("huge", huge_text) is None
