"""Runs inside Pyodide over Miniflare's KV and Queues: how often a run's KV key is written.

The Worker (``RefluxoWorker.from_env``, a fresh one per queue invocation, as in production)
consumes the steps queue. KV takes about one write per second to a key, so a delivery that
runs several steps of a run writes the run's key once, when it ends.
"""

import asyncio
import time
from types import SimpleNamespace

from harness_env import env, run_tests, set_queue_handler

from refluxo.cloudflare import KVStateStore
from refluxo.cloudflare.worker import RefluxoWorker
from refluxo.core import NodeDefinition, StepResult, Workflow

_prefixes = iter(range(1000))


def loop(limit):
    def tick(data, context, payload, globals):
        n = context.count("tick") + 1
        return StepResult(data={"i": n}, next_handle="again" if n < limit else None)

    definition = {
        "nodes": [{"id": "tick", "type": "tick"}],
        "edges": [{"id": "back", "source": "tick", "target": "tick", "sourceHandle": "again"}],
    }
    return Workflow("loop", definition, {"tick": NodeDefinition(executor=tick)})


class CountingKV:
    def __init__(self, kv):
        self.kv, self.puts = kv, []

    def put(self, key, *args, **kwargs):
        self.puts.append(key)
        return self.kv.put(key, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.kv, name)


async def drive(steps, budget_ms):
    """Run a loop of ``steps`` through the Worker's queue handler; (puts, deliveries, run)."""
    prefix = f"w{next(_prefixes)}/"
    kv = CountingKV(env.STATE)
    bindings = SimpleNamespace(
        REFLUXO_APP="refluxo.demo",
        REFLUXO_STORE="kv",
        REFLUXO_KV_PREFIX=prefix,
        REFLUXO_DELIVERY_BUDGET_MS=str(budget_ms),
        STATE=kv,
        STEPS=env.STEPS,
    )
    workflow = loop(steps)
    deliveries = []

    async def handler(batch):
        deliveries.extend(m.id for m in batch.messages)
        await RefluxoWorker.from_env(bindings, workflows=[workflow]).queue(batch)

    set_queue_handler(handler)
    try:
        await RefluxoWorker.from_env(bindings, workflows=[workflow]).dispatcher.start(
            "loop", run_id="r"
        )
        reader = KVStateStore(env.STATE, prefix=prefix)
        deadline = time.monotonic() + 60
        while (run := await reader.load("r")).status == "active":
            assert time.monotonic() < deadline, "the run did not complete"
            await asyncio.sleep(0.02)
    finally:
        set_queue_handler(None)
    return kv.puts, deliveries, run


async def test_a_delivery_that_chains_the_steps_of_a_run_writes_its_key_once():
    puts, deliveries, run = await drive(6, budget_ms=60_000)
    assert run.status == "completed" and len(run.context["tick"]) == 6
    assert len(deliveries) == 1
    assert puts == ["w0/r", "w0/r"]  # the start, then the delivery's six steps at once


async def test_with_no_budget_each_step_is_a_delivery_of_its_own_and_a_write():
    puts, deliveries, run = await drive(3, budget_ms=0)
    assert run.status == "completed" and len(run.context["tick"]) == 3
    assert len(deliveries) == 3
    assert len(puts) == 1 + 3


await run_tests()  # noqa: F704 - `harness.mjs run` allows top-level await
