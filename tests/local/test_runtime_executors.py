"""The embedded runtime against executors that hang: slots come back, other runs go on."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from refluxo.core import Context, NodeDefinition, Snapshot, Workflow
from refluxo.local.runtime import LocalRuntime

ONE_NODE = {"nodes": [{"id": "a", "type": "t", "data": {}}], "edges": []}


async def until(check: Callable[[], Awaitable[bool]], deadline_s: float = 20) -> None:
    end = time.monotonic() + deadline_s
    while not await check():
        assert time.monotonic() < end, "gave up waiting"
        await asyncio.sleep(0.02)


class Hung:
    """Executors that block (plain) or never resume (async) until the test releases them."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.started = 0
        self.lock = threading.Lock()

    def plain(self, data: Any, context: Context, payload: Any, globals: Any) -> Any:
        with self.lock:
            self.started += 1
        self.release.wait(60)
        return "released"

    async def async_(self, data: Any, context: Context, payload: Any, globals: Any) -> Any:
        with self.lock:
            self.started += 1
        await asyncio.Event().wait()  # never set: only a cancel or a timeout ends it


def quick(data: Any, context: Context, payload: Any, globals: Any) -> Any:
    return "done"


async def status(runtime: LocalRuntime, run_id: str) -> Snapshot:
    return await runtime.dispatcher.get(run_id)


@pytest.mark.parametrize("kind", ["plain", "async"])
@pytest.mark.parametrize("how", ["cancelled", "timed_out"])
async def test_eight_hung_steps_do_not_stop_a_ninth_run_once_cancelled_or_timed_out(
    tmp_path: Path, kind: str, how: str
) -> None:
    hung = Hung()
    executor = hung.plain if kind == "plain" else hung.async_
    timeout = 0.5 if how == "timed_out" else 600
    workflows = [
        Workflow("hang", ONE_NODE, {"t": NodeDefinition(executor=executor, timeout=timeout)}),
        Workflow("quick", ONE_NODE, {"t": NodeDefinition(executor=quick)}),
    ]
    try:
        async with LocalRuntime(workflows, db_path=tmp_path / "r.db", concurrency=8) as runtime:
            for i in range(8):
                await runtime.dispatcher.start("hang", run_id=f"hung-{i}")

            async def all_started() -> bool:
                return hung.started == 8

            await until(all_started)
            if how == "cancelled":
                for i in range(8):
                    await runtime.dispatcher.cancel(f"hung-{i}")
            await runtime.dispatcher.start("quick", run_id="ninth")

            async def ninth_done() -> bool:
                return (await status(runtime, "ninth")).status == "completed"

            await until(ninth_done)

            async def hung_failed() -> bool:
                runs = [await status(runtime, f"hung-{i}") for i in range(8)]
                return all(run.status == "failed" for run in runs)

            await until(hung_failed)  # a ninth goes as soon as the first one times out
            for i in range(8):
                snapshot = await status(runtime, f"hung-{i}")
                assert snapshot.status == "failed"
                reason = snapshot.metadata["failedReason"]
                assert ("cancelled" if how == "cancelled" else "ran past its timeout") in reason

            # The stopped steps' messages are done with: nothing stays leased or pending.
            async def all_done() -> bool:
                messages = await runtime.scheduler.list_messages()
                return all(m.state == "done" for m in messages)

            await until(all_done)
    finally:
        hung.release.set()
