"""The :class:`Scheduler` on Cloudflare Queues: one queue message per :class:`DispatchMessage`.

The message body is the DispatchMessage's JSON object (``{"runId": ..., "version": ...,
"hop": ...}``), sent with ``delaySeconds`` when it has a time. The Worker's own queue consumer
(:meth:`refluxo.cloudflare.worker.RefluxoWorker.queue`) hands it to the dispatcher.

What Queues does not do, and what follows:

* **No deduplication.** Queues has no message ids a producer can set; scheduling the same
  key twice delivers twice, and delivery is at least once anyway. The dispatcher's version
  check makes the copies harmless.
* **Delays are whole seconds, up to 24 hours** (:mod:`.limits`). A time is rounded *up* to
  the next second, so a message never arrives early because of rounding; longer waits take
  several hops, which the dispatcher schedules (``max_delay_ms``).
"""

from __future__ import annotations

from collections.abc import Callable

from refluxo.core.model import DispatchMessage, now_ms
from refluxo.core.ports import Scheduler

from ._bindings import Queue
from ._errors import scheduler_error
from .limits import QUEUES_MAX_DELAY_SECONDS

__all__ = ["MAX_DELAY_SECONDS", "QueuesScheduler"]

MAX_DELAY_SECONDS = QUEUES_MAX_DELAY_SECONDS
"""The longest ``delaySeconds`` Queues accepts (24 hours)."""


class QueuesScheduler(Scheduler):
    """Sends each message to a Cloudflare Queue, delayed until its time.

    Args:
        queue: the queue's producer binding (``env.STEPS``).
        clock: epoch milliseconds now, to turn a time into a delay.
    """

    def __init__(self, queue: Queue, *, clock: Callable[[], int] = now_ms) -> None:
        self._queue = queue
        self._clock = clock

    @property
    def max_delay_ms(self) -> int:
        return MAX_DELAY_SECONDS * 1000

    async def schedule(self, message: DispatchMessage, *, at: int | None = None) -> None:
        delay_s = 0
        if at is not None:
            delay_ms = at - self._clock()
            if delay_ms > self.max_delay_ms:
                raise ValueError(
                    f"cannot schedule {message.key} {delay_ms} ms ahead: Queues delays at most "
                    f"{MAX_DELAY_SECONDS} s"
                )
            if delay_ms > 0:
                delay_s = min(-(-delay_ms // 1000), MAX_DELAY_SECONDS)  # rounded up
        body = message.to_dict()
        try:
            if delay_s:
                await self._queue.send(body, delaySeconds=delay_s)
            else:
                await self._queue.send(body)
        except Exception as exc:
            raise scheduler_error(exc, f"send {message.key}") from exc
