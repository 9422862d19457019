"""The embedded runtime steps a run's branches at once, each on its own delivery."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

from refluxo.core import NodeDefinition, Workflow
from refluxo.local.runtime import LocalRuntime

DEADLINE_S = 20.0

DEFINITION = {
    "nodes": [
        {"id": "start", "type": "echo", "data": "start"},
        {"id": "a", "type": "meet", "data": "a"},
        {"id": "b", "type": "meet", "data": "b"},
        {"id": "c", "type": "meet", "data": "c"},
        {"id": "merge", "type": "collect", "data": {"a": "{{ a.last.data }}"}},
    ],
    "edges": [
        {"id": "1", "source": "start", "target": "a"},
        {"id": "2", "source": "start", "target": "b"},
        {"id": "3", "source": "start", "target": "c"},
        {"id": "4", "source": "a", "target": "merge"},
        {"id": "5", "source": "b", "target": "merge"},
        {"id": "6", "source": "c", "target": "merge"},
    ],
}


async def test_the_runtime_runs_a_runs_branches_at_once_and_joins_them(tmp_path: Path) -> None:
    # Each branch's executor waits until all three are in it: only branches that really run
    # at once get past the barrier (a broken barrier fails the run, with no retry policy).
    barrier = threading.Barrier(3, timeout=DEADLINE_S)

    def meet(data: Any, ctx: Any, payload: Any, g: Any) -> Any:
        barrier.wait()
        return f"{data} met"

    def echo(data: Any, ctx: Any, payload: Any, g: Any) -> Any:
        return data

    def collect(data: Any, ctx: Any, payload: Any, g: Any) -> Any:
        return {"data": data, "payload": payload}

    nodes = {
        "echo": NodeDefinition(echo),
        "meet": NodeDefinition(meet),
        "collect": NodeDefinition(collect),
    }
    workflow = Workflow("fan", DEFINITION, nodes)
    async with LocalRuntime([workflow], db_path=tmp_path / "dev.db", concurrency=4) as runtime:
        await runtime.dispatcher.start("fan", run_id="r1")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DEADLINE_S
        while not (snap := await runtime.store.load("r1")).is_terminal:
            assert loop.time() < deadline, f"the run did not finish: {snap.to_json()}"
            await asyncio.sleep(0.02)
    assert snap.status == "completed", snap.metadata
    output = snap.results("merge")[-1].output
    assert output["payload"] == {"a": "a met", "b": "b met", "c": "c met"}
    assert output["data"] == {"a": "a met"}
    assert all(len(snap.results(n)) == 1 for n in ("start", "a", "b", "c", "merge"))
