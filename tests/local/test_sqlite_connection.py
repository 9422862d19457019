"""The connection the SQLite store and scheduler of one process share per file."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from refluxo.core.model import DispatchMessage
from refluxo.local import SQLiteScheduler, SQLiteStateStore
from refluxo.testing.store import snapshot


async def test_a_store_and_a_scheduler_on_one_file_share_one_connection_until_both_close(
    tmp_path: Path,
) -> None:
    path = tmp_path / "runtime.db"
    store, scheduler = SQLiteStateStore(path), SQLiteScheduler(path)
    elsewhere = SQLiteStateStore(tmp_path / "other.db")
    try:
        await store.create(snapshot("run-1"))
        await scheduler.schedule(DispatchMessage(run_id="run-1", version=0))
        await elsewhere.create(snapshot("run-1"))
        shared = store._database._shared
        assert shared is not None and scheduler._database._shared is shared
        assert elsewhere._database._shared is not shared
        store.close()
        # The scheduler still has it; the store opens it again on its next call.
        assert [m.key for m in await scheduler.list_messages()] == ["run-1.0.0"]
        assert (await store.load("run-1")).version == 0
        assert store._database._shared is scheduler._database._shared
    finally:
        store.close()
        scheduler.close()
        elsewhere.close()
    # Both closed: the connection is too, and a new object opens a new one.
    again = SQLiteStateStore(path)
    try:
        assert (await again.load("run-1")).version == 0
        assert again._database._shared is not shared
    finally:
        again.close()


async def test_objects_with_another_busy_timeout_get_their_own_connection(
    tmp_path: Path,
) -> None:
    path = tmp_path / "runtime.db"
    first, second = SQLiteStateStore(path), SQLiteStateStore(path, busy_timeout_ms=50)
    try:
        await first.create(snapshot("run-1"))
        assert (await second.load("run-1")).version == 0
        assert first._database._shared is not second._database._shared
    finally:
        first.close()
        second.close()


def test_threads_using_a_shared_connection_do_not_interleave_statements(
    tmp_path: Path,
) -> None:
    # Each thread runs its own event loop: saves on one, schedules on the other, at once.
    path = tmp_path / "runtime.db"
    store, scheduler = SQLiteStateStore(path), SQLiteScheduler(path)
    rounds = 200
    errors: list[BaseException] = []

    async def save_many() -> None:
        await store.create(snapshot("run-1"))
        for version in range(rounds):
            await store.save(snapshot("run-1", version=version + 1), expected_version=version)

    async def schedule_many() -> None:
        for version in range(rounds):
            await scheduler.schedule(DispatchMessage(run_id="run-2", version=version))

    def run(work: Coroutine[Any, Any, None]) -> None:
        try:
            asyncio.run(work)
        except BaseException as exc:
            errors.append(exc)

    threads = [
        threading.Thread(target=run, args=(save_many(),)),
        threading.Thread(target=run, args=(schedule_many(),)),
    ]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert errors == []

        async def check() -> None:
            assert (await store.load("run-1")).version == rounds
            assert len(await scheduler.list_messages(limit=1000)) == rounds

        asyncio.run(check())
    finally:
        store.close()
        scheduler.close()
