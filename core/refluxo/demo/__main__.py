"""``python -m refluxo.demo`` (``make demo``): the demo on the embedded runtime, over HTTP.

A SQLite file, the durable local scheduler and the HTTP server start in this process; the demo
starts a run over HTTP, prints every new version of the run as it happens, approves the order
when the run waits for approval, and prints the run's timeline at the end. It needs the
embedded runtime (``refluxo.local``), imported when the demo runs: the package itself is what
every platform's bundle hosts, and imports only the core.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path

from refluxo.core import Snapshot
from refluxo.core.logs import configure_logging
from refluxo.core.timeline import render_timeline

from . import workflows


def _describe(snap: Snapshot) -> str:
    text = f"{snap.status:<9} at {snap.current_node_id or '-'}"
    if snap.status == "error" and snap.retry_state:
        last = snap.context[snap.retry_state.node_id][-1]
        text += f"  ({last.error}; retry {snap.retry_state.attempts + 1} scheduled)"
    elif snap.wait is not None and snap.wait.kind == "sleep":
        text += "  (sleeping durably before it)"
    elif snap.wait is not None:
        text += f"  (waiting for event {snap.wait.event!r})"
    return text


async def run_demo(db_path: Path, deadline_s: float = 60.0) -> Snapshot:
    """Run the demo on the embedded runtime with its database at ``db_path``; return the run."""
    from refluxo.local.client import Client
    from refluxo.local.runtime import LocalRuntime

    async with LocalRuntime(
        workflows(), db_path=db_path, globals={"supplier_token": "demo-secret"}
    ) as rt:
        server = await rt.serve(port=0)
        client = Client(server.url)
        print(f"embedded runtime: SQLite at {db_path.name}, HTTP API on {server.url}")
        started = await asyncio.to_thread(client.start, "demo", "order-A-1001", {"customer": "Ada"})
        run_id = started["workflowId"]
        print(f"POST /workflows/demo/runs -> run {run_id}")
        seen = -1
        approved = False
        t0 = time.monotonic()
        while time.monotonic() - t0 < deadline_s:
            snap = Snapshot.model_validate(await asyncio.to_thread(client.get, run_id))
            if snap.version != seen:
                seen = snap.version
                print(f"  +{time.monotonic() - t0:5.2f}s  v{snap.version:<2} {_describe(snap)}")
            if snap.is_terminal:
                print()
                print(render_timeline(snap))
                return snap
            if snap.wait is not None and snap.wait.kind == "event" and not approved:
                print("  ... a person approves: POST /runs/{id}/events")
                await asyncio.to_thread(
                    client.event, run_id, {"approved": True}, "approval", "approve-1"
                )
                approved = True
            await asyncio.sleep(0.05)  # a person watching the run, polling its state
        raise TimeoutError(f"the demo run did not finish in {deadline_s} s")


def main() -> int:
    configure_logging("text")
    with tempfile.TemporaryDirectory(prefix="refluxo-demo-") as tmp:
        snap = asyncio.run(run_demo(Path(tmp) / "demo.db"))
    return 0 if snap.status == "completed" else 1


if __name__ == "__main__":
    sys.exit(main())
