"""SQLiteStateStore: the StateStore contract, plus what a file shared by processes adds."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from refluxo.core import DefinitionRef, NodeResult, StoreError, VersionConflict
from refluxo.local import SQLiteStateStore
from refluxo.local.store import DEFAULT_MAX_BYTES, RunSummary
from refluxo.testing.archive import ResultArchiveContract
from refluxo.testing.due_runs import DueRunsContract
from refluxo.testing.run_index import RunIndexContract
from refluxo.testing.store import StateStoreContract, snapshot
from tests.conftest import FakeClock


class TestSQLiteStateStore(StateStoreContract):
    @pytest.fixture
    def store(self, tmp_path: Path) -> Iterator[SQLiteStateStore]:
        store = SQLiteStateStore(tmp_path / "runs.db")
        yield store
        store.close()

    @pytest.fixture
    def store_capabilities(self) -> frozenset[str]:
        return frozenset({"atomic_compare_and_set", "size_limit"})

    @pytest.fixture
    def store_max_bytes(self) -> int:
        return DEFAULT_MAX_BYTES


class TestSQLiteDueRuns(DueRunsContract):
    @pytest.fixture
    def store(self, tmp_path: Path) -> Iterator[SQLiteStateStore]:
        store = SQLiteStateStore(tmp_path / "runs.db")
        yield store
        store.close()


class TestSQLiteResultArchive(ResultArchiveContract):
    @pytest.fixture
    def store(self, tmp_path: Path) -> Iterator[SQLiteStateStore]:
        store = SQLiteStateStore(tmp_path / "runs.db")
        yield store
        store.close()


async def test_a_file_made_before_due_times_gets_them_from_its_snapshots(tmp_path: Path) -> None:
    """A file written by a version without the due_at column: the column is added, filled
    from the stored snapshots, and the reconciler finds the runs that were due."""
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.executescript(
        "CREATE TABLE runs (id TEXT PRIMARY KEY, workflow TEXT, status TEXT NOT NULL,"
        " version INTEGER NOT NULL, updated_at INTEGER NOT NULL, snapshot TEXT NOT NULL);"
    )
    old = [
        (snapshot("active"), 1000),
        (snapshot("sleeping", status="paused", wait={"kind": "sleep", "until": 2000}), 10),
        (
            snapshot(
                "retrying",
                status="error",
                retryState={"nodeId": "start", "attempts": 1, "nextRetryAt": 3000},
            ),
            10,
        ),
        (snapshot("waiting", status="paused", wait={"kind": "event"}), 10),
        (snapshot("done", status="completed"), 10),
    ]
    db.executemany(
        "INSERT INTO runs VALUES (?, NULL, ?, 0, ?, ?)",
        [(s.run_id, s.status, at, s.to_json()) for s, at in old],
    )
    db.commit()
    db.close()

    store = SQLiteStateStore(path)
    try:
        assert await store.due_runs(due_before=10_000, limit=10) == [
            "active",
            "sleeping",
            "retrying",
        ]
        assert (await store.load("waiting")).status == "paused"
        indexes = [row[1] for row in sqlite3.connect(path).execute("PRAGMA index_list(runs)")]
        assert "runs_due" in indexes
    finally:
        store.close()


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "runs.db"


@pytest.fixture
def store(path: Path, clock: FakeClock) -> Iterator[SQLiteStateStore]:
    store = SQLiteStateStore(path, clock=clock)
    yield store
    store.close()


async def test_a_run_survives_closing_and_reopening_the_file(
    path: Path, store: SQLiteStateStore
) -> None:
    await store.create(snapshot("run-1", metadata={"kept": True}))
    store.close()
    again = SQLiteStateStore(path)
    try:
        assert (await again.load("run-1")).metadata == {"kept": True}
    finally:
        again.close()


def test_constructing_a_store_does_not_touch_the_file(path: Path) -> None:
    SQLiteStateStore(path)
    assert not path.exists()


async def test_list_runs_filters_by_status_and_workflow_newest_first(
    store: SQLiteStateStore, clock: FakeClock
) -> None:
    orders = DefinitionRef(name="orders", hash="h1")
    await store.create(snapshot("a", definition=orders))
    clock.advance(10)
    await store.create(snapshot("b", definition=DefinitionRef(name="refunds", hash="h2")))
    clock.advance(10)
    await store.create(snapshot("c", definition=orders, status="paused"))
    clock.advance(10)
    await store.create(snapshot("d"))  # No definition: listed, under no workflow.
    clock.advance(10)
    await store.save(
        snapshot("a", version=1, definition=orders, status="completed"), expected_version=0
    )

    everything = await store.list_runs()
    assert [r.run_id for r in everything] == ["a", "d", "c", "b"]
    assert everything[0] == RunSummary("a", "orders", "completed", 1, clock.now)
    assert everything[1].workflow is None
    assert [r.run_id for r in await store.list_runs(workflow="orders")] == ["a", "c"]
    assert [r.run_id for r in await store.list_runs(status="active")] == ["d", "b"]
    assert [r.run_id for r in await store.list_runs(status="paused", workflow="orders")] == ["c"]
    assert [r.run_id for r in await store.list_runs(limit=2)] == ["a", "d"]


async def test_a_locked_file_raises_a_transient_store_error_from_the_sqlite_error(
    path: Path,
) -> None:
    store = SQLiteStateStore(path, busy_timeout_ms=50)
    await store.create(snapshot("run-1"))
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN EXCLUSIVE")
        with pytest.raises(StoreError) as raised:
            await store.save(snapshot("run-1", version=1), expected_version=0)
        assert raised.value.transient is True
        assert isinstance(raised.value.__cause__, sqlite3.OperationalError)
        other.execute("ROLLBACK")
        # Once the lock is gone, the same call succeeds: nothing was half-written.
        await store.save(snapshot("run-1", version=1), expected_version=0)
    finally:
        other.close()
        store.close()


async def test_readers_are_not_blocked_by_a_writer_holding_the_lock(path: Path) -> None:
    store = SQLiteStateStore(path, busy_timeout_ms=50)
    await store.create(snapshot("run-1"))
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        other.execute("UPDATE runs SET status = 'failed'")
        # WAL: the CLI can inspect runs while a worker is mid-write, and sees the last commit.
        assert (await store.load("run-1")).status == "active"
        assert [r.status for r in await store.list_runs()] == ["active"]
    finally:
        other.execute("ROLLBACK")
        other.close()
        store.close()


async def test_a_file_that_cannot_be_opened_raises_a_permanent_store_error(
    tmp_path: Path,
) -> None:
    store = SQLiteStateStore(tmp_path / "no-such-dir" / "runs.db")
    with pytest.raises(StoreError) as raised:
        await store.load("run-1")
    assert raised.value.transient is False
    assert isinstance(raised.value.__cause__, sqlite3.Error)


async def test_a_stored_snapshot_that_is_not_valid_raises_store_error(
    path: Path, store: SQLiteStateStore
) -> None:
    await store.create(snapshot("run-1"))
    with sqlite3.connect(path) as raw:
        raw.execute("UPDATE runs SET snapshot = '{\"status\": 42}'")
    raw.close()
    with pytest.raises(StoreError) as raised:
        await store.load("run-1")
    assert raised.value.transient is False


# Each worker process: wait for "go" on stdin (so they all start together), then add one to
# the run's counter ``n`` times, each a load-modify-save that retries on VersionConflict.
INCREMENTER = textwrap.dedent(
    """
    import asyncio, json, os, sys
    from refluxo.core import StoreError, VersionConflict
    from refluxo.local import SQLiteStateStore

    async def main(path, n):
        store = SQLiteStateStore(path)
        conflicts = 0
        for i in range(n):
            while True:
                snap = await store.load("counter")
                data = snap.metadata
                data["count"] += 1
                data["log"].append([os.getpid(), i])
                new = snap.model_copy(update={"version": snap.version + 1, "metadata": data})
                try:
                    await store.save(new, expected_version=snap.version)
                    break
                except VersionConflict:
                    conflicts += 1
                except StoreError as exc:
                    if not exc.transient:
                        raise
        store.close()
        print(json.dumps({"pid": os.getpid(), "conflicts": conflicts}), flush=True)

    print("ready", flush=True)
    sys.stdin.readline()
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
    """
)


def test_several_processes_saving_one_run_lose_no_increment(path: Path) -> None:
    processes, increments = 3, 60

    async def seed() -> None:
        store = SQLiteStateStore(path)
        await store.create(snapshot("counter", metadata={"count": 0, "log": []}))
        store.close()

    asyncio.run(seed())
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", INCREMENTER, str(path), str(increments)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(processes)
    ]
    try:
        for worker in workers:
            assert worker.stdout is not None and worker.stdout.readline().strip() == "ready"
        for worker in workers:
            assert worker.stdin is not None
            worker.stdin.write("go\n")
            worker.stdin.flush()
        reports = []
        for worker in workers:
            out, _ = worker.communicate(timeout=60)
            assert worker.returncode == 0
            reports.append(json.loads(out))
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()

    async def final() -> tuple[int, int, list[list[int]]]:
        store = SQLiteStateStore(path)
        snap = await store.load("counter")
        store.close()
        return snap.version, snap.metadata["count"], snap.metadata["log"]

    version, count, log = asyncio.run(final())
    assert count == version == processes * increments
    for report in reports:  # Each worker's increments all landed, once each, in its order.
        assert [i for pid, i in log if pid == report["pid"]] == list(range(increments))


async def test_a_stale_save_from_another_connection_is_refused(path: Path) -> None:
    # Stores of one process on one file share a connection, unless their busy timeouts differ.
    first, second = SQLiteStateStore(path), SQLiteStateStore(path, busy_timeout_ms=4000)
    try:
        await first.create(snapshot("run-1"))
        await first.save(snapshot("run-1", version=1), expected_version=0)
        with pytest.raises(VersionConflict) as raised:
            await second.save(snapshot("run-1", version=1), expected_version=0)
        assert raised.value.actual == 1
    finally:
        first.close()
        second.close()


async def test_a_save_that_renames_the_workflow_is_listed_under_the_new_name(
    store: SQLiteStateStore,
) -> None:
    # Saves leave the workflow column alone unless the name changes; when it does, it is set.
    await store.create(snapshot("a", definition=DefinitionRef(name="orders", hash="h1")))
    renamed = DefinitionRef(name="invoices", hash="h2")
    await store.save(snapshot("a", version=1, definition=renamed), expected_version=0)
    assert [r.workflow for r in await store.list_runs()] == ["invoices"]
    assert await store.list_runs(workflow="orders") == []
    with pytest.raises(VersionConflict):  # The fallback is a compare-and-set too.
        await store.save(snapshot("a", version=1, definition=renamed), expected_version=0)


async def test_a_file_with_the_old_indexes_is_migrated_and_lists_runs_by_status(
    path: Path, clock: FakeClock
) -> None:
    # Files written before the indexes changed had these two; opening the file replaces them.
    with sqlite3.connect(path) as raw:
        raw.executescript(
            """
            CREATE TABLE runs (
                id TEXT PRIMARY KEY, workflow TEXT, status TEXT NOT NULL,
                version INTEGER NOT NULL, updated_at INTEGER NOT NULL, snapshot TEXT NOT NULL
            );
            CREATE INDEX runs_by_status ON runs (status, updated_at);
            CREATE INDEX runs_by_workflow ON runs (workflow, updated_at);
            """
        )
    raw.close()
    store = SQLiteStateStore(path, clock=clock)
    try:
        for i, status in enumerate(["active", "failed", "completed", "failed"]):
            clock.advance(10)
            await store.create(snapshot(f"r{i}", status=status))
        assert [r.run_id for r in await store.list_runs(status="failed")] == ["r3", "r1"]
        assert [r.run_id for r in await store.list_runs(status="active")] == ["r0"]
        await store.save(snapshot("r0", version=1, status="failed"), expected_version=0)
        assert [r.run_id for r in await store.list_runs(status="failed")] == ["r0", "r3", "r1"]
        assert await store.list_runs(status="active") == []
    finally:
        store.close()
    with sqlite3.connect(path) as raw:
        indexes = {
            row[0]
            for row in raw.execute(
                "SELECT name FROM sqlite_master WHERE type = 'index' AND name NOT LIKE 'sqlite_%'"
            )
        }
    raw.close()
    assert indexes == {"runs_workflow", "runs_settled", "runs_due"}


async def test_an_unreadable_stored_run_is_reported_without_echoing_its_content(
    path: Path,
) -> None:
    from refluxo.core.dispatcher import RunService
    from refluxo.core.http import HttpApi, HttpRequest
    from refluxo.core.memory import MemoryScheduler

    store = SQLiteStateStore(path)
    await store.create(snapshot("r1"))
    raw = '{"workflowId": "r1", "status": "card 4111 1111 1111 1111", "currentNodeId": "a"}'
    with sqlite3.connect(path) as db:
        db.execute("UPDATE runs SET snapshot = ? WHERE id = 'r1'", (raw,))
    with pytest.raises(StoreError) as raised:
        await store.load("r1")
    assert raised.value.transient is False and "4111" not in str(raised.value)
    assert "status" in str(raised.value)
    api = HttpApi(RunService([], store, MemoryScheduler()))
    response = await api.handle(HttpRequest("GET", "/runs/r1"))
    assert response.status == 500 and b"4111" not in response.body
    store.close()


class TestSQLiteRunIndex(RunIndexContract):
    @pytest.fixture
    def make_store(self, tmp_path: Path) -> Callable[[Callable[[], int]], SQLiteStateStore]:
        return lambda clock: SQLiteStateStore(tmp_path / "index.db", clock=clock)


async def test_an_unreadable_archived_result_is_reported_without_echoing_its_content(
    path: Path, store: SQLiteStateStore
) -> None:
    await store.archive_results("r1", "tick", 0, [NodeResult(output=1, timestamp=1)])
    with sqlite3.connect(path) as db:
        db.execute('UPDATE archived_results SET result = \'{"timestamp": "card 4111"}\'')
    db.close()
    with pytest.raises(StoreError) as raised:
        await store.archived_results("r1", "tick")
    assert raised.value.transient is False and "4111" not in str(raised.value)


def test_the_sqlite_driver_implements_the_sql_driver_protocol(path: Path) -> None:
    from refluxo.core.sql import SqlDriver
    from refluxo.local._sqlite import Database
    from refluxo.local.store import SQLiteDriver

    assert isinstance(SQLiteDriver(Database(path, busy_timeout_ms=10, schema="")), SqlDriver)
