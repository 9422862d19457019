"""Workflows for the dashboard's browser tests: the demo, one that fails once, one hostile.

``fragile`` fails at ``check`` on its first attempt without retries (so the run ends
``failed``) and succeeds once retried: the executor counts the failures the run recorded.
``hostile`` carries markup in a node id, in an output and in an error, as an adversary
would: the dashboard must show all of it as text.
"""

from __future__ import annotations

from typing import Any

from refluxo.core import Context, NodeDefinition, NonRetryableError, Workflow
from refluxo.demo import workflows as demo_workflows

MARKUP = '<img src=x onerror="window.__xss=1"><script>window.__xss=2</script>'

FRAGILE = {
    "nodes": [
        {"id": "fetch", "type": "fetch"},
        {"id": "check", "type": "check"},
        {"id": "done", "type": "done"},
    ],
    "edges": [
        {"id": "e1", "source": "fetch", "target": "check"},
        {"id": "e2", "source": "check", "target": "done"},
    ],
}

HOSTILE = {
    "nodes": [
        {"id": "start", "type": "emit"},
        {"id": MARKUP, "type": "explode"},
    ],
    "edges": [{"id": "e1", "source": "start", "target": MARKUP, "sourceHandle": MARKUP}],
}


async def fetch(data: Any, context: Context, payload: Any, globals: Any) -> Any:
    return {"item": 7}


async def check(data: Any, context: Context, payload: Any, globals: Any) -> Any:
    if not any(r.error for r in context.get("check", [])):
        raise NonRetryableError("the checker is down")
    return {"checked": True}


async def done(data: Any, context: Context, payload: Any, globals: Any) -> Any:
    return {"done": True}


async def emit(data: Any, context: Context, payload: Any, globals: Any) -> Any:
    from refluxo.core import StepResult

    return StepResult(data={"html": MARKUP}, next_handle=MARKUP)


async def explode(data: Any, context: Context, payload: Any, globals: Any) -> Any:
    raise NonRetryableError(MARKUP)


def workflows() -> list[Workflow]:
    return [
        *demo_workflows(),
        Workflow(
            "fragile",
            FRAGILE,
            {
                "fetch": NodeDefinition(executor=fetch),
                "check": NodeDefinition(executor=check),
                "done": NodeDefinition(executor=done),
            },
        ),
        Workflow(
            "hostile",
            HOSTILE,
            {"emit": NodeDefinition(executor=emit), "explode": NodeDefinition(executor=explode)},
        ),
    ]
