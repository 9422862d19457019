"""The contract of :class:`refluxo.core.ports.StateStore`, written once, passed by every adapter.

An adapter's test module subclasses :class:`StateStoreContract` and defines its fixtures
(fsspec's ``tests/abstract`` style)::

    class TestSQLiteStateStore(StateStoreContract):
        @pytest.fixture
        def store(self, tmp_path): ...
        @pytest.fixture
        def store_capabilities(self): return frozenset({"atomic_compare_and_set", "size_limit"})
        @pytest.fixture
        def store_max_bytes(self): return 10 * 1024 * 1024

Fixtures an adapter defines:

* ``store``: a fresh, empty store (async fixtures are fine).
* ``store_capabilities``: a frozenset of names from :data:`STORE_CAPABILITIES`. A test that
  needs a capability the adapter does not declare is skipped, naming it; nothing asks
  ``isinstance``.
* ``store_max_bytes``: the store's size limit in bytes of snapshot JSON; only when
  ``"size_limit"`` is declared.

Each test is named after one sentence of the port's docstrings.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from refluxo.core import (
    DefinitionRef,
    NodeResult,
    NotStrictJson,
    PayloadTooLarge,
    RunNotFound,
    Snapshot,
    VersionConflict,
)
from refluxo.core.model import FINISH_HEADROOM_BYTES
from refluxo.core.ports import StateStore

STORE_CAPABILITIES: dict[str, str] = {
    "atomic_compare_and_set": (
        "create-if-absent and save-if-version are atomic, so of concurrent writers exactly one "
        "wins (a store that checks then writes in two calls, like Workers KV, cannot)"
    ),
    "size_limit": (
        "snapshots over a size limit (the store_max_bytes fixture) are refused with PayloadTooLarge"
    ),
}
"""Every capability a store may declare, with what declaring it promises."""

# How many writers race in the concurrency tests: enough to interleave on any backend whose
# calls really await I/O, few enough to stay fast against an emulator.
RACERS = 16


def require(declared: frozenset[str], capability: str) -> None:
    """Skip the calling test unless the adapter declares ``capability``.

    Fails instead when the adapter declares a name the contract does not know (a typo would
    otherwise skip tests silently).
    """
    unknown = set(declared) - STORE_CAPABILITIES.keys()
    if unknown:
        pytest.fail(f"store_capabilities names unknown capabilities: {sorted(unknown)}")
    if capability not in declared:
        pytest.skip(f"the store does not declare {capability!r}: {STORE_CAPABILITIES[capability]}")


def snapshot(run_id: str = "run-1", *, version: int = 0, **fields: Any) -> Snapshot:
    """A small active snapshot; ``fields`` override or add (wire or Python names)."""
    data: dict[str, Any] = {
        "run_id": run_id,
        "status": "active",
        "current_node_id": "start",
        "version": version,
    }
    data.update(fields)
    return Snapshot.model_validate(data)


def wire(snap: Snapshot) -> Any:
    """What a snapshot means on the wire: its JSON, parsed, so key order does not matter."""
    return json.loads(snap.to_json())


def padded(run_id: str, size: int, *, version: int = 0, status: str = "failed") -> Snapshot:
    """A snapshot whose JSON is exactly ``size`` bytes (ASCII padding in ``metadata``).

    Finished by default: a finished run may use the whole limit (see ``unfinished_limit``).
    """
    fields: dict[str, Any] = {"version": version, "status": status}
    base = len(snapshot(run_id, metadata={"pad": ""}, **fields).to_json().encode())
    if size < base:
        raise ValueError(f"cannot pad a snapshot to {size} bytes; it needs {base}")
    snap = snapshot(run_id, metadata={"pad": "x" * (size - base)}, **fields)
    assert len(snap.to_json().encode()) == size
    return snap


def rich_snapshot(run_id: str) -> Snapshot:
    """A snapshot that exercises the corners of JSON a store could mangle."""
    return Snapshot.model_validate(
        {
            "workflowId": run_id,
            "status": "paused",
            "currentNodeId": "wait-ü",
            "version": 3,
            "context": {
                "start": [
                    {"output": None, "timestamp": 1_700_000_000_000, "attempt": 1},
                    {
                        "output": [[1, [2, [3, []]]], [[]], [[None, "a"]]],
                        "timestamp": 1_700_000_000_001,
                        "attempt": 2,
                        "durationMs": 12,
                    },
                ],
                "naïve-节点": [
                    {
                        "output": {
                            "text": 'héllo wörld 你好 🎉 𝄞 \u2028 "quoted" back\\slash \t tab',
                            "empty": "",
                            "floats": [0.1, -2.5, 1e300],
                            "nested": {"a": {"b": {"c": [True, False, None]}}},
                        },
                        "timestamp": 1_700_000_000_002,
                        "error": "Error: ✗ failed",
                    }
                ],
            },
            "metadata": {"pausedReason": "Waiting… ⏳", "labels": [], "obj": {}},
            "wait": {"kind": "event", "event": "approve", "until": 1_700_000_360_000},
            "definition": {"name": "order-flow", "hash": "0123456789abcdef"},
            "input": [[["deep"]], [], None],
            "inbox": [{"payload": None, "receivedAt": 1_700_000_000_003}],
            "counts": {"start": 2},
            "tenant": {"id": 7, "région": "eu"},
            "futureField": None,
        }
    )


class StateStoreContract:
    """Mixin of contract tests for a :class:`StateStore`; see the module docstring."""

    # Fixtures each adapter must define. --------------------------------------------------

    @pytest.fixture
    def store(self) -> StateStore:
        """A fresh, empty store."""
        raise NotImplementedError("a StateStoreContract subclass must define the 'store' fixture")

    @pytest.fixture
    def store_capabilities(self) -> frozenset[str]:
        """The names from STORE_CAPABILITIES that the store honours."""
        raise NotImplementedError(
            "a StateStoreContract subclass must define 'store_capabilities' (a frozenset)"
        )

    @pytest.fixture
    def store_max_bytes(self) -> int:
        """The store's size limit, in bytes of snapshot JSON (with "size_limit" only)."""
        raise NotImplementedError(
            "a StateStoreContract subclass declaring 'size_limit' must define 'store_max_bytes'"
        )

    # "Stores snapshots by run id, with optimistic locking on Snapshot.version." -----------

    @pytest.mark.parametrize("run_id", ["run-1", "Run_2.a:b", "r" * 128])
    async def test_stores_snapshots_by_run_id(self, store: StateStore, run_id: str) -> None:
        snap = snapshot(run_id, metadata={"mine": run_id})
        # Neighbours that a store folding case or truncating ids would confuse with run_id;
        # none is longer, since 128 characters is as long as ids get.
        others = [run_id.swapcase(), run_id[:-1], run_id[:-1] + ("y" if run_id[-1] != "y" else "z")]
        assert await store.create(snap) is True
        for other in others:
            assert await store.create(snapshot(other, metadata={"mine": other})) is True
        loaded = await store.load(run_id)
        assert loaded.run_id == run_id
        assert wire(loaded) == wire(snap)
        for other in others:
            assert (await store.load(other)).metadata == {"mine": other}

    async def test_stores_snapshots_with_optimistic_locking_on_snapshot_version(
        self, store: StateStore
    ) -> None:
        # The stored version is the snapshot's own, not a counter the store keeps.
        await store.create(snapshot(version=5))
        await store.save(snapshot(version=9, status="paused"), expected_version=5)
        with pytest.raises(VersionConflict):
            await store.save(snapshot(version=10), expected_version=6)
        await store.save(snapshot(version=10, status="completed"), expected_version=9)
        loaded = await store.load("run-1")
        assert (loaded.version, loaded.status) == (10, "completed")

    # create ----------------------------------------------------------------------------

    async def test_create_stores_a_new_run_only_if_no_run_with_its_id_exists(
        self, store: StateStore
    ) -> None:
        first = snapshot(metadata={"who": "first"})
        assert await store.create(first) is True
        assert wire(await store.load("run-1")) == wire(first)

    async def test_create_returns_false_when_a_run_with_that_id_already_existed_and_writes_nothing(
        self, store: StateStore
    ) -> None:
        first = snapshot(metadata={"who": "first"})
        await store.create(first)
        await store.save(snapshot(version=1, metadata={"who": "saved"}), expected_version=0)
        again = snapshot(version=0, status="failed", metadata={"who": "second"})
        assert await store.create(again) is False
        loaded = await store.load("run-1")
        assert (loaded.version, loaded.status, loaded.metadata) == (1, "active", {"who": "saved"})

    async def test_create_stores_a_new_run_only_if_no_run_with_its_id_exists_even_when_concurrent(
        self, store: StateStore, store_capabilities: frozenset[str]
    ) -> None:
        require(store_capabilities, "atomic_compare_and_set")
        racers = [snapshot(metadata={"racer": i}) for i in range(RACERS)]
        created = await asyncio.gather(*(store.create(s) for s in racers))
        assert created.count(True) == 1
        winner = racers[created.index(True)]
        assert wire(await store.load("run-1")) == wire(winner)

    async def test_create_over_the_size_limit_raises_payload_too_large_and_writes_nothing(
        self, store: StateStore, store_capabilities: frozenset[str], request: pytest.FixtureRequest
    ) -> None:
        require(store_capabilities, "size_limit")
        limit: int = request.getfixturevalue("store_max_bytes")
        with pytest.raises(PayloadTooLarge) as raised:
            await store.create(padded("run-1", limit + 1))
        assert raised.value.limit == limit
        with pytest.raises(RunNotFound):
            await store.load("run-1")
        # Refusing the big one does not spoil the id for a snapshot that fits.
        assert await store.create(padded("run-1", limit)) is True

    # load ------------------------------------------------------------------------------

    @pytest.mark.parametrize("via", ["create", "save"])
    async def test_load_returns_the_stored_snapshot_of_run_id_losslessly(
        self, store: StateStore, via: str
    ) -> None:
        snap = rich_snapshot("run-1")
        if via == "create":
            await store.create(snap)
        else:
            await store.create(snapshot(version=snap.version))
            await store.save(snap, expected_version=snap.version)
        loaded = await store.load("run-1")
        assert wire(loaded) == wire(snap)
        # Unknown fields are still there, and null outputs are null, not missing.
        assert loaded.model_extra == {"tenant": {"id": 7, "région": "eu"}, "futureField": None}
        assert loaded.context["start"][0] == NodeResult(output=None, timestamp=1_700_000_000_000)
        assert "output" in wire(loaded)["context"]["start"][0]
        assert loaded.definition == DefinitionRef(name="order-flow", hash="0123456789abcdef")

    async def test_load_of_an_unknown_run_id_raises_run_not_found(self, store: StateStore) -> None:
        await store.create(snapshot("run-1"))
        with pytest.raises(RunNotFound) as raised:
            await store.load("run-2")
        assert raised.value.run_id == "run-2"
        # Callers that know only the built-ins catch it too.
        with pytest.raises(LookupError):
            await store.load("RUN-1")

    # save ------------------------------------------------------------------------------

    async def test_save_replaces_the_stored_run_with_snapshot_if_its_stored_version_is_expected(
        self, store: StateStore
    ) -> None:
        await store.create(snapshot())
        step = snapshot(version=1, status="paused", metadata={"step": 1})
        await store.save(step, expected_version=0)
        assert wire(await store.load("run-1")) == wire(step)
        # Replaced, not merged: fields the new snapshot lacks are gone.
        final = snapshot(version=2, status="completed", current_node_id=None)
        await store.save(final, expected_version=1)
        assert wire(await store.load("run-1")) == wire(final)

    async def test_save_with_a_stale_expected_version_raises_version_conflict_and_writes_nothing(
        self, store: StateStore
    ) -> None:
        await store.create(snapshot())
        await store.save(snapshot(version=1, metadata={"who": "winner"}), expected_version=0)
        with pytest.raises(VersionConflict) as raised:
            await store.save(snapshot(version=1, metadata={"who": "loser"}), expected_version=0)
        assert raised.value.run_id == "run-1"
        assert raised.value.expected == 0
        assert raised.value.actual in (1, None)  # None: the backend could not say.
        loaded = await store.load("run-1")
        assert (loaded.version, loaded.metadata) == (1, {"who": "winner"})
        with pytest.raises(VersionConflict):  # Ahead of the stored version is stale too.
            await store.save(snapshot(version=3), expected_version=2)
        assert (await store.load("run-1")).version == 1

    async def test_save_of_an_unknown_run_raises_run_not_found_and_writes_nothing(
        self, store: StateStore
    ) -> None:
        with pytest.raises(RunNotFound) as raised:
            await store.save(snapshot("ghost", version=1), expected_version=0)
        assert raised.value.run_id == "ghost"
        with pytest.raises(RunNotFound):  # save never creates (no upsert).
            await store.load("ghost")
        assert await store.create(snapshot("ghost")) is True

    async def test_of_two_saves_that_expect_the_same_version_at_most_one_succeeds(
        self, store: StateStore
    ) -> None:
        await store.create(snapshot())
        await store.save(snapshot(version=1, metadata={"who": "a"}), expected_version=0)
        with pytest.raises(VersionConflict):
            await store.save(snapshot(version=1, metadata={"who": "b"}), expected_version=0)
        assert (await store.load("run-1")).metadata == {"who": "a"}

    async def test_of_two_saves_that_expect_the_same_version_at_most_one_succeeds_when_concurrent(
        self, store: StateStore, store_capabilities: frozenset[str]
    ) -> None:
        require(store_capabilities, "atomic_compare_and_set")
        await store.create(snapshot())
        racers = [snapshot(version=1, metadata={"racer": i}) for i in range(RACERS)]

        async def save(snap: Snapshot) -> bool:
            try:
                await store.save(snap, expected_version=0)
            except VersionConflict:
                return False
            return True

        won = await asyncio.gather(*(save(s) for s in racers))
        # Nobody else touches the run, so one must win: "at most" with no livelock.
        assert won.count(True) == 1
        assert wire(await store.load("run-1")) == wire(racers[won.index(True)])

    async def test_a_snapshot_that_would_not_read_back_is_refused_and_nothing_is_written(
        self, store: StateStore
    ) -> None:
        before = snapshot(input=[1])
        assert await store.create(before) is True
        nested: Any = "bottom"
        for _ in range(250):
            nested = [nested]
        for bad in (nested, {1: "one", "1": "uno"}, "\ud800", float("nan"), float("inf")):
            with pytest.raises(NotStrictJson):
                await store.save(
                    before.model_copy(update={"input": bad, "version": 1}), expected_version=0
                )
            with pytest.raises(NotStrictJson):
                await store.create(snapshot("run-2", input=bad))
        assert wire(await store.load("run-1")) == wire(before)
        with pytest.raises(RunNotFound):
            await store.load("run-2")

    async def test_a_run_not_finished_leaves_room_to_fail_or_cancel_it(
        self, store: StateStore, store_capabilities: frozenset[str], request: pytest.FixtureRequest
    ) -> None:
        require(store_capabilities, "size_limit")
        limit: int = request.getfixturevalue("store_max_bytes")
        room = min(FINISH_HEADROOM_BYTES, limit // 4)
        with pytest.raises(PayloadTooLarge) as raised:
            await store.create(padded("run-1", limit - room + 1, status="active"))
        assert raised.value.limit == limit - room
        active = padded("run-1", limit - room, status="active")
        assert await store.create(active) is True
        # The run that fit can always be failed with a reason of any length it may get.
        failed = active.model_copy(
            update={
                "status": "failed",
                "version": 1,
                "metadata": {**active.metadata, "failedReason": "é" * 1000, "cancelled": True},
            }
        )
        await store.save(failed, expected_version=0)
        assert wire(await store.load("run-1")) == wire(failed)

    async def test_save_over_the_size_limit_raises_payload_too_large_and_writes_nothing(
        self, store: StateStore, store_capabilities: frozenset[str], request: pytest.FixtureRequest
    ) -> None:
        require(store_capabilities, "size_limit")
        limit: int = request.getfixturevalue("store_max_bytes")
        before = snapshot(metadata={"small": True})
        await store.create(before)
        with pytest.raises(PayloadTooLarge):
            await store.save(padded("run-1", limit + 1, version=1), expected_version=0)
        assert wire(await store.load("run-1")) == wire(before)
        # A snapshot of exactly the limit fits, and the refused save did not bump the version.
        at_limit = padded("run-1", limit, version=1)
        await store.save(at_limit, expected_version=0)
        assert wire(await store.load("run-1")) == wire(at_limit)
