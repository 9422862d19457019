"""The workflow that `refluxo worker` processes run in the kill -9 test: five steps in a chain,
each a short wait, each recording the process that ran it."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from refluxo.core import Context, NodeDefinition, Workflow

STEPS = 5

CHAIN = {
    "nodes": [{"id": f"s{i}", "type": "step", "data": {"i": i}} for i in range(STEPS)],
    "edges": [{"id": f"e{i}", "source": f"s{i}", "target": f"s{i + 1}"} for i in range(STEPS - 1)],
}


async def step(data: Any, context: Context, payload: Any, globals: Any) -> Any:
    await asyncio.sleep(0.15)  # long enough for a kill to land mid-step
    return {"i": data["i"], "pid": os.getpid()}


def workflows() -> list[Workflow]:
    return [Workflow("chain", CHAIN, {"step": NodeDefinition(executor=step)})]
