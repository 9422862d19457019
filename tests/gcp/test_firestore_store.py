"""FirestoreStateStore on the real Firestore emulator: the StateStore contract, and more.

Every test gets an emptied emulator database (the ``firestore_client`` fixture resets it).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from typing import Any
from unittest import mock

import pytest
from google.api_core import exceptions as gexc
from google.cloud import firestore
from google.cloud.firestore_v1.async_document import AsyncDocumentReference

from refluxo.core import PayloadTooLarge, RunNotFound, StoreError, VersionConflict
from refluxo.core.model import Snapshot
from refluxo.gcp.store import (
    DEFAULT_MAX_BYTES,
    FIRESTORE_MAX_DOCUMENT_BYTES,
    FirestoreStateStore,
    document_id,
)
from refluxo.testing.archive import ResultArchiveContract
from refluxo.testing.due_runs import DueRunsContract
from refluxo.testing.run_index import RunIndexContract
from refluxo.testing.store import StateStoreContract, padded, snapshot, wire

# Small enough to keep the contract's padded snapshots quick; the real limit is tested below.
CONTRACT_MAX_BYTES = 64 * 1024
COLLECTION = "refluxo_runs"


class TestFirestoreStateStore(StateStoreContract):
    @pytest.fixture
    def store(self, firestore_client: Any) -> FirestoreStateStore:
        return FirestoreStateStore(firestore_client, COLLECTION, max_bytes=CONTRACT_MAX_BYTES)

    @pytest.fixture
    def store_capabilities(self) -> frozenset[str]:
        # create() is a create-if-absent write; save() writes with an update-time precondition.
        return frozenset({"atomic_compare_and_set", "size_limit"})

    @pytest.fixture
    def store_max_bytes(self) -> int:
        return CONTRACT_MAX_BYTES


class TestFirestoreDueRuns(DueRunsContract):
    @pytest.fixture
    def store(self, firestore_client: Any) -> FirestoreStateStore:
        return FirestoreStateStore(firestore_client, COLLECTION)


class TestFirestoreResultArchive(ResultArchiveContract):
    @pytest.fixture
    def store(self, firestore_client: Any) -> FirestoreStateStore:
        return FirestoreStateStore(firestore_client, COLLECTION)


@pytest.fixture
def store(firestore_client: Any) -> FirestoreStateStore:
    return FirestoreStateStore(firestore_client, COLLECTION)


@pytest.fixture
async def second_client(firestore_emulator: Any) -> AsyncIterator[Any]:
    """A second client on the same emulator, as a second function instance would have."""
    with mock.patch.dict(os.environ, firestore_emulator.env):
        client = firestore.AsyncClient(project=firestore_emulator.project)
    try:
        yield client
    finally:
        if client._firestore_api_internal is not None:
            await client._firestore_api.transport.close()


def raw_doc(client: Any, run_id: str) -> Any:
    doc_id = document_id(run_id)
    assert doc_id is not None
    return client.collection(COLLECTION).document(doc_id)


# --------------------------------------------------------------------------- #
# Concurrency
# --------------------------------------------------------------------------- #


async def test_two_invocations_racing_on_one_run_exactly_one_save_wins(
    firestore_client: Any, second_client: Any
) -> None:
    """Two function instances (two clients) load version 0 and save version 1 at once."""
    one = FirestoreStateStore(firestore_client, COLLECTION)
    two = FirestoreStateStore(second_client, COLLECTION)
    await one.create(snapshot("race"))
    loaded = await asyncio.gather(one.load("race"), two.load("race"))
    assert [s.version for s in loaded] == [0, 0]

    async def step(store: FirestoreStateStore, base: Snapshot, who: str) -> str:
        new = base.model_copy(update={"version": base.version + 1, "metadata": {"who": who}})
        await store.save(new, expected_version=base.version)
        return who

    results = await asyncio.gather(
        step(one, loaded[0], "one"), step(two, loaded[1], "two"), return_exceptions=True
    )
    winners = [r for r in results if isinstance(r, str)]
    losers = [r for r in results if isinstance(r, BaseException)]
    assert len(winners) == 1, results
    assert len(losers) == 1 and isinstance(losers[0], VersionConflict), results
    assert (losers[0].expected, losers[0].actual) == (0, 1)
    stored = await two.load("race")
    assert (stored.version, stored.metadata) == (1, {"who": winners[0]})


async def test_a_save_after_another_instance_saved_is_a_conflict_without_an_extra_read(
    firestore_client: Any, second_client: Any
) -> None:
    """A save reuses the update time its load saw as the precondition (no read before it);
    a write by another instance in between still makes it lose."""
    one = FirestoreStateStore(firestore_client, COLLECTION)
    two = FirestoreStateStore(second_client, COLLECTION)
    await one.create(snapshot("seq"))
    stale = await one.load("seq")
    fresh = await two.load("seq")
    await two.save(
        fresh.model_copy(update={"version": 1, "metadata": {"who": "two"}}), expected_version=0
    )
    reads = 0
    original_get = AsyncDocumentReference.get

    async def counting_get(self: Any, *args: Any, **kwargs: Any) -> Any:
        nonlocal reads
        reads += 1
        return await original_get(self, *args, **kwargs)

    with mock.patch.object(AsyncDocumentReference, "get", counting_get):
        with pytest.raises(VersionConflict):
            await one.save(stale.model_copy(update={"version": 1}), expected_version=0)
    assert reads == 1  # only the re-read that explains the refused write
    stored = await one.load("seq")
    assert (stored.version, stored.metadata) == (1, {"who": "two"})


async def test_a_load_decodes_only_what_another_instance_wrote(
    firestore_client: Any, second_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What this instance saved loads without decoding; another instance's save is decoded."""
    decoded: list[str] = []
    original = Snapshot.from_json.__func__  # type: ignore[attr-defined]

    def counting(cls: type[Snapshot], raw: str | bytes) -> Snapshot:
        decoded.append("r")
        result: Snapshot = original(cls, raw)
        return result

    monkeypatch.setattr(Snapshot, "from_json", classmethod(counting))
    one = FirestoreStateStore(firestore_client, COLLECTION)
    two = FirestoreStateStore(second_client, COLLECTION)
    first = snapshot("mine")
    await one.create(first)
    mine = first.model_copy(update={"version": 1, "metadata": {"who": "one"}})
    await one.save(mine, expected_version=0)
    assert await one.load("mine") == mine and decoded == []
    theirs = mine.model_copy(update={"version": 2, "metadata": {"who": "two"}})
    await two.save(theirs, expected_version=1)
    assert await one.load("mine") == theirs and decoded == ["r"]


async def test_a_write_between_the_version_check_and_the_update_is_a_version_conflict(
    firestore_client: Any, second_client: Any, store: FirestoreStateStore
) -> None:
    """The compare-and-set is on the document's update time, not on the version field alone.

    Another writer slips in between save()'s read and its write, and leaves the version number
    as it was: a check of ``version`` alone would not notice; the precondition does.
    """
    await store.create(snapshot("sneaky", metadata={"who": "creator"}))
    intruder = raw_doc(second_client, "sneaky")
    original_update = AsyncDocumentReference.update
    intruded = False

    async def update_after_intruder(self: Any, *args: Any, **kwargs: Any) -> Any:
        nonlocal intruded
        if not intruded:
            intruded = True
            other = snapshot("sneaky", metadata={"who": "intruder"})
            await intruder.update({"snapshot": other.to_json(), "version": 0})
        return await original_update(self, *args, **kwargs)

    with mock.patch.object(AsyncDocumentReference, "update", update_after_intruder):
        with pytest.raises(VersionConflict) as raised:
            await store.save(snapshot("sneaky", version=1), expected_version=0)
    assert intruded
    assert (raised.value.expected, raised.value.actual) == (0, 0)
    assert isinstance(raised.value.__cause__, gexc.FailedPrecondition)
    assert (await store.load("sneaky")).metadata == {"who": "intruder"}


# --------------------------------------------------------------------------- #
# Document layout and queries
# --------------------------------------------------------------------------- #


def _run(run_id: str, status: str, workflow: str | None, version: int = 0) -> Snapshot:
    definition = {"name": workflow, "hash": "0123456789abcdef"} if workflow else None
    return snapshot(run_id, status=status, definition=definition, version=version)


async def test_top_level_fields_are_queryable(
    firestore_client: Any, store: FirestoreStateStore
) -> None:
    runs = [
        _run("a", "paused", "orders"),
        _run("b", "paused", "billing"),
        _run("c", "active", "orders"),
        _run("d", "paused", "orders"),
        _run("e", "paused", None),
        _run("f", "completed", "orders"),
    ]
    for run in runs:
        assert await store.create(run)
    # Runs change status after creation: the fields follow every save.
    await store.save(_run("c", "paused", "orders", version=1), expected_version=0)
    await store.save(_run("d", "completed", "orders", version=1), expected_version=0)

    assert sorted(await store.list_runs(status="paused", workflow="orders")) == ["a", "c"]
    assert sorted(await store.list_runs(status="paused")) == ["a", "b", "c", "e"]
    assert sorted(await store.list_runs(workflow="orders")) == ["a", "c", "d", "f"]
    assert len(await store.list_runs(limit=2)) == 2
    assert sorted(await store.list_runs()) == ["a", "b", "c", "d", "e", "f"]

    # The same query, written against Firestore directly (what an operator or a console sees).
    query = (
        firestore_client.collection(COLLECTION)
        .where(filter=firestore.FieldFilter("status", "==", "paused"))
        .where(filter=firestore.FieldFilter("workflow", "==", "orders"))
    )
    docs = [doc async for doc in query.stream()]
    assert sorted(doc.id for doc in docs) == ["a", "c"]
    fields = {doc.id: doc.to_dict() for doc in docs}["c"]
    assert set(fields) == {
        "status",
        "version",
        "workflow",
        "updatedAt",
        "dueAt",
        "snapshot",
        *("updatedMs", "createdMs", "node", "failedReason"),
    }
    assert (fields["status"], fields["version"], fields["workflow"]) == ("paused", 1, "orders")
    assert fields["updatedAt"].tzinfo is not None  # a server timestamp
    assert wire(Snapshot.from_json(fields["snapshot"])) == wire(_run("c", "paused", "orders", 1))


@pytest.mark.parametrize("method", ["list_runs", "due_runs"])
async def test_run_queries_transfer_document_names_not_snapshots(
    store: FirestoreStateStore, method: str
) -> None:
    """The queries that list runs fetch no snapshot: each can be near a megabyte."""
    from google.cloud.firestore_v1.async_query import AsyncQuery

    await store.create(padded("big", 32 * 1024, status="active"))  # an active run is due
    received: list[dict[str, Any]] = []
    real_stream = AsyncQuery.stream

    async def recording_stream(self: Any, *args: Any, **kwargs: Any) -> Any:
        async for doc in real_stream(self, *args, **kwargs):
            received.append(doc.to_dict() or {})
            yield doc

    with mock.patch.object(AsyncQuery, "stream", recording_stream):
        if method == "list_runs":
            assert await store.list_runs() == ["big"]
        else:
            assert await store.due_runs(due_before=2**62, limit=5) == ["big"]
    assert received == [{}]


async def test_updated_at_is_the_server_time_of_the_last_write(
    firestore_client: Any, store: FirestoreStateStore
) -> None:
    await store.create(snapshot("t"))
    first = (await raw_doc(firestore_client, "t").get()).get("updatedAt")
    await store.save(snapshot("t", version=1), expected_version=0)
    doc = await raw_doc(firestore_client, "t").get()
    assert doc.get("updatedAt") > first
    # The commit's time, to the millisecond the emulator keeps (production: microseconds).
    assert abs((doc.get("updatedAt") - doc.update_time).total_seconds()) < 0.01


@pytest.mark.parametrize(
    "run_id",
    [
        ".",
        "..",
        "__x__",
        "____",
        "__init",
        "x__",
        "a/b",
        "/",
        "~",
        "~x",
        "%2F",
        "naïve 你好",
        "r" * 129,
    ],
)
async def test_run_ids_that_firestore_forbids_are_stored_under_another_document_id(
    store: FirestoreStateStore, run_id: str
) -> None:
    assert await store.create(snapshot(run_id, metadata={"id": run_id})) is True
    assert (await store.load(run_id)).metadata == {"id": run_id}
    await store.save(snapshot(run_id, version=1, status="paused"), expected_version=0)
    assert await store.list_runs(status="paused") == [run_id]
    assert await store.create(snapshot(run_id)) is False


async def test_escaped_ids_do_not_collide_with_plain_ones(store: FirestoreStateStore) -> None:
    # Plain ids never begin with "~"; ids that do are escaped too, so "~." can only mean ".".
    ids = [".", "~.", "~~.", "a/b", "a%2Fb", "~a%2Fb", "__a__", "~__a__"]
    for run_id in ids:
        assert await store.create(snapshot(run_id, metadata={"id": run_id})) is True
    for run_id in ids:
        assert (await store.load(run_id)).metadata == {"id": run_id}
    assert sorted(await store.list_runs()) == sorted(ids)


@pytest.mark.parametrize("run_id", ["", "x" * 1501, "é" * 751, "~" + "x" * 1499])
async def test_ids_no_document_id_can_hold_are_refused_clearly(
    store: FirestoreStateStore, run_id: str
) -> None:
    with pytest.raises(ValueError, match="cannot store run id"):
        await store.create(snapshot(run_id))
    with pytest.raises(RunNotFound):
        await store.load(run_id)
    with pytest.raises(RunNotFound):
        await store.save(snapshot(run_id, version=1), expected_version=0)


# --------------------------------------------------------------------------- #
# Size
# --------------------------------------------------------------------------- #


async def test_an_oversize_snapshot_is_refused_before_any_write_and_the_run_is_unchanged(
    firestore_client: Any, store: FirestoreStateStore
) -> None:
    before = snapshot("big", metadata={"small": True})
    await store.create(before)
    ref = raw_doc(firestore_client, "big")
    stamp = (await ref.get()).update_time
    # Over max_bytes but a document Firestore itself would take: only our check stops it.
    just_over = padded("big", DEFAULT_MAX_BYTES + 1, version=1)
    assert store.stored_size(just_over) < FIRESTORE_MAX_DOCUMENT_BYTES
    # And one Firestore would refuse as well.
    far_over = padded("big", 2 * FIRESTORE_MAX_DOCUMENT_BYTES, version=1)
    with mock.patch.object(AsyncDocumentReference, "update") as update:
        for huge in (just_over, far_over):
            with pytest.raises(PayloadTooLarge) as raised:
                await store.save(huge, expected_version=0)
            assert raised.value.limit == DEFAULT_MAX_BYTES
    update.assert_not_called()
    with mock.patch.object(AsyncDocumentReference, "create") as create:
        with pytest.raises(PayloadTooLarge):
            await store.create(padded("big2", DEFAULT_MAX_BYTES + 1))
    create.assert_not_called()
    doc = await ref.get()
    assert doc.update_time == stamp
    assert wire(await store.load("big")) == wire(before)
    with pytest.raises(RunNotFound):
        await store.load("big2")
    # The largest snapshot the default allows is stored for real.
    at_limit = padded("big", DEFAULT_MAX_BYTES, version=1)
    await store.save(at_limit, expected_version=0)
    assert wire(await store.load("big")) == wire(at_limit)


async def test_document_size_is_computed_exactly_as_firestore_counts_it(
    firestore_client: Any,
) -> None:
    """A document of exactly 1 MiB by our count is stored; one byte more, Firestore refuses.

    The snapshot carries non-ASCII text and a workflow name, so every size rule is used.
    """
    store = FirestoreStateStore(
        firestore_client, "tenants/acme/runs", max_bytes=FIRESTORE_MAX_DOCUMENT_BYTES
    )

    def sized(run_id: str, target: int) -> Snapshot:
        def make(pad: int) -> Snapshot:
            return snapshot(  # finished: an unfinished run leaves headroom free
                run_id,
                status="failed",
                definition={"name": "wörkflow", "hash": "0123456789abcdef"},
                metadata={"note": "héllo 你好 🎉", "pad": "x" * pad},
            )

        base = store.stored_size(make(0))
        snap = make(target - base)
        assert store.stored_size(snap) == target
        return snap

    fits = sized("exact", FIRESTORE_MAX_DOCUMENT_BYTES)
    assert await store.create(fits) is True
    assert wire(await store.load("exact")) == wire(fits)

    over = sized("over", FIRESTORE_MAX_DOCUMENT_BYTES + 1)
    with pytest.raises(PayloadTooLarge) as raised:
        await store.create(over)
    assert (raised.value.size, raised.value.limit) == (
        FIRESTORE_MAX_DOCUMENT_BYTES + 1,
        FIRESTORE_MAX_DOCUMENT_BYTES,
    )
    # The same fields written behind the store's back: Firestore agrees it is one byte too big.
    fields = {
        "status": over.status,
        "version": over.version,
        "workflow": "wörkflow",
        "updatedAt": firestore.SERVER_TIMESTAMP,
        "dueAt": 1_700_000_000_000,  # an active run's: an integer
        "updatedMs": 1_700_000_000_000,
        "createdMs": 1_700_000_000_000,
        "node": over.current_node_id,
        "failedReason": None,
        "snapshot": over.to_json(),
    }
    with pytest.raises(gexc.InvalidArgument, match="1048576"):
        await firestore_client.collection("tenants/acme/runs").document("over").create(fields)


def test_max_bytes_cannot_exceed_firestore_limit(firestore_client: Any) -> None:
    with pytest.raises(ValueError, match="max_bytes"):
        FirestoreStateStore(firestore_client, max_bytes=FIRESTORE_MAX_DOCUMENT_BYTES + 1)


# --------------------------------------------------------------------------- #
# Errors
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (gexc.ServiceUnavailable("down"), True),
        (gexc.DeadlineExceeded("slow"), True),
        (gexc.Aborted("contention"), True),
        (gexc.ResourceExhausted("quota"), True),
        (gexc.InternalServerError("oops"), True),
        (gexc.PermissionDenied("no"), False),
        (gexc.InvalidArgument("bad"), False),
    ],
)
async def test_backend_errors_become_store_errors_raised_from_the_original(
    store: FirestoreStateStore, error: Exception, transient: bool
) -> None:
    await store.create(snapshot("err"))
    with mock.patch.object(AsyncDocumentReference, "get", side_effect=error):
        with pytest.raises(StoreError) as loading:
            await store.load("err")
        with pytest.raises(StoreError) as saving:
            await store.save(snapshot("err", version=1), expected_version=0)
    with mock.patch.object(AsyncDocumentReference, "create", side_effect=error):
        with pytest.raises(StoreError) as creating:
            await store.create(snapshot("err2"))
    for raised in (loading, saving, creating):
        assert raised.value.transient is transient
        assert raised.value.__cause__ is error


async def test_a_document_that_is_not_a_run_is_a_permanent_store_error(
    firestore_client: Any, store: FirestoreStateStore
) -> None:
    await raw_doc(firestore_client, "alien").set({"status": "active", "version": 0})
    with pytest.raises(StoreError) as raised:
        await store.load("alien")
    assert raised.value.transient is False


async def test_an_unreachable_firestore_fails_fast_and_transient(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Nothing listens on the port: the call gives up after its deadline, not the client's 300 s."""
    import socket
    import time

    from google.cloud import firestore

    from refluxo.core import StoreError

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"
    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", dead)
    client = firestore.AsyncClient(project="refluxo-test")
    try:
        store = FirestoreStateStore(client, deadline_s=1.0, timeout_s=0.5)
        started = time.monotonic()
        with pytest.raises(StoreError) as info:
            await store.load("any-run")
        assert info.value.transient
        assert time.monotonic() - started < 10
    finally:
        await client._firestore_api.transport.close()


class TestFirestoreRunIndex(RunIndexContract):
    @pytest.fixture
    def make_store(self, firestore_client: Any) -> Callable[[Callable[[], int]], Any]:
        return lambda clock: FirestoreStateStore(firestore_client, COLLECTION, clock=clock)
