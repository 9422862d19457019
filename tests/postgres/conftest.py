"""Fixtures for the PostgreSQL adapter: a fresh database of the session's cluster per test."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from psycopg_pool import AsyncConnectionPool

from refluxo.postgres import open_pool
from tests.postgres.server import PostgresServer


@pytest.fixture
def pg_url(postgres_server: PostgresServer) -> str:
    """The URL of a new, empty database."""
    return postgres_server.new_database()


@pytest.fixture
async def pool(pg_url: str) -> AsyncIterator[AsyncConnectionPool[Any]]:
    opened = await open_pool(pg_url, max_size=20)
    yield opened
    await opened.close()
