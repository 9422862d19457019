"""What users write: node definitions, their retry policies and the results executors return."""

from __future__ import annotations

import inspect
import random
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel

from .model import NodeResult


class Context(Mapping[str, list[NodeResult]]):
    """What executors and transforms see of a run: node id -> its results, oldest first.

    Read-only. With a retention limit the lists hold the newest results only; :meth:`count`
    still says how many a node produced in all.
    """

    __slots__ = ("_counts", "_results")

    def __init__(
        self, results: Mapping[str, list[NodeResult]], counts: Mapping[str, int] | None = None
    ) -> None:
        self._results = results
        self._counts = counts or {}

    def __getitem__(self, node_id: str) -> list[NodeResult]:
        return list(self._results[node_id])

    def __iter__(self) -> Iterator[str]:
        return iter(self._results)

    def __len__(self) -> int:
        return len(self._results)

    def count(self, node_id: str) -> int:
        """How many results ``node_id`` produced, trimmed ones included."""
        return self._counts.get(node_id, len(self._results.get(node_id, ())))

    def last(self, node_id: str) -> Any:
        """The output of ``node_id``'s latest result, or None when it has none."""
        results = self._results.get(node_id)
        return results[-1].output if results else None


Executor = Callable[[Any, Context, Any, Any], Awaitable[Any] | Any]
"""``executor(data, context, external_payload, globals)``; async or plain."""


def is_async(executor: Executor) -> bool:
    """Whether ``executor`` is an ``async`` function, or an object whose ``__call__`` is one."""
    call = getattr(executor, "__call__", None)  # noqa: B004 (an instance's async __call__)
    return inspect.iscoroutinefunction(executor) or inspect.iscoroutinefunction(call)


@dataclass(frozen=True)
class RetryPolicy:
    """How often, and how far apart, a failing node is tried.

    Args:
        max_attempts: attempts in all, the first one included (3 means one try and two retries).
        interval: milliseconds before the first retry.
        backoff: ``"fixed"`` keeps ``interval``; ``"exponential"`` doubles it after each attempt.
        max_interval: an upper bound on any delay, in milliseconds.
        jitter: a fraction in [0, 1]; each delay is scaled by a random factor in
            ``[1 - jitter, 1 + jitter]`` so that many failing runs do not retry in lockstep.
    """

    max_attempts: int
    interval: float = 1000
    backoff: Literal["fixed", "exponential"] = "fixed"
    max_interval: float | None = None
    jitter: float = 0.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts counts the first attempt and must be at least 1")
        if self.interval < 0:
            raise ValueError("interval must not be negative")
        if self.backoff not in ("fixed", "exponential"):
            raise ValueError(f"backoff must be 'fixed' or 'exponential', not {self.backoff!r}")
        if not 0 <= self.jitter <= 1:
            raise ValueError("jitter must be between 0 and 1")

    def delay_ms(self, attempt: int, rng: random.Random | None = None) -> int:
        """The delay before the attempt after ``attempt`` (1-based), in milliseconds."""
        delay = float(self.interval)
        if self.backoff == "exponential":
            delay *= 2 ** (attempt - 1)
        if self.max_interval is not None:
            delay = min(delay, self.max_interval)
        if self.jitter:
            delay *= (rng or random).uniform(1 - self.jitter, 1 + self.jitter)
        return max(0, round(delay))


@dataclass(frozen=True)
class NodeDefinition:
    """The behaviour behind a node ``type``.

    Args:
        executor: ``executor(data, context, external_payload, globals)``, async or plain. It
            returns a :class:`StepResult` or any JSON-compatible value (taken as its ``data``).
            Executors run at least once per step: keep their side effects idempotent.
        retry_policy: retries for exceptions the executor raises; none means fail at once.
        input_model: a pydantic model that validates the node's (transformed) data; the
            executor then receives the model instance. Invalid input fails the run at once.
        output_model: a pydantic model that validates what the executor returns.
        timeout: how long one attempt may run, in seconds or as a ``timedelta``; past it the
            attempt fails with a ``TimeoutError`` (retried as the ``retry_policy`` says). None
            takes the workflow's ``step_timeout``.
        thread: run a plain (not async) executor in a thread, so that blocking calls in it do
            not stop the event loop (the default). False runs it inline on the event loop,
            which saves the hop to a thread for quick code that never blocks; its timeout
            then cannot interrupt it.
    """

    executor: Executor
    retry_policy: RetryPolicy | None = None
    input_model: type[BaseModel] | None = None
    output_model: type[BaseModel] | None = None
    timeout: float | timedelta | None = None
    thread: bool = True

    def __post_init__(self) -> None:
        seconds = self.timeout_s
        if seconds is not None and not seconds > 0:
            raise ValueError(f"timeout must be positive, not {self.timeout!r}")
        # Read at every step: worked out once (not a field, so equality and repr ignore it).
        object.__setattr__(self, "_is_async", is_async(self.executor))

    @property
    def is_async(self) -> bool:
        """Whether ``executor`` is async (a coroutine function, or has an async ``__call__``)."""
        known = self.__dict__.get("_is_async")
        return is_async(self.executor) if known is None else bool(known)

    @property
    def timeout_s(self) -> float | None:
        """``timeout`` in seconds, or None."""
        if self.timeout is None:
            return None
        if isinstance(self.timeout, timedelta):
            return self.timeout.total_seconds()
        return float(self.timeout)


@dataclass(frozen=True)
class Wait:
    """A durable wait requested by an executor (see :class:`StepResult`)."""

    kind: Literal["sleep", "event"]
    until: int | None = None
    delay_ms: int | None = None
    event: str | None = None


def _to_ms(value: timedelta | float) -> int:
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    if seconds < 0:
        raise ValueError("a duration must not be negative")
    return round(seconds * 1000)


def _epoch_ms(value: datetime | int) -> int:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("a wake-up time must be timezone-aware")
        return round(value.timestamp() * 1000)
    return int(value)


@dataclass(frozen=True)
class StepResult:
    """What an executor returns when it needs more than a plain value.

    Args:
        data: the node's output, recorded in the snapshot (must be JSON-compatible).
        next_handle: the edge ``sourceHandle`` to follow; None follows the edge without one.
        pause: stop the run until an event arrives; the node then runs again with the event's
            payload as ``external_payload``.
        wait: a durable sleep or event wait; build it with :meth:`sleep` or
            :meth:`wait_for_event`.
    """

    data: Any = None
    next_handle: str | None = None
    pause: bool = False
    wait: Wait | None = field(default=None)

    @classmethod
    def sleep(
        cls,
        duration: timedelta | float | None = None,
        *,
        until: datetime | int | None = None,
        data: Any = None,
        next_handle: str | None = None,
    ) -> StepResult:
        """Record ``data``, then sleep before the next node runs.

        Args:
            duration: how long, as a ``timedelta`` or in seconds.
            until: or when: an aware ``datetime`` or epoch milliseconds.
        """
        if (duration is None) == (until is None):
            raise ValueError("sleep() takes a duration or an until time, not both")
        if duration is not None:
            wait = Wait(kind="sleep", delay_ms=_to_ms(duration))
        else:
            assert until is not None
            wait = Wait(kind="sleep", until=_epoch_ms(until))
        return cls(data=data, next_handle=next_handle, wait=wait)

    @classmethod
    def wait_for_event(
        cls, event: str | None = None, *, timeout: timedelta | float | None = None
    ) -> StepResult:
        """Pause until an event (named ``event``, or any when None) arrives.

        The node then runs again with the event's payload. With a ``timeout`` (a ``timedelta``
        or seconds) the run instead follows the node's ``"timeout"`` edge when no event came in
        time, and fails when the node has no such edge.
        """
        delay = None if timeout is None else _to_ms(timeout)
        return cls(pause=True, wait=Wait(kind="event", event=event, delay_ms=delay))
