"""The one delivery decision every scheduler asks: ack, retry after a delay, or dead-letter."""

from __future__ import annotations

import pytest

from refluxo.core.delivery import Decision, Redelivery
from refluxo.core.errors import SchedulerError, StoreError

BUSY = StoreError("the database is busy", transient=True)
BROKEN = StoreError("the table is missing", transient=False)
BUG = RuntimeError("a bug")


@pytest.mark.parametrize(
    ("policy", "result", "attempts", "expected"),
    [
        # Anything the dispatcher returned is acknowledged, whatever the attempt.
        (Redelivery(), "stepped", 1, Decision("ack")),
        (Redelivery(max_attempts=2), "stale", 7, Decision("ack")),
        (Redelivery(), None, 1, Decision("ack")),
        # A transient failure backs off exponentially up to the cap.
        (
            Redelivery(base_ms=1_000, max_ms=5_000),
            BUSY,
            1,
            Decision("retry", 1_000, True, "StoreError: the database is busy"),
        ),
        (Redelivery(base_ms=1_000, max_ms=5_000), BUSY, 3, Decision("retry", 4_000, True, None)),
        (Redelivery(base_ms=1_000, max_ms=5_000), BUSY, 4, Decision("retry", 5_000, True, None)),
        # A permanent failure or a bug backs off the same way, unless slow_permanent.
        (Redelivery(base_ms=1_000, max_ms=5_000), BUG, 2, Decision("retry", 2_000, False, None)),
        (
            Redelivery(base_ms=1_000, max_ms=5_000, slow_permanent=True),
            BROKEN,
            1,
            Decision("retry", 5_000, False, "StoreError: the table is missing"),
        ),
        (
            Redelivery(base_ms=1_000, max_ms=5_000, slow_permanent=True),
            BUSY,
            1,
            Decision("retry", 1_000, True, None),
        ),
        # The max_attempts-th failure dead-letters, transient or not.
        (Redelivery(max_attempts=3), BUSY, 2, Decision("retry", 2_000, True, None)),
        (Redelivery(max_attempts=3), BUSY, 3, Decision("dead_letter", 0, True, None)),
        (
            Redelivery(max_attempts=1),
            BUG,
            1,
            Decision("dead_letter", 0, False, "RuntimeError: a bug"),
        ),
        # Without max_attempts the platform's queue dead-letters: never here.
        (Redelivery(), BUG, 10_000, Decision("retry", 300_000, False, None)),
    ],
)
def test_the_decision_table(
    policy: Redelivery, result: str | BaseException | None, attempts: int, expected: Decision
) -> None:
    decision = policy.decide(result, attempts)
    assert (decision.action, decision.delay_ms, decision.transient) == (
        expected.action,
        expected.delay_ms,
        expected.transient,
    )
    if expected.error is not None:
        assert decision.error == expected.error
    if expected.action == "ack":
        assert decision.error is None


def test_http_status_is_200_to_ack_503_for_transient_and_500_for_permanent() -> None:
    policy = Redelivery()
    assert policy.decide("stepped").http_status == 200
    assert policy.decide(SchedulerError("queue down", transient=True)).http_status == 503
    assert policy.decide(BROKEN).http_status == 500
    assert policy.decide(BUG).http_status == 500


def test_delay_seconds_rounds_up() -> None:
    assert Decision("retry", 1_500).delay_seconds == 2
    assert Decision("retry", 2_000).delay_seconds == 2
    assert Decision("ack").delay_seconds == 0


def test_exhausted_counts_failed_attempts_against_max_attempts() -> None:
    assert not Redelivery().exhausted(1_000)
    assert [Redelivery(max_attempts=3).exhausted(n) for n in (1, 2, 3, 4)] == [
        False,
        False,
        True,
        True,
    ]


def test_max_attempts_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="max_attempts"):
        Redelivery(max_attempts=0)
