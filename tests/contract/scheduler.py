"""The contract of :class:`refluxo.core.ports.Scheduler`, written once, passed by every adapter.

An adapter's test module subclasses :class:`SchedulerContract` and defines its fixtures
(fsspec's ``tests/abstract`` style). Fixtures an adapter defines:

* ``scheduler``: a fresh scheduler whose deliveries the test can observe, on the real clock.
* ``next_delivery``: an async callable ``(timeout_s) -> DispatchMessage | None`` returning the
  next message the scheduler delivered (in arrival order), or None when none arrived within
  ``timeout_s``. For a worker-loop scheduler it is a loop feeding a queue; for a cloud one, an
  HTTP target the platform calls.
* ``scheduler_capabilities``: a frozenset of names from :data:`SCHEDULER_CAPABILITIES`. A test
  that needs a capability the adapter does not declare is skipped, naming it.

Fixtures with defaults an adapter may override: ``early_tolerance_ms`` (how early a delivery
may arrive, for platforms whose clocks differ), ``delivery_timeout_s`` (how long a due message
may take to arrive) and ``quiet_period_s`` (how long to watch for a delivery that must not
come).

Each test is named after one sentence of the port's docstrings. Waits are bounded polls of
``next_delivery``, never bare sleeps.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from refluxo.core.model import DispatchMessage, now_ms
from refluxo.core.ports import Scheduler

NextDelivery = Callable[[float], Awaitable[DispatchMessage | None]]
"""``await next_delivery(timeout_s)``: the next delivered message, or None on timeout."""

SCHEDULER_CAPABILITIES: dict[str, str] = {
    "deduplicates": (
        "scheduling a key that was scheduled before (pending or delivered) collapses into one "
        "delivery"
    ),
}
"""Every capability a scheduler may declare, with what declaring it promises."""

# How far ahead a timed message is scheduled: long enough that "not before" means something
# on a platform with second-granularity timers, short enough to keep the suite fast.
AHEAD_MS = 1500


def check_known(declared: frozenset[str]) -> None:
    """Fail when the adapter declares a capability the contract does not know (a typo)."""
    unknown = set(declared) - SCHEDULER_CAPABILITIES.keys()
    if unknown:
        pytest.fail(f"scheduler_capabilities names unknown capabilities: {sorted(unknown)}")


def require(declared: frozenset[str], capability: str) -> None:
    """Skip the calling test unless the adapter declares ``capability`` (fail on a typo)."""
    check_known(declared)
    if capability not in declared:
        pytest.skip(
            f"the scheduler does not declare {capability!r}: {SCHEDULER_CAPABILITIES[capability]}"
        )


async def collect(
    next_delivery: NextDelivery, want: set[str], timeout_s: float
) -> list[DispatchMessage]:
    """Every delivery until each key of ``want`` has arrived; fails after ``timeout_s``."""
    deadline = now_ms() + timeout_s * 1000
    got: list[DispatchMessage] = []
    while not want <= {m.key for m in got}:
        left = (deadline - now_ms()) / 1000
        message = await next_delivery(left) if left > 0 else None
        if message is None:
            missing = sorted(want - {m.key for m in got})
            pytest.fail(f"not delivered within {timeout_s} s: {missing}")
        got.append(message)
    return got


async def quiet(next_delivery: NextDelivery, period_s: float) -> list[DispatchMessage]:
    """Every delivery that arrives within ``period_s`` (usually expected to be none)."""
    deadline = now_ms() + period_s * 1000
    got: list[DispatchMessage] = []
    while (left := (deadline - now_ms()) / 1000) > 0:
        message = await next_delivery(left)
        if message is None:
            break
        got.append(message)
    return got


class SchedulerContract:
    """Mixin of contract tests for a :class:`Scheduler`; see the module docstring."""

    # Fixtures each adapter must define. --------------------------------------------------

    @pytest.fixture
    def scheduler(self) -> Scheduler:
        """A fresh scheduler on the real clock, delivering to ``next_delivery``."""
        raise NotImplementedError("a SchedulerContract subclass must define 'scheduler'")

    @pytest.fixture
    def next_delivery(self) -> NextDelivery:
        """``await next_delivery(timeout_s)``: the next delivered message or None."""
        raise NotImplementedError("a SchedulerContract subclass must define 'next_delivery'")

    @pytest.fixture
    def scheduler_capabilities(self) -> frozenset[str]:
        """The names from SCHEDULER_CAPABILITIES that the scheduler honours."""
        raise NotImplementedError(
            "a SchedulerContract subclass must define 'scheduler_capabilities' (a frozenset)"
        )

    # Fixtures with defaults. -------------------------------------------------------------

    @pytest.fixture
    def early_tolerance_ms(self) -> int:
        """How early a timed delivery may arrive (clock differences, timer granularity)."""
        return 50

    @pytest.fixture
    def delivery_timeout_s(self) -> float:
        """How long a due message may take to arrive before the test fails."""
        return 5.0

    @pytest.fixture
    def quiet_period_s(self) -> float:
        """How long to watch for a delivery that must not come."""
        return 0.3

    # "Delivers DispatchMessages to the dispatcher, now or at a given time." ---------------

    async def test_delivers_dispatch_messages_to_the_dispatcher_with_run_id_version_and_hop(
        self, scheduler: Scheduler, next_delivery: NextDelivery, delivery_timeout_s: float
    ) -> None:
        message = DispatchMessage(run_id="Run_2.a:b-" + "r" * 100, version=41, hop=3)
        await scheduler.schedule(message)
        got = await next_delivery(delivery_timeout_s)
        assert got == message
        assert got is not None and (got.run_id, got.version, got.hop) == (message.run_id, 41, 3)

    async def test_delivers_the_branch_a_message_names_as_its_own_delivery(
        self, scheduler: Scheduler, next_delivery: NextDelivery, delivery_timeout_s: float
    ) -> None:
        run = DispatchMessage(run_id="run-b", version=3)
        branches = [DispatchMessage(run_id="run-b", version=3, branch=f"7-{i}") for i in (0, 1)]
        for message in (run, *branches):
            await scheduler.schedule(message)
        got = await collect(next_delivery, {m.key for m in (run, *branches)}, delivery_timeout_s)
        assert {m.key: m for m in got} == {m.key: m for m in (run, *branches)}
        assert {m.branch for m in got} == {None, "7-0", "7-1"}

    async def test_delivery_is_at_least_once(
        self, scheduler: Scheduler, next_delivery: NextDelivery, delivery_timeout_s: float
    ) -> None:
        messages = [DispatchMessage(run_id=f"run-{i}", version=i % 3, hop=0) for i in range(6)]
        for message in messages:
            await scheduler.schedule(message)
        got = await collect(next_delivery, {m.key for m in messages}, delivery_timeout_s)
        assert {m.key: m for m in got} == {m.key: m for m in messages}

    # schedule --------------------------------------------------------------------------

    async def test_schedule_delivers_message_as_soon_as_possible_when_at_is_none(
        self, scheduler: Scheduler, next_delivery: NextDelivery, delivery_timeout_s: float
    ) -> None:
        message = DispatchMessage(run_id="run-1", version=0)
        await scheduler.schedule(message, at=None)
        assert await next_delivery(delivery_timeout_s) == message

    async def test_schedule_delivers_message_at_epoch_milliseconds_at(
        self,
        scheduler: Scheduler,
        next_delivery: NextDelivery,
        early_tolerance_ms: int,
        delivery_timeout_s: float,
    ) -> None:
        message = DispatchMessage(run_id="run-1", version=1)
        at = now_ms() + AHEAD_MS
        await scheduler.schedule(message, at=at)
        too_early = await next_delivery(max(at - early_tolerance_ms - now_ms(), 0) / 1000)
        assert too_early is None, f"delivered {at - now_ms()} ms before at"
        got = await next_delivery(delivery_timeout_s)
        arrived = now_ms()
        assert got == message
        assert arrived >= at - early_tolerance_ms

    async def test_a_time_in_the_past_means_as_soon_as_possible(
        self, scheduler: Scheduler, next_delivery: NextDelivery, delivery_timeout_s: float
    ) -> None:
        message = DispatchMessage(run_id="run-1", version=2)
        await scheduler.schedule(message, at=now_ms() - 3_600_000)
        assert await next_delivery(delivery_timeout_s) == message

    async def test_schedule_raises_value_error_when_at_is_more_than_max_delay_ms_from_now(
        self, scheduler: Scheduler
    ) -> None:
        message = DispatchMessage(run_id="run-1", version=3)
        with pytest.raises(ValueError):
            await scheduler.schedule(message, at=now_ms() + scheduler.max_delay_ms + 60_000)

    async def test_max_delay_ms_is_the_longest_delay_schedule_accepts(
        self, scheduler: Scheduler
    ) -> None:
        assert scheduler.max_delay_ms > AHEAD_MS
        # A minute's margin for the time between the two clock readings.
        far = DispatchMessage(run_id="run-1", version=4)
        await scheduler.schedule(far, at=now_ms() + scheduler.max_delay_ms - 60_000)

    async def test_scheduling_a_message_whose_key_was_scheduled_before_is_collapsed_into_one(
        self,
        scheduler: Scheduler,
        next_delivery: NextDelivery,
        scheduler_capabilities: frozenset[str],
        delivery_timeout_s: float,
        quiet_period_s: float,
    ) -> None:
        require(scheduler_capabilities, "deduplicates")
        message = DispatchMessage(run_id="run-1", version=5)
        sentinel = DispatchMessage(run_id="run-2", version=5)
        await scheduler.schedule(message)
        await scheduler.schedule(message)
        await scheduler.schedule(message, at=now_ms() - 1000)
        await scheduler.schedule(sentinel)
        got = await collect(next_delivery, {message.key, sentinel.key}, delivery_timeout_s)
        got += await quiet(next_delivery, quiet_period_s)
        assert [m.key for m in got].count(message.key) == 1
        # A late duplicate, after the delivery, collapses too.
        await scheduler.schedule(message)
        assert await quiet(next_delivery, quiet_period_s) == []

    async def test_a_scheduler_that_cannot_deduplicate_delivers_both(
        self,
        scheduler: Scheduler,
        next_delivery: NextDelivery,
        scheduler_capabilities: frozenset[str],
        delivery_timeout_s: float,
    ) -> None:
        check_known(scheduler_capabilities)
        if "deduplicates" in scheduler_capabilities:
            pytest.skip("the scheduler declares 'deduplicates'; its collapse is tested instead")
        message = DispatchMessage(run_id="run-1", version=6)
        await scheduler.schedule(message)
        await scheduler.schedule(message)
        first = await next_delivery(delivery_timeout_s)
        second = await next_delivery(delivery_timeout_s)
        assert first == message
        assert second == message
