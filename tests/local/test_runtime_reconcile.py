"""The embedded runtime reconciles periodically: a run whose message is gone gets going again."""

from __future__ import annotations

import asyncio
from pathlib import Path

from refluxo.core import Workflow
from refluxo.demo import DEFINITION, NODES
from refluxo.local.runtime import LocalRuntime

DEADLINE_S = 20.0


async def test_the_runtime_finds_a_run_whose_message_is_gone_and_steps_it(tmp_path: Path) -> None:
    demo = Workflow("demo", DEFINITION, NODES)
    async with LocalRuntime(
        [demo],
        db_path=tmp_path / "dev.db",
        globals={"order_id": "A-1"},
        reconcile_every_s=0.05,
        reconcile_grace_ms=0,
    ) as runtime:
        snapshot = demo.engine.create_initial_snapshot(
            "stranded", demo.start, input={"customer": "Ada"}, definition=demo.ref
        )
        assert await runtime.store.create(snapshot)  # stored, and no message scheduled
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DEADLINE_S
        while (await runtime.store.load("stranded")).version == 0:
            assert loop.time() < deadline, "the run was never reconciled"
            await asyncio.sleep(0.02)


async def test_periodic_reconcile_can_be_switched_off_and_run_on_demand(
    tmp_path: Path,
) -> None:
    demo = Workflow("demo", DEFINITION, NODES)
    async with LocalRuntime([demo], db_path=tmp_path / "dev.db", reconcile_every_s=None) as runtime:
        snapshot = demo.engine.create_initial_snapshot("stranded", demo.start, definition=demo.ref)
        assert await runtime.store.create(snapshot)
        assert await runtime.dispatcher.reconcile(grace_ms=0) == ["stranded"]  # on demand


async def test_the_runtime_takes_a_store_handed_in(tmp_path: Path) -> None:
    from refluxo.core import MemoryStateStore
    from refluxo.core.dispatcher import load_workflows

    store = MemoryStateStore()
    runtime = LocalRuntime(
        load_workflows("refluxo.demo"),
        db_path=tmp_path / "r.db",
        store=store,
        reconcile_every_s=None,
    )
    assert runtime.store is store and runtime.dispatcher.store is store
    assert runtime.api.dispatcher is runtime.dispatcher
