"""How a delivery ends: acknowledged, delivered again after a delay, or dead-lettered.

Every scheduler hands a message to :meth:`Dispatcher.dispatch` and then has to say what
becomes of it: the local scheduler marks its row, a Worker calls ``ack()`` or ``retry()`` on
the queue message, a Cloud Function answers Cloud Tasks with a status. They all ask
:meth:`Redelivery.decide` (``outcome or exception, attempts -> ack | retry(delay) |
dead-letter``), so the rule is written once:

=============================================  ==============================================
the dispatcher returned (any outcome), or the   ``ack``: delivering it again cannot help
message is malformed (``outcome`` given)
a transient :class:`BackendError`               ``retry`` after ``base_ms * 2 ** (attempts - 1)``,
                                                at most ``max_ms``
any other exception (a permanent backend        ``retry`` after the same backoff, or after
error, a bug)                                   ``max_ms`` when ``slow_permanent``
the failed attempt was the ``max_attempts``-th  ``dead_letter`` (when the scheduler counts
                                                attempts itself; a platform's queue counts
                                                them otherwise)
=============================================  ==============================================

A platform that answers over HTTP maps the decision to a status with
:attr:`Decision.http_status`: 200 to acknowledge, 503 for a transient failure and 500 for a
permanent one (both delivered again by the platform).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .errors import BackendError

Action = Literal["ack", "retry", "dead_letter"]


@dataclass(frozen=True)
class Decision:
    """What to do with one delivery.

    Attributes:
        action: ``ack``, ``retry`` or ``dead_letter``.
        delay_ms: how long to wait before the next delivery (``retry`` only; else 0).
        transient: the failure may go away by itself (a busy backend); False for an ``ack``.
        error: what the failed attempt raised, as ``Type: message``; None for an ``ack``.
    """

    action: Action
    delay_ms: int = 0
    transient: bool = False
    error: str | None = None

    @property
    def delay_seconds(self) -> int:
        """:attr:`delay_ms` in whole seconds, rounded up (what queue APIs take)."""
        return -(-self.delay_ms // 1000)

    @property
    def http_status(self) -> int:
        """The status that tells an HTTP push queue the same: 200, or 503 / 500 to retry."""
        if self.action == "ack":
            return 200
        return 503 if self.transient else 500


def is_transient(failure: BaseException) -> bool:
    """True when ``failure`` is a :class:`BackendError` that says it may go away by itself."""
    return isinstance(failure, BackendError) and failure.transient


@dataclass(frozen=True)
class Redelivery:
    """The redelivery policy of a scheduler, and the one decision all schedulers share.

    Args:
        base_ms: the delay before the first redelivery; each further one doubles it.
        max_ms: the longest delay between deliveries.
        max_attempts: failed attempts before a message is dead-lettered; None when the
            platform's queue counts them itself (Queues' ``max_retries``, Cloud Tasks'
            ``max-attempts``).
        slow_permanent: a failure that is not transient waits ``max_ms`` instead of the
            backoff (it will hardly go away in a second).
    """

    base_ms: int = 1_000
    max_ms: int = 300_000
    max_attempts: int | None = None
    slow_permanent: bool = False

    def __post_init__(self) -> None:
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")

    def backoff_ms(self, attempts: int, *, transient: bool = True) -> int:
        """The delay after ``attempts`` failed attempts (counted from 1)."""
        if not transient and self.slow_permanent:
            return self.max_ms
        exponent = min(max(attempts, 1) - 1, 30)
        return min(self.base_ms * (1 << exponent), self.max_ms)

    def exhausted(self, attempts: int) -> bool:
        """True when ``attempts`` failed attempts leave none: the message is dead-lettered."""
        return self.max_attempts is not None and attempts >= self.max_attempts

    def decide(self, result: str | BaseException | None, attempts: int = 1) -> Decision:
        """What to do with a delivery whose attempt number ``attempts`` ended in ``result``.

        Args:
            result: the dispatcher's outcome (or None, or why the message was refused
                unread): acknowledged; or the exception the attempt raised.
            attempts: this attempt's number, counted from 1 (the failed ones included).
        """
        if not isinstance(result, BaseException):
            return Decision("ack")
        transient = is_transient(result)
        error = f"{type(result).__name__}: {result}"
        if self.exhausted(attempts):
            return Decision("dead_letter", transient=transient, error=error)
        delay = self.backoff_ms(attempts, transient=transient)
        return Decision("retry", delay_ms=delay, transient=transient, error=error)
