"""The order workflow of the fault scenarios: retries, a durable sleep, an event, a branch.

``order`` fails twice before it succeeds (a retry policy with exponential backoff), ``cool_down``
sleeps durably, ``approval`` waits for an ``approval`` event, ``decide`` branches on it, and the
run ends in ``ship`` or ``cancel``. The executors are stateless: ``order`` counts its own earlier
failures in the run's context, so the run records the same results on every store and platform.
"""

from __future__ import annotations

from typing import Any

from refluxo.core import (
    Context,
    NodeDefinition,
    RetryPolicy,
    StepResult,
    Workflow,
    WorkflowDefinition,
)

DEFINITION = WorkflowDefinition.model_validate(
    {
        "nodes": [
            {
                "id": "order",
                "type": "flaky_fetch",
                # A secret, read by name; the executor uses it and records nothing of it.
                "data": {"token": "{{ get(globals, 'supplier_token', 'demo-token') }}"},
            },
            {"id": "cool_down", "type": "sleep", "data": {"seconds": 1}},
            {"id": "approval", "type": "approval", "data": {"timeout_seconds": 3600}},
            {
                "id": "decide",
                "type": "decide",
                "data": {"approved": "{{ approval.last.data.approved }}"},
            },
            {
                "id": "ship",
                "type": "note",
                "data": {
                    "text": "shipping {{ order.last.data.order }} to {{ order.last.data.customer }}"
                },
            },
            {
                "id": "cancel",
                "type": "note",
                "data": {"text": "order {{ order.last.data.order }} cancelled"},
            },
        ],
        "edges": [
            {"id": "e1", "source": "order", "target": "cool_down"},
            {"id": "e2", "source": "cool_down", "target": "approval"},
            {"id": "e3", "source": "approval", "target": "decide"},
            {"id": "e4", "source": "decide", "target": "ship", "sourceHandle": "approved"},
            {"id": "e5", "source": "decide", "target": "cancel", "sourceHandle": "rejected"},
            {"id": "e6", "source": "approval", "target": "cancel", "sourceHandle": "timeout"},
        ],
    }
)

FAILURES_BEFORE_SUCCESS = 2


class SupplierUnavailable(Exception):
    """The order step's transient failure."""


async def flaky_fetch(data: dict[str, Any], context: Context, payload: Any, globals: Any) -> Any:
    failures = sum(1 for r in context.get("order", []) if r.error)
    if failures < FAILURES_BEFORE_SUCCESS:
        raise SupplierUnavailable(f"supplier timed out (attempt {failures + 1})")
    given = payload if isinstance(payload, dict) else {}
    order = data.get("order") or given.get("order") or "A-1001"
    customer = given.get("customer", "Ada")
    return {"order": order, "customer": customer, "items": 3}


async def sleep(data: dict[str, Any], context: Context, payload: Any, globals: Any) -> Any:
    return StepResult.sleep(float(data["seconds"]), data={"slept": data["seconds"]})


async def approval(data: dict[str, Any], context: Context, payload: Any, globals: Any) -> Any:
    if payload is None:
        return StepResult.wait_for_event("approval", timeout=float(data["timeout_seconds"]))
    return {"approved": bool(payload.get("approved")) if isinstance(payload, dict) else False}


async def decide(data: dict[str, Any], context: Context, payload: Any, globals: Any) -> Any:
    approved = bool(data["approved"])
    return StepResult(
        data={"approved": approved}, next_handle="approved" if approved else "rejected"
    )


async def note(data: dict[str, Any], context: Context, payload: Any, globals: Any) -> Any:
    return {"note": data["text"]}


NODES = {
    "flaky_fetch": NodeDefinition(
        executor=flaky_fetch,
        retry_policy=RetryPolicy(max_attempts=3, interval=200, backoff="exponential"),
    ),
    "sleep": NodeDefinition(executor=sleep),
    "approval": NodeDefinition(executor=approval),
    "decide": NodeDefinition(executor=decide),
    "note": NodeDefinition(executor=note),
}


def workflows() -> list[Workflow]:
    """The order workflow, hosted as ``demo`` (the name the scenarios start runs of)."""
    return [Workflow("demo", DEFINITION, NODES)]
