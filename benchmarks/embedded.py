"""Section 3, embedded throughput: many concurrent runs through SQLite and the local scheduler.

100 runs of 100 steps each (a loop with retention) are started on a SQLiteStateStore and a
SQLiteScheduler sharing one file, then the scheduler's worker loop (``run(handler, stop=,
concurrency=8)``, what LocalRuntime runs) delivers every step to the RunService until all have
completed. Our cost per step is compared with a floor measured in the same run on the same
kind of file (WAL, ``synchronous=NORMAL``, autocommit): one raw compare-and-set of a row the
size of our snapshots (``UPDATE ... WHERE id = ? AND version = ?``) plus one enqueue (``INSERT``
into a messages table), each its own transaction.

A second, instrumented run times the parts of a step (load, engine, save, schedule, lease,
mark done) to say where the time goes; it delivers one message at a time, so that the parts'
times do not overlap.
"""

from __future__ import annotations

import asyncio
import functools
import sqlite3
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from refluxo.core import DispatchMessage, RunService, Snapshot
from refluxo.local.scheduler import SQLiteScheduler
from refluxo.local.store import SQLiteStateStore

from .common import (
    Config,
    Figure,
    SectionResult,
    clean,
    fmt_bytes,
    fmt_num,
    fmt_us,
    median,
    now,
    spread,
    written_bytes,
)
from .workflows import loop_workflow

SECTION = "embedded"
TITLE = "3. Embedded throughput (SQLite store + local scheduler)"
RETENTION = 10
CONCURRENCY = 8  # LocalRuntime's default
GOAL = 1.5

T = TypeVar("T")


@dataclass(frozen=True)
class Sizes:
    runs: int
    steps: int
    floor_ops: int
    repeats: int
    profile_runs: int


def sizes(cfg: Config) -> Sizes:
    return Sizes(
        runs=cfg.pick(100, 100, 5),
        steps=cfg.pick(100, 100, 10),
        floor_ops=cfg.pick(10_000, 5_000, 200),
        repeats=min(cfg.repeats, cfg.pick(3, 1, 1)),
        profile_runs=cfg.pick(30, 20, 3),
    )


@dataclass
class Throughput:
    seconds: float
    steps: int
    start_seconds: float
    snapshot_bytes: float
    written: int | None  # bytes handed to write() while the worker loop ran
    calls: dict[str, list[float]]  # instrumented runs only: each call's seconds, per part


class _Timer:
    """Records the duration of every call of wrapped coroutine functions and functions."""

    def __init__(self) -> None:
        self.calls: dict[str, list[float]] = {}

    def add(self, name: str, seconds: float) -> None:
        self.calls.setdefault(name, []).append(seconds)

    def wrap_async(self, name: str, fn: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
        @functools.wraps(fn)
        async def timed(*args: Any, **kwargs: Any) -> T:
            t0 = now()
            try:
                return await fn(*args, **kwargs)
            finally:
                self.add(name, now() - t0)

        return timed

    def wrap(self, name: str, fn: Callable[..., T]) -> Callable[..., T]:
        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> T:
            t0 = now()
            try:
                return fn(*args, **kwargs)
            finally:
                self.add(name, now() - t0)

        return timed


def _instrument(
    timer: _Timer, store: SQLiteStateStore, scheduler: SQLiteScheduler, dispatcher: RunService
) -> None:
    """Time the parts of a step by wrapping the objects' methods (instance attributes)."""
    obj: Any
    for obj, attr, name in (
        (store, "load", "store.load (SELECT + Snapshot.from_json)"),
        (store, "save", "store.save (to_json + UPDATE)"),
        (
            scheduler,
            "schedule",
            "scheduler.schedule (INSERT + lease for the worker + due done marks, one transaction)",
        ),
    ):
        setattr(obj, attr, timer.wrap_async(name, getattr(obj, attr)))
    for obj, attr, name in (
        (scheduler, "_lease", "scheduler lease (worker loop transaction)"),
        (scheduler, "_flush_delivered", "scheduler mark done (batched, own transaction)"),
        (scheduler, "_idle_s", "scheduler next-due query (worker loop)"),
        (dispatcher, "_log_step", "dispatcher step log record"),
    ):
        setattr(obj, attr, timer.wrap(name, getattr(obj, attr)))
    for workflow in dispatcher.workflows.values():
        engine: Any = workflow.engine
        engine.advance = timer.wrap_async("engine.advance", engine.advance)


async def _throughput(path: Path, sz: Sizes, runs: int, timer: _Timer | None = None) -> Throughput:
    workflow = loop_workflow(sz.steps, RETENTION, name="embedded")
    store = SQLiteStateStore(path)
    scheduler = SQLiteScheduler(path)
    dispatcher = RunService([workflow], store, scheduler)
    if timer is not None:
        _instrument(timer, store, scheduler, dispatcher)
    stop = asyncio.Event()
    done = 0
    steps = 0

    async def handler(message: DispatchMessage) -> None:
        nonlocal done, steps
        result = await dispatcher.dispatch(message)
        if result.outcome == "stepped":
            steps += (result.version or 0) - message.version  # a delivery may run several
            if result.status == "completed":
                done += 1
                if done == runs:
                    stop.set()
        elif result.outcome != "stale":
            raise RuntimeError(f"unexpected outcome {result}")

    try:
        t0 = now()
        for i in range(runs):
            await dispatcher.start(workflow.name, run_id=f"run-{i:03d}")
        started = now() - t0
        w0 = written_bytes()
        t0 = now()
        # The instrumented run delivers one message at a time: with several in flight, the
        # parts' wall times overlap (one delivery's engine call spans another's save).
        concurrency = 1 if timer is not None else CONCURRENCY
        await asyncio.wait_for(scheduler.run(handler, stop=stop, concurrency=concurrency), 600)
        elapsed = now() - t0
        w1 = written_bytes()
        sizes_b = [len((await store.load(f"run-{i:03d}")).to_json().encode()) for i in range(runs)]
    finally:
        scheduler.close()
        store.close()
    if steps != runs * sz.steps:
        raise RuntimeError(f"expected {runs * sz.steps} steps, counted {steps}")
    return Throughput(
        seconds=elapsed,
        steps=steps,
        start_seconds=started,
        snapshot_bytes=median(sizes_b),
        written=None if w0 is None or w1 is None else w1 - w0,
        calls=dict(timer.calls) if timer is not None else {},
    )


_FLOOR_SCHEMA = """
CREATE TABLE runs (id TEXT PRIMARY KEY, version INTEGER NOT NULL, snapshot TEXT NOT NULL);
CREATE TABLE messages (
    key TEXT PRIMARY KEY, run_id TEXT NOT NULL, version INTEGER NOT NULL,
    due_at INTEGER NOT NULL, state TEXT NOT NULL
);
"""
_CAS = "UPDATE runs SET version = ?, snapshot = ? WHERE id = ? AND version = ?"
_ENQUEUE = (
    "INSERT INTO messages (key, run_id, version, due_at, state) VALUES (?, ?, ?, ?, 'pending')"
)

# The same statements on tables shaped and indexed as SQLiteStateStore's and SQLiteScheduler's
# (their columns and secondary indexes, copied here): what the indexes alone cost.
_INDEXED_SCHEMA = """
CREATE TABLE runs (
    id TEXT PRIMARY KEY, workflow TEXT, status TEXT NOT NULL, version INTEGER NOT NULL,
    updated_at INTEGER NOT NULL, snapshot TEXT NOT NULL
);
CREATE INDEX runs_by_status ON runs (status, updated_at);
CREATE INDEX runs_by_workflow ON runs (workflow, updated_at);
CREATE TABLE messages (
    key TEXT PRIMARY KEY, run_id TEXT NOT NULL, version INTEGER NOT NULL, hop INTEGER NOT NULL,
    due_at INTEGER NOT NULL, state TEXT NOT NULL, lease_until INTEGER, lease_token TEXT,
    attempts INTEGER NOT NULL DEFAULT 0, last_error TEXT, created_at INTEGER NOT NULL,
    done_at INTEGER
);
CREATE INDEX messages_due ON messages (state, due_at);
CREATE INDEX messages_lease ON messages (state, lease_until);
CREATE INDEX messages_done ON messages (state, done_at);
"""
_INDEXED_CAS = (
    "UPDATE runs SET workflow = 'embedded', status = 'active', version = ?, updated_at = ?,"
    " snapshot = ? WHERE id = ? AND version = ?"
)
_INDEXED_ENQUEUE = (
    "INSERT INTO messages (key, run_id, version, hop, due_at, state, attempts, created_at)"
    " VALUES (?, ?, ?, 0, ?, 'pending', 0, ?)"
)


def _floor(
    path: Path, rows: int, ops: int, snapshot_bytes: int, *, indexed: bool
) -> tuple[float, float | None]:
    """Seconds, and bytes handed to write(), per (raw compare-and-set + raw enqueue), each
    statement its own transaction."""
    conn = sqlite3.connect(str(path), isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.executescript(_INDEXED_SCHEMA if indexed else _FLOOR_SCHEMA)
        body = "x" * snapshot_bytes
        if indexed:
            conn.executemany(
                "INSERT INTO runs (id, workflow, status, version, updated_at, snapshot)"
                " VALUES (?, 'embedded', 'active', 0, 0, ?)",
                [(f"run-{i:03d}", body) for i in range(rows)],
            )
        else:
            conn.executemany(
                "INSERT INTO runs (id, version, snapshot) VALUES (?, 0, ?)",
                [(f"run-{i:03d}", body) for i in range(rows)],
            )
        versions = [0] * rows
        w0 = written_bytes()
        t0 = now()
        for op in range(ops):
            row = op % rows
            run_id = f"run-{row:03d}"
            version = versions[row]
            key = f"{run_id}.{version + 1}.0"
            if indexed:
                cur = conn.execute(_INDEXED_CAS, (version + 1, op, body, run_id, version))
            else:
                cur = conn.execute(_CAS, (version + 1, body, run_id, version))
            if cur.rowcount != 1:
                raise RuntimeError("the floor's compare-and-set failed")
            versions[row] = version + 1
            if indexed:
                conn.execute(_INDEXED_ENQUEUE, (key, run_id, version + 1, op, op))
            else:
                conn.execute(_ENQUEUE, (key, run_id, version + 1, op))
        elapsed = (now() - t0) / ops
        w1 = written_bytes()
        return elapsed, None if w0 is None or w1 is None else (w1 - w0) / ops
    finally:
        conn.close()


def _codec_floor(snapshot: Snapshot, inner: int) -> tuple[float, float]:
    """Median seconds of Snapshot.from_json and to_json for one typical snapshot."""
    raw = snapshot.to_json()
    parse: list[float] = []
    dump: list[float] = []
    for _ in range(inner):
        t0 = now()
        Snapshot.from_json(raw)
        parse.append(now() - t0)
        t0 = now()
        snapshot.to_json()
        dump.append(now() - t0)
    return median(parse), median(dump)


async def _typical_snapshot(steps: int) -> Snapshot:
    workflow = loop_workflow(steps, RETENTION, name="embedded")
    snapshot = workflow.engine.create_initial_snapshot(
        "run-000", workflow.start, definition=workflow.ref
    )
    while snapshot.version < steps // 2:
        snapshot = await workflow.engine.execute_step(snapshot)
    return snapshot


def _per_step_written(written: list[float | None]) -> float | None:
    known = [w for w in written if w is not None]
    return median(known) if known else None


async def _run(cfg: Config) -> SectionResult:
    sz = sizes(cfg)
    cmd = cfg.command_for(SECTION)
    result = SectionResult(SECTION, TITLE)
    per_step: list[float] = []
    floors: list[float] = []
    indexed_floors: list[float] = []
    ratios: list[float] = []
    rates: list[float] = []
    sizes_b: list[float] = []
    written: list[float | None] = []
    floor_written: list[float | None] = []
    indexed_written: list[float | None] = []
    with tempfile.TemporaryDirectory(prefix="refluxo-bench-") as tmp_dir:
        tmp = Path(tmp_dir)
        for i in range(sz.repeats):
            clean()
            run = await _throughput(tmp / f"embedded-{i}.db", sz, sz.runs)
            clean()
            row = int(run.snapshot_bytes)
            floor, floor_w = _floor(
                tmp / f"floor-{i}.db", sz.runs, sz.floor_ops, row, indexed=False
            )
            indexed, indexed_w = _floor(
                tmp / f"indexed-{i}.db", sz.runs, sz.floor_ops, row, indexed=True
            )
            cost = run.seconds / run.steps
            per_step.append(cost)
            floors.append(floor)
            indexed_floors.append(indexed)
            ratios.append(cost / floor)
            rates.append(run.steps / run.seconds)
            sizes_b.append(run.snapshot_bytes)
            written.append(None if run.written is None else run.written / run.steps)
            floor_written.append(floor_w)
            indexed_written.append(indexed_w)
        timer = _Timer()
        clean()
        profiled = await _throughput(tmp / "profiled.db", sz, sz.profile_runs, timer)
    typical = await _typical_snapshot(sz.steps)
    parse_s, dump_s = _codec_floor(typical, cfg.pick(200, 100, 5))
    floor_s = median(floors)
    indexed_s = median(indexed_floors)
    ours_s = median(per_step)

    total = sz.runs * sz.steps
    result.figures.append(
        Figure(
            id="embedded.sqlite.steps_per_s",
            name=f"Embedded: {sz.runs} concurrent runs x {sz.steps} steps, SQLite + local "
            f"scheduler (concurrency {CONCURRENCY})",
            value=round(median(rates), 1),
            unit="steps/s",
            display=f"{fmt_num(median(rates))} steps/s ({fmt_us(ours_s)}/step, {total:,} steps)",
            command=cmd,
            details={"steps_per_s": spread(rates), "seconds_per_step": spread(per_step)},
        )
    )
    result.figures.append(
        Figure(
            id="embedded.sqlite.cost_over_floor",
            name="Embedded: our cost per step / raw SQLite CAS + enqueue (same run)",
            value=round(median(ratios), 3),
            unit="x",
            display=f"{median(ratios):.1f}x ({fmt_us(ours_s)} vs {fmt_us(floor_s)} floor, "
            f"rows of {fmt_bytes(median(sizes_b))})",
            command=cmd,
            goal=f"<= {GOAL}",
            passed=median(ratios) <= GOAL,
            details={
                "ratio": spread(ratios),
                "floor_seconds": spread(floors),
                "snapshot_bytes": median(sizes_b),
            },
        )
    )
    result.figures.append(
        Figure(
            id="embedded.sqlite.cost_over_indexed_floor",
            name="Embedded: our cost per step / the same CAS + enqueue on tables with "
            "refluxo's columns and indexes",
            value=round(ours_s / indexed_s, 3),
            unit="x",
            display=f"{ours_s / indexed_s:.1f}x ({fmt_us(ours_s)} vs {fmt_us(indexed_s)}; the "
            f"indexes alone make the floor {indexed_s / floor_s:.1f}x)",
            command=cmd,
            details={"indexed_floor_seconds": spread(indexed_floors)},
        )
    )
    with_codec = floor_s + parse_s + dump_s
    result.figures.append(
        Figure(
            id="embedded.sqlite.cost_over_floor_with_codec",
            name="Embedded: our cost per step / (raw CAS + enqueue + one snapshot "
            "from_json + to_json)",
            value=round(ours_s / with_codec, 3),
            unit="x",
            display=f"{ours_s / with_codec:.1f}x ({fmt_us(ours_s)} vs {fmt_us(with_codec)}: "
            f"floor {fmt_us(floor_s)} + from_json {fmt_us(parse_s)} + to_json "
            f"{fmt_us(dump_s)})",
            command=cmd,
            details={"from_json_s": parse_s, "to_json_s": dump_s, "floor_s": floor_s},
        )
    )
    ours_w = _per_step_written(written)
    floor_w_med = _per_step_written(floor_written)
    indexed_w_med = _per_step_written(indexed_written)
    if ours_w is not None and floor_w_med:
        result.figures.append(
            Figure(
                id="embedded.sqlite.written_over_floor",
                name="Embedded: bytes written to disk per step (WAL + checkpoints) / the floor's",
                value=round(ours_w / floor_w_med, 3),
                unit="x",
                display=f"{ours_w / floor_w_med:.1f}x ({fmt_bytes(ours_w)} vs "
                f"{fmt_bytes(floor_w_med)}; indexed floor "
                f"{fmt_bytes(indexed_w_med or 0)})",
                command=cmd,
                details={
                    "ours": written,
                    "floor": floor_written,
                    "indexed_floor": indexed_written,
                },
            )
        )

    # Where the time goes, from the instrumented run.
    steps_p = profiled.steps
    per_step_p = profiled.seconds / steps_p
    # The wrapped parts never nest (the engine and the step log run inside dispatch, but
    # outside the store and scheduler calls), so their sum counts no time twice.
    totals = {k: sum(v) for k, v in profiled.calls.items()}
    breakdown = {k: v / steps_p for k, v in totals.items()}
    breakdown["other (dispatcher logic, asyncio tasks and wake-ups, worker loop)"] = (
        profiled.seconds - sum(totals.values())
    ) / steps_p
    ordered = sorted(breakdown.items(), key=lambda kv: -kv[1])
    result.figures.append(
        Figure(
            id="embedded.sqlite.profile_per_step",
            name=f"Embedded: where a step's time goes (instrumented run of {sz.profile_runs} runs, "
            "one delivery at a time)",
            value=round(per_step_p * 1e6, 1),
            unit="us/step",
            display=f"{fmt_us(per_step_p)}/step: "
            + "; ".join(f"{name.split(' (')[0]} {fmt_us(v)}" for name, v in ordered),
            command=cmd,
            details={
                "per_step_s": {k: round(v, 9) for k, v in breakdown.items()},
                "instrumented_seconds": profiled.seconds,
                "steps": steps_p,
            },
        )
    )
    result.notes.append(
        f"Throughput: {sz.runs} runs started (not timed: {fmt_us(run.start_seconds)} for all), "
        f"then the worker loop timed until the last completes; median of {sz.repeats} runs. "
        f"Runs loop on one node with retention={RETENTION}; their snapshots are "
        f"{fmt_bytes(median(sizes_b))}. The node's executor is an async function (a plain "
        "function adds the hand-over to a thread, which the engine section times)."
    )
    result.notes.append(
        "Floor: a separate SQLite file with the same pragmas; per step one UPDATE ... WHERE "
        "id = ? AND version = ? of a row of the same size and one INSERT into a messages "
        "table (primary key only), each in its own transaction, as our store and scheduler "
        "commit. It does no JSON and no Python beyond the two calls. The 'indexed' floor runs "
        "the same two statements on tables with refluxo's columns and secondary indexes."
    )
    result.notes.append(
        "Where the time goes (instrumented run; wrapping adds a little to each part): "
        + "; ".join(f"{name}: {fmt_us(v)} ({v / per_step_p:.0%})" for name, v in ordered)
        + f". Snapshot codec alone on a typical snapshot: from_json {fmt_us(parse_s)}, "
        f"to_json {fmt_us(dump_s)}; the raw floor is {fmt_us(floor_s)}."
    )
    sqlite_parts = [
        k
        for k in profiled.calls
        if k.startswith(("store.", "scheduler.schedule", "scheduler mark", "scheduler lease"))
    ]
    spikes: list[str] = []
    for name in sqlite_parts:
        calls = sorted(profiled.calls[name])
        top = calls[int(len(calls) * 0.99) :]
        spikes.append(
            f"{name.split(' (')[0]}: median {fmt_us(median(calls))}, mean "
            f"{fmt_us(sum(calls) / len(calls))}, slowest 1% of calls "
            f"{sum(top) / sum(calls):.0%} of its time"
        )
    result.notes.append(
        "Each store and scheduler call (a lease call covers up to "
        f"{CONCURRENCY} messages): "
        + "; ".join(spikes)
        + ". The median is the call's own cost; the gap to the mean is a slow tail, which on "
        "a busy machine is mostly the process being preempted or collecting garbage (see the "
        "load average above), and otherwise WAL checkpoints. Per step our store and "
        "scheduler commit two write transactions, as the floor does: the save, and the schedule, "
        "which also leases the worker its next message and marks delivered ones done in "
        "batches; lease and mark-done transactions of their own are rare."
    )
    return result


def run(cfg: Config) -> SectionResult:
    return asyncio.run(_run(cfg))
