"""Shared fixtures for every test package."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

_HERE = Path(__file__).resolve().parent
# Every test under these folders starts an emulator, Node or a server process.
_EXTERNAL = (_HERE / "gcp", _HERE / "cloudflare", _HERE / "postgres")


@pytest.hookimpl(tryfirst=True)  # Before -m deselection looks at the marks.
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        parents = Path(str(item.path)).resolve().parents
        if any(folder in parents for folder in _EXTERNAL):
            item.add_marker(pytest.mark.external_service)


class FakeClock:
    """A settable clock in epoch milliseconds, for engines, stores and schedulers."""

    def __init__(self, start: int = 1_700_000_000_000) -> None:
        self.now = start

    def __call__(self) -> int:
        return self.now

    def advance(self, ms: int) -> None:
        self.now += ms


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[Any]:
    """A throwaway PostgreSQL cluster (tests/postgres/server.py), started on first use."""
    from tests.postgres.server import PostgresServer, PostgresUnavailable

    try:
        server = PostgresServer()
        server.start()
    except PostgresUnavailable as exc:
        pytest.fail(f"PostgreSQL could not start: {exc}", pytrace=False)
    try:
        yield server
    finally:
        server.stop()
