"""A settable clock for engines, stores and schedulers under test."""

from __future__ import annotations


class FakeClock:
    """A settable clock in epoch milliseconds, for engines, stores and schedulers."""

    def __init__(self, start: int = 1_700_000_000_000) -> None:
        self.now = start

    def __call__(self) -> int:
        return self.now

    def advance(self, ms: int) -> None:
        """Move the clock ``ms`` milliseconds on."""
        self.now += ms
