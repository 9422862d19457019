"""``python -m refluxo.demo``: the demo workflow, in memory, one step at a time."""

from __future__ import annotations

import asyncio

from refluxo.core import WorkflowEngine
from refluxo.core.model import now_ms

from . import DEFINITION, NODES


async def main() -> None:
    engine = WorkflowEngine(DEFINITION, NODES)
    snap = engine.create_initial_snapshot("demo-run", input={"customer": "Ada"})
    payload = snap.input
    while not snap.is_terminal:
        due = snap.due_at()
        if snap.wait is not None and snap.wait.kind == "event":  # approve it
            print("  ... sending the approval event")
            payload = {"approved": True}
        elif due is not None and due > now_ms():
            await asyncio.sleep((due - now_ms()) / 1000)
        node = snap.current_node_id
        snap = await engine.execute_step(snap, payload, globals={"supplier_token": "demo-secret"})
        payload = None
        last = snap.context.get(node or "", [None])[-1] if node else None
        detail = (last.error or last.output) if last is not None else ""
        print(f"v{snap.version:<3} {node or '-':<10} -> {snap.status:<9} {detail}")
    print(f"run {snap.run_id} {snap.status}")


if __name__ == "__main__":
    asyncio.run(main())
