"""Shared fixtures for every test package."""

from __future__ import annotations

import pytest


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
