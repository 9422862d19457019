"""Workflows for the clock-skew tests: one sleeps 30 s, one hangs in its step."""

from __future__ import annotations

import asyncio
from typing import Any

from refluxo.core import Context, NodeDefinition, StepResult, Workflow

TWO_NODES = {
    "nodes": [{"id": "a", "type": "t", "data": {}}, {"id": "b", "type": "done", "data": {}}],
    "edges": [{"id": "a-b", "source": "a", "target": "b"}],
}


async def nap(data: Any, context: Context, payload: Any, globals: Any) -> Any:
    return StepResult.sleep(30)


async def hang(data: Any, context: Context, payload: Any, globals: Any) -> Any:
    if globals is not None:
        globals["started"].set()
    await asyncio.Event().wait()


def done(data: Any, context: Context, payload: Any, globals: Any) -> Any:
    return "done"


def workflows() -> list[Workflow]:
    return [
        Workflow(
            "sleeps", TWO_NODES, {"t": NodeDefinition(executor=nap), "done": NodeDefinition(done)}
        ),
        Workflow(
            "hangs", TWO_NODES, {"t": NodeDefinition(executor=hang), "done": NodeDefinition(done)}
        ),
    ]
