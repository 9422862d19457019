"""A workflow whose middle step fails while a switch is on: for retrying and rerunning runs.

``fetch`` records the input it got, ``check`` raises (without retries) while ``BROKEN`` holds
True, and ``done`` reads ``fetch``'s output through an expression, so a rerun from ``check``
shows that the source run's results reach it.
"""

from __future__ import annotations

from typing import Any

from refluxo.core import Context, NodeDefinition, Workflow, WorkflowDefinition

BROKEN = {"on": True}

DEFINITION = WorkflowDefinition.model_validate(
    {
        "nodes": [
            {"id": "fetch", "type": "fetch"},
            {"id": "check", "type": "check"},
            {"id": "done", "type": "done", "data": {"item": "{{ fetch.last.data.item }}"}},
        ],
        "edges": [
            {"id": "e1", "source": "fetch", "target": "check"},
            {"id": "e2", "source": "check", "target": "done"},
        ],
    }
)


async def fetch(data: Any, context: Context, payload: Any, globals: Any) -> Any:
    given = payload if isinstance(payload, dict) else {}
    return {"item": given.get("item", "none")}


async def check(data: Any, context: Context, payload: Any, globals: Any) -> Any:
    if BROKEN["on"]:
        raise RuntimeError("the checker is down\nsecond line of the trace")
    return {"checked": True, "payload": payload}


async def done(data: dict[str, Any], context: Context, payload: Any, globals: Any) -> Any:
    return {"item": data["item"]}


def workflows() -> list[Workflow]:
    return [
        Workflow(
            "ops",
            DEFINITION,
            {
                "fetch": NodeDefinition(executor=fetch),
                "check": NodeDefinition(executor=check),
                "done": NodeDefinition(executor=done),
            },
        )
    ]
