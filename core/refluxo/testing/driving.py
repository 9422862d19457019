"""Drive runs to their end through a dispatcher and a :class:`MemoryScheduler`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from refluxo.core.dispatcher import DispatchResult, RunService
from refluxo.core.memory import MemoryScheduler
from refluxo.core.model import DispatchMessage

from .clock import FakeClock

Deliver = Callable[[RunService, DispatchMessage], Awaitable[list[DispatchResult]]]
"""How one message reaches the dispatcher: once, twice, racing... (the fault to simulate)."""


async def deliver_once(dispatcher: RunService, message: DispatchMessage) -> list[DispatchResult]:
    """Deliver ``message`` once, as a queue that never duplicates would."""
    return [await dispatcher.dispatch(message)]


async def run_to_end(
    dispatcher: RunService,
    scheduler: MemoryScheduler,
    *,
    clock: FakeClock | None = None,
    deliver: Deliver = deliver_once,
    stop: Callable[[], Awaitable[bool]] | None = None,
    max_messages: int = 500,
) -> list[DispatchResult]:
    """Deliver the scheduler's messages until none is pending; return every result.

    With ``clock``, time moves on to each message that is due later, so sleeps, retries and
    timeouts happen at once; without it, the messages due now are delivered and the call
    returns when only later ones are left. ``stop`` is asked before time moves on: when it
    answers True the call returns instead (a person answering before a deadline).

    Raises:
        AssertionError: messages were still pending after ``max_messages`` deliveries.
    """
    results: list[DispatchResult] = []
    delivered = 0
    while delivered < max_messages:
        due = scheduler.pop_due()
        if not due:
            upcoming = scheduler.next_due()
            if upcoming is None or clock is None:
                return results
            if stop is not None and await stop():
                return results
            clock.now = max(clock.now, upcoming)
            continue
        for message in due:
            results.extend(await deliver(dispatcher, message))
            delivered += 1
    raise AssertionError(f"the runs did not settle within {max_messages} messages")
