"""Parallel branches of one run: how many branch steps one run takes per second, per store.

A run forks into N branches of one quick node each; the N branch deliveries are dispatched at
once (``asyncio.gather``), as N Cloud Functions or Worker invocations would be. Every branch
step is one compare-and-set save of the run's snapshot; a save that loses to another branch is
re-applied on the stored run (no re-execution), so N branches cost N saves plus the lost ones.
The figures: branch steps per second for the whole fork (first dispatch to last save), and
saves attempted per branch step.

Memory and SQLite calls never wait, so a wrapper hands control to the event loop around each
call (as the dispatcher tests' ``YieldingStore`` does): otherwise the branches would take turns
instead of racing. The Firestore emulator is real I/O. The emulator is not Firestore: it has
no per-document write limit, while production Firestore sustains about one write per second
per document (Workers KV: one per second per key), which caps one run's branch steps there.

    python -m benchmarks.branches                       memory and SQLite, 2/8/32 branches
    python -m benchmarks.branches --store firestore     the Firestore emulator (needs gcloud)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any
from unittest import mock

from refluxo.core import Dispatcher, DispatchMessage, NodeDefinition, Snapshot, Workflow
from refluxo.core.memory import MemoryScheduler, MemoryStateStore
from refluxo.core.ports import StateStore

from .common import ROOT, load_module


class Counting(StateStore):
    """Counts saves and yields to the loop around every call (see the module's docstring)."""

    def __init__(self, inner: StateStore, yielding: bool) -> None:
        self.inner = inner
        self.yielding = yielding
        self.saves = 0

    async def _call(self, call: Awaitable[Any]) -> Any:
        if self.yielding:
            await asyncio.sleep(0)
        try:
            return await call
        finally:
            if self.yielding:
                await asyncio.sleep(0)

    async def create(self, snapshot: Snapshot) -> bool:
        created: bool = await self._call(self.inner.create(snapshot))
        return created

    async def load(self, run_id: str) -> Snapshot:
        loaded: Snapshot = await self._call(self.inner.load(run_id))
        return loaded

    async def save(self, snapshot: Snapshot, *, expected_version: int) -> None:
        self.saves += 1
        await self._call(self.inner.save(snapshot, expected_version=expected_version))


def fan(n: int) -> dict[str, Any]:
    ids = [f"b{i}" for i in range(n)]
    return {
        "nodes": [
            {"id": "start", "type": "work"},
            *({"id": b, "type": "work"} for b in ids),
            {"id": "merge", "type": "work", "join": "all"},
        ],
        "edges": [
            *({"id": f"s{b}", "source": "start", "target": b} for b in ids),
            *({"id": f"{b}m", "source": b, "target": "merge"} for b in ids),
        ],
    }


async def work(data: Any, ctx: Any, payload: Any, g: Any) -> Any:
    return {"ok": True}


async def one_fork(store: StateStore, n: int, run_id: str) -> tuple[float, float]:
    """(branch steps per second, saves per branch step) for one run forking into ``n``."""
    counting = Counting(store, yielding=not hasattr(store, "_client"))
    scheduler = MemoryScheduler()
    workflow = Workflow("fan", fan(n), {"work": NodeDefinition(work)})
    dispatcher = Dispatcher([workflow], counting, scheduler)
    await dispatcher.start("fan", run_id=run_id)
    for message in scheduler.pop_due():
        await dispatcher.dispatch(message)
    branches: list[DispatchMessage] = scheduler.pop_due()
    assert len(branches) == n, len(branches)
    saves_before = counting.saves
    started = time.perf_counter()
    for _ in range(10):
        results = await asyncio.gather(
            *(dispatcher.dispatch(m) for m in branches), return_exceptions=True
        )
        # a step that lost its save too often asks to be delivered again
        branches = [m for m, r in zip(branches, results, strict=True) if isinstance(r, Exception)]
        if not branches:
            break
    elapsed = time.perf_counter() - started
    assert not branches, f"{len(branches)} branch steps failed ten times"
    saves = counting.saves - saves_before
    for message in scheduler.pop_due():
        await dispatcher.dispatch(message)
    done = await counting.load(run_id)
    assert done.status == "completed", done.status
    return n / elapsed, saves / n


async def measure(kind: str, sizes: list[int], repeats: int) -> list[tuple[int, float, float]]:
    rows = []
    for n in sizes:
        rates, saves = [], []
        for r in range(repeats):
            async with open_store(kind) as store:
                rate, per = await one_fork(store, n, f"fork-{n}-{r}")
            rates.append(rate)
            saves.append(per)
        rows.append((n, statistics.median(rates), statistics.median(saves)))
    return rows


class open_store:
    emulator: Any = None

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.closers: list[Any] = []

    async def __aenter__(self) -> StateStore:
        if self.kind == "memory":
            return MemoryStateStore()
        if self.kind == "sqlite":
            from refluxo.local import SQLiteStateStore

            folder = tempfile.mkdtemp(prefix="refluxo-bench-")
            sqlite = SQLiteStateStore(Path(folder) / "runs.db")
            self.closers.append(sqlite.close)
            return sqlite
        from google.cloud import firestore

        from refluxo.gcp.store import FirestoreStateStore

        with mock.patch.dict(os.environ, open_store.emulator.env):
            client = firestore.AsyncClient(project=open_store.emulator.project)
        self.client = client
        return FirestoreStateStore(client)

    async def __aexit__(self, *exc: object) -> None:
        for close in self.closers:
            close()
        client = getattr(self, "client", None)
        if client is not None and client._firestore_api_internal is not None:
            await client._firestore_api.transport.close()


def _emulators() -> Any:
    return load_module(ROOT / "tests" / "gcp" / "emulators.py", "_refluxo_bench_emulators")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", action="append", choices=["memory", "sqlite", "firestore"])
    parser.add_argument("--branches", type=int, action="append")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    stores = args.store or ["memory", "sqlite"]
    sizes = args.branches or [2, 8, 32]
    print("| store | branches | branch steps/s (one run) | saves per branch step |")
    print("| --- | ---: | ---: | ---: |")
    for kind in stores:
        if kind == "firestore":
            emulator = _emulators().FirestoreEmulator(project="refluxo-bench-branches")
            emulator.start()
            open_store.emulator = emulator
        try:
            for n, rate, per in asyncio.run(measure(kind, sizes, args.repeats)):
                print(f"| {kind} | {n} | {rate:,.0f} | {per:.2f} |")
        finally:
            if kind == "firestore":
                emulator.stop()


if __name__ == "__main__":
    main()
