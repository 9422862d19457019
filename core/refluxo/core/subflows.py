"""Sub-workflows: a built-in node type that runs another hosted workflow as a child run.

A node ``{"type": "subworkflow", "data": {"workflow": "billing", "input": {...},
"on_child_failure": "fail"}}`` starts a child run of the hosted workflow ``billing`` with the
(transformed, so expressions are allowed) ``input``, waits for it, and outputs the child's final
output. How it stays exactly-once on queues that deliver at least once:

* The child's id derives from the parent's id, the node and the node's iteration (a retried
  step keeps it; a loop that comes back to the node gets a new one), and starting a run whose id
  exists starts nothing. A step that starts the child and then loses its save starts no second
  child when it runs again.
* The parent pauses on an event named :func:`child_event` of the child's id. When the child
  finishes (completed, failed or cancelled) the dispatcher sends that event to the parent, with
  an event id, so a notification sent twice is taken once. A child that finishes before the
  parent's pause is saved finds the parent still active: the event waits in the parent's inbox
  and the pause consumes it at once.
* The event only wakes the parent: the node then reads the child's stored snapshot, so a forged
  event cannot make up the child's output. An event that arrives while the child is not
  finished is taken and the node waits again.
* Cancelling the parent cancels the children it recorded in ``metadata.children``; the child's
  ``metadata.parent`` names the parent, its node and the nesting depth (at most
  :data:`MAX_DEPTH`, so a workflow that calls itself ends).

The node's executor reaches the dispatcher through a context variable that the dispatcher sets
around each step; the engine alone (``WorkflowEngine.execute``) has no dispatcher, and a
sub-workflow node there fails with a clear error.
"""

from __future__ import annotations

import contextvars
import hashlib
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .errors import (
    NonRetryableError,
    NotStrictJson,
    PayloadTooLarge,
    WorkflowMismatch,
    WorkflowNotFound,
)
from .model import Snapshot
from .nodes import Context, NodeDefinition, RetryPolicy, StepResult

SUBWORKFLOW_TYPE = "subworkflow"
"""The node type of the built-in sub-workflow node."""

MAX_DEPTH = 8
"""How deeply sub-workflows may nest (a parent at depth 0 starts children at depth 1)."""

MAX_REMEMBERED_CHILDREN = 32
"""How many child ids a parent's ``metadata.children`` keeps (the newest)."""

_EVENT_PREFIX = "refluxo.child:"
_READABLE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")


def child_event(child_id: str) -> str:
    """The name (and id) of the event that tells a parent that child ``child_id`` finished."""
    return _EVENT_PREFIX + child_id


def child_of_event(name: str | None) -> str | None:
    """The child id an event name of :func:`child_event` carries, else None."""
    if name is not None and name.startswith(_EVENT_PREFIX):
        return name[len(_EVENT_PREFIX) :]
    return None


def child_run_id(parent_id: str, node_id: str, iteration: int) -> str:
    """The id of the child that node ``node_id`` starts in its ``iteration`` (from 1).

    Readable (``parent:node:iteration``) when that is a valid run id, else a hash of it.
    """
    readable = f"{parent_id}:{node_id}:{iteration}"
    if _READABLE_ID.fullmatch(readable):
        return readable
    return "sub-" + hashlib.sha256(readable.encode("utf-8")).hexdigest()[:40]


class SubworkflowData(BaseModel):
    """The data of a ``subworkflow`` node (after its expressions are evaluated)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    workflow: str = Field(min_length=1, max_length=64)
    input: Any = None
    on_child_failure: Literal["fail", "continue"] = "fail"


Starter = Callable[..., Awaitable[tuple[Snapshot, bool]]]
Loader = Callable[[str], Awaitable[Snapshot]]


@dataclass
class StepScope:
    """What the dispatcher hands the sub-workflow node during one step of a run."""

    snapshot: Snapshot
    node_id: str
    start: Starter
    load: Loader
    started: list[str] = field(default_factory=list)


_SCOPE: contextvars.ContextVar[StepScope | None] = contextvars.ContextVar(
    "refluxo_subflow_scope", default=None
)


def set_scope(scope: StepScope | None) -> contextvars.Token[StepScope | None]:
    """Make ``scope`` the one sub-workflow nodes see in this task (the dispatcher does)."""
    return _SCOPE.set(scope)


def reset_scope(token: contextvars.Token[StepScope | None]) -> None:
    """Undo :func:`set_scope`."""
    _SCOPE.reset(token)


def final_output(child: Snapshot) -> Any:
    """The output of the last node a finished run executed (None when there is none)."""
    last = child.metadata.get("lastNode")
    if isinstance(last, str) and child.context.get(last):
        return child.context[last][-1].output
    return None


def _depth(snapshot: Snapshot) -> int:
    parent = snapshot.metadata.get("parent")
    depth = parent.get("depth") if isinstance(parent, dict) else None
    return depth if isinstance(depth, int) else 0


async def _execute(data: Any, context: Context, payload: Any, globals: Any) -> StepResult:
    scope = _SCOPE.get()
    if scope is None:
        raise NonRetryableError("a subworkflow node runs only under a Dispatcher")
    config = data if isinstance(data, SubworkflowData) else SubworkflowData.model_validate(data)
    snapshot, node_id = scope.snapshot, scope.node_id
    retry = snapshot.retry_state
    retried = retry.attempts if retry is not None and retry.node_id == node_id else 0
    # Failed attempts of this step add results too; they must not change the child's id.
    iteration = snapshot.execution_count(node_id) - retried + 1
    child_id = child_run_id(snapshot.run_id, node_id, iteration)
    if payload is None:
        depth = _depth(snapshot) + 1
        if depth > MAX_DEPTH:
            raise NonRetryableError(f"sub-workflows nest deeper than {MAX_DEPTH} levels")
        parent = {"runId": snapshot.run_id, "node": node_id, "depth": depth}
        try:
            await scope.start(
                config.workflow, run_id=child_id, input=config.input, metadata={"parent": parent}
            )
        except (WorkflowNotFound, WorkflowMismatch, NotStrictJson, PayloadTooLarge) as exc:
            raise NonRetryableError(f"cannot start the child run: {exc}") from exc
        scope.started.append(child_id)
        return StepResult.wait_for_event(child_event(child_id))
    child = await scope.load(child_id)
    if not child.is_terminal:  # woken by an event that is not the child's notification
        return StepResult.wait_for_event(child_event(child_id))
    if child.status == "completed":
        return StepResult(data=final_output(child))
    reason = str(child.metadata.get("failedReason") or "failed")
    if config.on_child_failure == "continue":
        return StepResult(data={"failed": True, "runId": child_id, "error": reason})
    raise NonRetryableError(f"child run {child_id!r} of workflow {config.workflow!r}: {reason}")


SUBWORKFLOW_NODE = NodeDefinition(
    executor=_execute,
    input_model=SubworkflowData,
    # Starting the child may meet a store or queue that fails for a moment.
    retry_policy=RetryPolicy(max_attempts=5, interval=1000, backoff="exponential", jitter=0.2),
    thread=False,
)
"""The built-in definition behind ``"type": "subworkflow"``, added to every :class:`Workflow`
whose nodes do not define that type themselves."""
