"""``refluxo replay``: run a run again from its snapshot, offline, in memory.

For debugging a failed run with the code on this machine, and for tests of workflows in CI:
no server, no store, no queue. Time is simulated: a sleep, a retry's backoff or an event's
deadline is reached at once, by moving the dispatcher's clock to it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from refluxo.core.dispatcher import Dispatcher, Workflow
from refluxo.core.memory import MemoryScheduler, MemoryStateStore
from refluxo.core.model import Snapshot, now_ms

_FOREVER = 2**62


class _Clock:
    def __init__(self) -> None:
        self.now = now_ms()

    def __call__(self) -> int:
        return self.now


async def replay(
    workflows: Iterable[Workflow],
    snapshot: Snapshot,
    *,
    from_node: str | None = None,
    payload: Any = None,
    max_steps: int = 1000,
) -> Snapshot:
    """Run ``snapshot`` on ``workflows`` until it finishes, waits for an event, or
    ``max_steps`` steps ran; return its last snapshot.

    With ``from_node``, a new run starts at that node with the snapshot's results before it
    (as ``POST /runs/{id}/rerun`` does) and ``payload`` as its input. Without it, a failed run
    continues from the node that failed (as a retry, even when it was cancelled or moved), and
    a run waiting for an event gets ``payload`` as that event when one is given.

    Raises:
        WorkflowNotFound, WorkflowMismatch: the workflows given do not host the run's
            workflow with the same shape.
        NodeNotFound: ``from_node`` is not a node of the workflow.
    """
    clock = _Clock()
    store = MemoryStateStore(clock=clock)
    scheduler = MemoryScheduler(clock=clock)
    dispatcher = Dispatcher(workflows, store, scheduler, clock=clock)
    metadata = {
        k: v for k, v in snapshot.metadata.items() if k not in ("movedTo", "cancelled", "refused")
    }
    source = snapshot.model_copy(update={"metadata": metadata, "step_version": None})
    await store.create(source)
    run_id = source.run_id
    if from_node is not None:
        run_id = f"{source.run_id}.replay"
        await dispatcher.rerun(source.run_id, from_node, input=payload, new_id=run_id)
    elif source.status == "failed":
        await dispatcher.retry(run_id, reason="replay", force=True, by="replay")
    else:
        if payload is not None and source.status == "paused":
            event = source.wait.event if source.wait is not None else None
            await dispatcher.send_event(run_id, payload, event)
        # Its first delivery, whenever it is due (a sleep's end, a retry's time).
        await dispatcher.reconcile(now=_FOREVER, grace_ms=0)
    for _ in range(max_steps):
        due = scheduler.pop_due()
        if not due:
            upcoming = scheduler.next_due()
            if upcoming is None:
                break
            clock.now = max(clock.now, upcoming)
            continue
        for message in due:
            await dispatcher.dispatch(message)
    return await store.load(run_id)
