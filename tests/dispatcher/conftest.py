"""The dispatcher scenarios run on every store: memory, SQLite, Firestore (its emulator) and
PostgreSQL (a throwaway server).

The Firestore and PostgreSQL cases start a server (once per session), so they are marked
``external_service``; ``-m "not external_service"`` runs the others alone.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from unittest import mock

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


@pytest.fixture(scope="session")
def dispatcher_firestore() -> Iterator[Any]:
    """The Firestore emulator for the dispatcher scenarios, started on first use."""
    from tests.gcp.emulators import EmulatorError, FirestoreEmulator

    emulator = FirestoreEmulator(project="refluxo-dispatcher")
    try:
        emulator.start()
    except EmulatorError as exc:
        if os.environ.get("REFLUXO_SKIP_GCP", "") == "1":
            pytest.skip(f"REFLUXO_SKIP_GCP=1 and the Firestore emulator did not start: {exc}")
        pytest.fail(f"the Firestore emulator could not start: {exc}", pytrace=False)
    try:
        yield emulator
    finally:
        emulator.stop()


@contextlib.asynccontextmanager
async def open_store(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock
) -> AsyncIterator[StateStore]:
    """A fresh store of ``kind`` (memory, sqlite, firestore or postgres) on ``clock``."""
    if kind == "memory":
        yield MemoryStateStore(clock=clock)
        return
    if kind == "firestore":
        from google.cloud import firestore

        from refluxo.gcp.store import FirestoreStateStore

        emulator = request.getfixturevalue("dispatcher_firestore")
        emulator.reset()
        with mock.patch.dict(os.environ, emulator.env):
            client = firestore.AsyncClient(project=emulator.project)
        try:
            yield FirestoreStateStore(client, clock=clock)
        finally:
            if client._firestore_api_internal is not None:
                await client._firestore_api.transport.close()
        return
    if kind == "postgres":
        from refluxo.postgres import PostgresStateStore, open_pool

        pool = await open_pool(request.getfixturevalue("postgres_server").new_database())
        try:
            yield PostgresStateStore(pool, clock=clock)
        finally:
            await pool.close()
        return
    store = _sqlite(tmp_path, clock)
    if store is None:
        pytest.fail("refluxo.local is not importable")
    try:
        yield store
    finally:
        close = getattr(store, "close", None)
        if close is not None:
            close()


@pytest.fixture(
    params=[
        "memory",
        "sqlite",
        pytest.param("firestore", marks=pytest.mark.external_service),
        pytest.param("postgres", marks=pytest.mark.external_service),
    ]
)
async def store(
    request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock
) -> AsyncIterator[StateStore]:
    async with open_store(request.param, request, tmp_path, clock) as opened:
        yield opened
