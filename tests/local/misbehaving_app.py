"""Workflows whose executors misbehave, served by ``refluxo dev --app`` in the tests."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from refluxo.core import Context, NodeDefinition, Workflow

ONE_NODE = {"nodes": [{"id": "a", "type": "t", "data": {}}], "edges": []}


def exits(data: Any, context: Context, payload: Any, globals: Any) -> Any:
    raise SystemExit(3)


async def interrupts(data: Any, context: Context, payload: Any, globals: Any) -> Any:
    raise KeyboardInterrupt


def blocks(data: Any, context: Context, payload: Any, globals: Any) -> Any:
    """Marks that it started (the run's input names the file), then blocks its thread."""
    Path(payload["marker"]).write_text("started")
    time.sleep(payload.get("seconds", 3600))
    return "woke"


workflows = [
    Workflow("exits", ONE_NODE, {"t": NodeDefinition(executor=exits)}),
    Workflow("interrupts", ONE_NODE, {"t": NodeDefinition(executor=interrupts)}),
    Workflow("blocks", ONE_NODE, {"t": NodeDefinition(executor=blocks)}),
]
