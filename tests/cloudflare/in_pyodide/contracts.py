"""Runs inside Pyodide: ``harness.mjs run --kv STATE --d1 DB --queue STEPS --queue JOBS``.

The StateStore, DueRuns and RunIndex contracts on D1StateStore (all of them) and
KVStateStore (declaring no atomic compare-and-set), the Scheduler contract on
QueuesScheduler, and the adapters' own tests, all on Miniflare's real KV, D1 and Queues.
``test_cloudflare_in_pyodide.py`` starts it and checks every result line.
"""

import asyncio
import itertools
import time
from typing import Any

import pytest
from harness_env import env, set_queue_handler
from pytest_lite import Runner, module_of

from refluxo.cloudflare import D1StateStore, KVStateStore, QueuesScheduler
from refluxo.cloudflare.store import D1_MAX_ROW_BYTES, DEFAULT_D1_MAX_BYTES
from refluxo.cloudflare.worker import RefluxoWorker, WorkerSettings, decode_message
from refluxo.core import (
    DefinitionError,
    MemoryScheduler,
    NodeResult,
    PayloadTooLarge,
    RunNotFound,
    RunService,
    StoreError,
    VersionConflict,
)
from refluxo.core.model import DispatchMessage, now_ms
from refluxo.demo import workflows
from refluxo.testing.archive import ResultArchiveContract
from refluxo.testing.due_runs import DueRunsContract
from refluxo.testing.run_index import RunIndexContract
from refluxo.testing.scheduler import SchedulerContract
from refluxo.testing.store import StateStoreContract, padded, snapshot, wire
from tests.dispatcher.longrun import loop_workflow, run_loop

CONTRACT_MAX_BYTES = 64 * 1024
_fresh = itertools.count()

# Queue batches: "steps" feeds the scheduler contract, "jobs" the consumer under test.
steps_deliveries: asyncio.Queue = asyncio.Queue()
jobs_consumer: list[Any] = []


async def on_batch(batch):
    if batch.queue == "steps":
        for message in batch.messages:
            sent_ms = int(message.timestamp.timestamp() * 1000)
            steps_deliveries.put_nowait((sent_ms, decode_message(message.body)))
            message.ack()
    else:
        await jobs_consumer[-1](batch)


async def wait_for(predicate, within=15.0, what="condition"):
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


# ------------------------------------------------------------------ the contracts


class TestD1StateStore(StateStoreContract, DueRunsContract):
    @pytest.fixture
    def store(self):
        # A table of its own per test: the store creates it on first use.
        return D1StateStore(env.DB, table=f"runs_{next(_fresh)}", max_bytes=CONTRACT_MAX_BYTES)

    @pytest.fixture
    def store_capabilities(self):
        return frozenset({"atomic_compare_and_set", "size_limit"})

    @pytest.fixture
    def store_max_bytes(self):
        return CONTRACT_MAX_BYTES


class TestD1ResultArchive(ResultArchiveContract):
    @pytest.fixture
    def store(self):
        return D1StateStore(env.DB, table=f"runs_{next(_fresh)}")


class TestKVStateStore(StateStoreContract, DueRunsContract):
    @pytest.fixture
    def store(self):
        return KVStateStore(env.STATE, prefix=f"t{next(_fresh)}/", max_bytes=CONTRACT_MAX_BYTES)

    @pytest.fixture
    def store_capabilities(self):
        # KV checks then writes in two calls: no atomic compare-and-set, said so.
        return frozenset({"size_limit"})

    @pytest.fixture
    def store_max_bytes(self):
        return CONTRACT_MAX_BYTES


class TestD1RunIndex(RunIndexContract):
    @pytest.fixture
    def make_store(self):
        return lambda clock: D1StateStore(env.DB, table=f"runs_{next(_fresh)}", clock=clock)

    @pytest.fixture
    def run_index_capabilities(self):
        return frozenset()  # the table keeps no creation time


class TestKVRunIndex(RunIndexContract):
    @pytest.fixture
    def make_store(self):
        return lambda clock: KVStateStore(env.STATE, prefix=f"t{next(_fresh)}/", clock=clock)


class TestQueuesScheduler(SchedulerContract):
    @pytest.fixture
    def scheduler(self):
        return QueuesScheduler(env.STEPS)

    @pytest.fixture
    def scheduler_capabilities(self):
        return frozenset()  # Queues cannot deduplicate

    @pytest.fixture
    def delivery_timeout_s(self):
        return 10.0

    @pytest.fixture
    def next_delivery(self):
        # One queue serves every test: ignore what earlier tests sent and is still arriving.
        since = now_ms()

        async def next_delivery(timeout_s):
            deadline = time.monotonic() + timeout_s
            while (left := deadline - time.monotonic()) > 0:
                try:
                    sent_ms, message = await asyncio.wait_for(steps_deliveries.get(), left)
                except TimeoutError:
                    return None
                if sent_ms >= since:
                    return message
            return None

        return next_delivery


# ------------------------------------------------------------------ KVStateStore beyond it


class RivalAfterPut:
    """A KV binding where another writer's put lands right after each of ours."""

    def __init__(self, kv, rival_value):
        self._kv = kv
        self._rival = rival_value

    def get(self, *args, **kwargs):
        return self._kv.get(*args, **kwargs)

    def getWithMetadata(self, *args, **kwargs):
        return self._kv.getWithMetadata(*args, **kwargs)

    async def put(self, key, value, **options):
        await self._kv.put(key, value, **options)
        rival = self._rival.to_json()
        await self._kv.put(key, rival, metadata={"version": self._rival.version, "writer": "x"})


async def test_kv_save_that_loses_a_race_after_writing_raises_version_conflict():
    store = KVStateStore(env.STATE, prefix="race1/")
    await store.create(snapshot())
    rival = snapshot(version=1, metadata={"who": "rival"})
    racing = KVStateStore(RivalAfterPut(env.STATE, rival), prefix="race1/")
    with pytest.raises(VersionConflict) as raised:
        await racing.save(snapshot(version=1, metadata={"who": "me"}), expected_version=0)
    assert raised.value.actual == 1
    assert wire(await store.load("run-1")) == wire(rival)


async def test_kv_create_that_loses_a_race_after_writing_answers_false():
    rival = snapshot(metadata={"who": "rival"})
    racing = KVStateStore(RivalAfterPut(env.STATE, rival), prefix="race2/")
    assert await racing.create(snapshot(metadata={"who": "me"})) is False
    assert (await racing.load("run-1")).metadata == {"who": "rival"}


async def test_kv_concurrent_saves_the_snapshot_that_stands_reported_success():
    # Not "exactly one winner" (KV cannot promise it), but never a silent loss of the last.
    store = KVStateStore(env.STATE, prefix="race3/")
    await store.create(snapshot())
    racers = [snapshot(version=1, metadata={"racer": i}) for i in range(8)]

    async def save(snap):
        try:
            await store.save(snap, expected_version=0)
        except VersionConflict:
            return False
        return True

    won = await asyncio.gather(*(save(s) for s in racers))
    stored = (await store.load("run-1")).metadata["racer"]
    assert won.count(True) >= 1
    assert won[stored] is True
    print(f"  ({won.count(True)} of {len(racers)} racers reported success)")


async def test_kv_run_ids_whose_key_is_over_512_bytes_are_refused():
    store = KVStateStore(env.STATE, prefix="long/")
    with pytest.raises(ValueError, match="512"):
        await store.create(snapshot("r" * 510))
    with pytest.raises(RunNotFound):
        await store.load("r" * 510)
    with pytest.raises(RunNotFound):
        await store.save(snapshot("r" * 510, version=1), expected_version=0)


async def test_kv_stores_the_version_in_metadata():
    store = KVStateStore(env.STATE, prefix="meta/")
    await store.create(snapshot(version=4))
    found = await env.STATE.getWithMetadata("meta/run-1", type="text")
    assert found["metadata"]["version"] == 4
    assert len(found["metadata"]["writer"]) == 32


async def test_kv_stores_the_due_time_in_metadata_with_the_value():
    store = KVStateStore(env.STATE, prefix="due-meta/")
    before = now_ms()
    await store.create(snapshot())  # active: due since it was written
    found = await env.STATE.getWithMetadata("due-meta/run-1", type="text")
    assert before <= found["metadata"]["due"] <= now_ms()
    await store.save(snapshot(version=1, status="completed"), expected_version=0)
    found = await env.STATE.getWithMetadata("due-meta/run-1", type="text")
    assert found["metadata"]["due"] is None


class SmallPages:
    """A KV binding whose listings come two keys a page, so ``due_runs`` follows the cursor."""

    def __init__(self, kv):
        self._kv = kv
        self.lists = 0

    def get(self, *args, **kwargs):
        return self._kv.get(*args, **kwargs)

    def getWithMetadata(self, *args, **kwargs):
        return self._kv.getWithMetadata(*args, **kwargs)

    def put(self, *args, **kwargs):
        return self._kv.put(*args, **kwargs)

    def list(self, **options):
        self.lists += 1
        return self._kv.list(**options, limit=2)


async def test_kv_due_runs_follows_the_listing_cursor_across_pages():
    pages = SmallPages(env.STATE)
    store = KVStateStore(pages, prefix="paged/")
    now = now_ms()
    for i in range(5):
        sleeping = snapshot(f"r{i}", status="paused", wait={"kind": "sleep", "until": now - i})
        await store.create(sleeping)
    await store.create(snapshot("done", status="completed"))
    assert await store.due_runs(due_before=now, limit=10) == ["r4", "r3", "r2", "r1", "r0"]
    assert pages.lists == 3  # six keys, two a page
    assert await store.due_runs(due_before=now - 3, limit=10) == ["r4", "r3"]


# ------------------------------------------------------------------ D1StateStore beyond it


async def test_d1_a_table_from_before_due_at_is_migrated_on_first_use():
    await env.DB.prepare(
        "CREATE TABLE old_runs (id TEXT PRIMARY KEY NOT NULL, version INTEGER NOT NULL, "
        "status TEXT NOT NULL, workflow TEXT, snapshot TEXT NOT NULL, "
        "updated_at INTEGER NOT NULL)"
    ).run()
    active = snapshot("old-active")
    await (
        env.DB.prepare("INSERT INTO old_runs VALUES (?1, 0, 'active', NULL, ?2, 1000)")
        .bind("old-active", active.to_json())
        .run()
    )
    store = D1StateStore(env.DB, table="old_runs")
    # An active run of the old table counts as due since its last write.
    assert await store.due_runs(due_before=now_ms(), limit=10) == ["old-active"]
    assert await store.create(snapshot("new")) is True
    await store.save(snapshot("old-active", version=1, status="completed"), expected_version=0)
    assert await store.due_runs(due_before=now_ms() + 1, limit=10) == ["new"]


async def test_d1_creates_its_table_on_first_use_and_ensure_schema_is_idempotent():
    store = D1StateStore(env.DB, table="lazy_runs")
    with pytest.raises(RunNotFound):
        await store.load("run-1")  # creates the table, then finds nothing
    await store.ensure_schema()
    await store.ensure_schema()
    assert await store.create(snapshot()) is True
    rows = await env.DB.prepare("SELECT id, version, status FROM lazy_runs").all()
    assert [dict(r) for r in rows["results"]] == [{"id": "run-1", "version": 0, "status": "active"}]


async def test_d1_a_snapshot_near_its_row_limit_round_trips():
    store = D1StateStore(env.DB, table="big_runs")
    big = padded("big", DEFAULT_D1_MAX_BYTES)
    assert await store.create(big) is True
    assert wire(await store.load("big")) == wire(big)
    with pytest.raises(PayloadTooLarge) as raised:
        await store.save(padded("big", DEFAULT_D1_MAX_BYTES + 1, version=1), expected_version=0)
    assert raised.value.limit == DEFAULT_D1_MAX_BYTES
    assert DEFAULT_D1_MAX_BYTES < D1_MAX_ROW_BYTES


async def test_d1_sql_errors_are_permanent_store_errors():
    await env.DB.prepare("CREATE TABLE odd_runs (id TEXT PRIMARY KEY)").run()
    store = D1StateStore(env.DB, table="odd_runs")
    with pytest.raises(StoreError) as raised:
        await store.create(snapshot())
    assert raised.value.transient is False
    assert "D1 failed to create run 'run-1'" in str(raised.value)


async def test_d1_archives_the_results_a_retention_trims():
    # Each step is a few D1 round trips through Miniflare (~25 ms each here): a short loop.
    store = D1StateStore(env.DB, table="loop_runs")
    await run_loop(store, loop_workflow(60, retention=3, archive=True), every=1_000)
    snap = await store.load("loop-1")
    archived = await store.archived_results("loop-1", "tick")
    assert snap.status == "completed" and len(snap.context["tick"]) == 3
    assert [r.output["i"] for r in [*archived, *snap.context["tick"]]] == list(range(60))
    # Idempotent: an index kept already is left as it is.
    await store.archive_results("loop-1", "tick", 0, [NodeResult(output="other", timestamp=1)])
    assert (await store.archived_results("loop-1", "tick"))[0] == archived[0]
    assert await store.archived_results("loop-1", "ghost") == []


def test_kv_keeps_no_archive_and_says_so():
    with pytest.raises(DefinitionError, match="KVStateStore keeps no archive"):
        RunService(
            [loop_workflow(3, retention=2, archive=True)],
            KVStateStore(env.STATE),
            MemoryScheduler(),
        )


# ------------------------------------------------------------------ the queue consumer


class FlakyStore:
    """A store whose first ``failures`` loads fail with the given StoreError."""

    def __init__(self, inner, failures, transient):
        self.inner = inner
        self.failures = failures
        self.transient = transient

    async def load(self, run_id):
        if self.failures:
            self.failures -= 1
            raise StoreError("D1 failed to load: Network connection lost", transient=self.transient)
        return await self.inner.load(run_id)

    async def create(self, snap):
        return await self.inner.create(snap)

    async def save(self, snap, *, expected_version):
        await self.inner.save(snap, expected_version=expected_version)


def consumer_with(store, **settings):
    dispatcher = RunService(
        workflows(), store, QueuesScheduler(env.JOBS), globals={"supplier_token": "tok-9"}
    )
    worker = RefluxoWorker(dispatcher, WorkerSettings(app="refluxo.demo", **settings))
    seen = []

    async def consume(batch):
        for message in batch.messages:
            try:
                run_id = decode_message(message.body).run_id
            except ValueError:
                run_id = None
            decision = await worker.handle_message(message)
            seen.append((run_id, message.attempts, decision, time.monotonic()))

    jobs_consumer.append(consume)
    return dispatcher, seen


def of_run(seen, run_id):
    """(attempts, decision, at) of the deliveries of one run (earlier runs keep going)."""
    return [(a, d, t) for r, a, d, t in seen if r == run_id]


async def test_a_transient_backend_error_is_retried_with_backoff_then_the_step_runs():
    store = FlakyStore(D1StateStore(env.DB, table="consumer_runs"), failures=2, transient=True)
    dispatcher, seen = consumer_with(store, retry_base_seconds=1)
    await dispatcher.start("demo", run_id="flaky", input={"customer": "Eve"})
    await wait_for(lambda: len(of_run(seen, "flaky")) >= 3, what="three deliveries")
    got = of_run(seen, "flaky")
    assert [(a, d) for a, d, _ in got[:3]] == [(1, "retry"), (2, "retry"), (3, "ack")]
    # Backoff: 1 s after the first attempt, 2 s after the second.
    assert got[1][2] - got[0][2] >= 0.95
    assert got[2][2] - got[1][2] >= 1.95
    run = await store.inner.load("flaky")
    assert run.version >= 1 and len(run.results("order")) >= 1


async def test_a_permanent_backend_error_is_retried_after_the_longest_delay():
    store = FlakyStore(D1StateStore(env.DB, table="consumer_runs"), failures=1, transient=False)
    dispatcher, seen = consumer_with(store, retry_base_seconds=1, retry_max_seconds=2)
    await dispatcher.start("demo", run_id="broken")
    await wait_for(lambda: len(of_run(seen, "broken")) >= 2, what="the redelivery")
    got = of_run(seen, "broken")
    assert [(a, d) for a, d, _ in got[:2]] == [(1, "retry"), (2, "ack")]
    assert got[1][2] - got[0][2] >= 1.95


async def test_a_malformed_message_is_acked_once_and_never_redelivered():
    store = D1StateStore(env.DB, table="consumer_runs")
    _, seen = consumer_with(store)
    await env.JOBS.send({"not": "a dispatch message"})
    await env.JOBS.send("{not json")
    await wait_for(lambda: len(of_run(seen, None)) >= 2, what="two deliveries")
    # A quiet period, not a wait for work: a redelivery would come well within it.
    await asyncio.sleep(1.5)
    assert [(a, d) for a, d, _ in of_run(seen, None)] == [(1, "ack"), (1, "ack")]


async def test_an_unknown_run_is_acked():
    store = D1StateStore(env.DB, table="consumer_runs")
    _, seen = consumer_with(store)
    await QueuesScheduler(env.JOBS).schedule(DispatchMessage(run_id="ghost", version=0))
    await wait_for(lambda: len(of_run(seen, "ghost")) >= 1, what="the delivery")
    assert [(a, d) for a, d, _ in of_run(seen, "ghost")] == [(1, "ack")]


set_queue_handler(on_batch)
runner = Runner()
await runner.run_module(module_of(globals()))  # noqa: F704 - `harness.mjs run` allows it
raise SystemExit(runner.summary())
