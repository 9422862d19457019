"""Section 5b, the Worker end to end: one run of N trivial steps on KV and on D1.

The Worker harness (tests/cloudflare/harness: the Worker's Python in Node's Pyodide, the
Pyodide of Python Workers, over Miniflare's KV, D1 and Queues) runs one program that builds
the Worker as a deployment does (``RefluxoWorker.from_env``: settings from vars, the store
and the queue from bindings), consumes the steps queue with the Worker's own ``queue``
handler, and times runs of a one-node loop workflow from ``start`` to ``completed``:

* on KV and on D1 (``REFLUXO_STORE``);
* with the default multi-step delivery budget (``REFLUXO_DELIVERY_BUDGET_MS`` unset: a
  delivery runs consecutive steps of the run for up to that long) and with it at 0 (one step
  per delivery, each the next queue hop);
* with the steps queue's consumer as ``deploy/cloudflare/deploy.py`` configures it
  (``max_batch_size`` 10, ``max_batch_timeout`` 1 s: a lone message waits up to a second for
  its batch, as in production).

Reported: ms per step and steps/s of one run, the queue deliveries it took and, on KV, the
writes of the run's key (Miniflare does not enforce KV's one write per second per key; the
count says how close a run comes to it). Miniflare is a local simulation: no network, no
replication. The queue hop is the platform's cost, the figures the shape of it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from .common import ROOT, Config, Figure, SectionResult, load_module, median

SECTION = "worker"
TITLE = "5b. Worker end to end: one run of N steps (Pyodide in Node over Miniflare KV/D1/Queues)"
HARNESS_DIR = ROOT / "tests" / "cloudflare" / "harness"
WHEELS = ROOT / ".tools" / "pyodide-wheels"
TIMEOUT_S = 900

# Runs inside Pyodide (``node harness.mjs run``); prints one JSON line per measured run.
PROGRAM = r'''
import asyncio
import json
import time
from types import SimpleNamespace

from harness_env import env, set_queue_handler

from refluxo.cloudflare import D1StateStore, KVStateStore
from refluxo.cloudflare.worker import RefluxoWorker
from refluxo.core import NodeDefinition, StepResult, Workflow

PLAN = json.loads(__PLAN__)
DEADLINE_S = 600.0


def loop(limit):
    def tick(data, context, payload, globals):
        n = context.count("tick") + 1
        return StepResult(data={"i": n, "status": "ok"}, next_handle="again" if n < limit else None)

    definition = {
        "nodes": [{"id": "tick", "type": "tick"}],
        "edges": [{"id": "back", "source": "tick", "target": "tick", "sourceHandle": "again"}],
    }
    return Workflow("loop", definition, {"tick": NodeDefinition(executor=tick)}, retention=10)


class CountingKV:
    """The KV binding, counting its writes."""

    def __init__(self, kv):
        self.kv, self.puts = kv, 0

    def put(self, *args, **kwargs):
        self.puts += 1
        return self.kv.put(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.kv, name)


async def measure(i, store, budget, steps):
    kv = CountingKV(env.STATE)
    variables = {
        "REFLUXO_APP": "refluxo.demo",
        "REFLUXO_STORE": store,
        "REFLUXO_PUBLIC_API": "1",
        "REFLUXO_KV_PREFIX": f"bench{i}/",
        "REFLUXO_D1_TABLE": f"bench_{i}",
    }
    if budget is not None:
        variables["REFLUXO_DELIVERY_BUDGET_MS"] = str(budget)
    bindings = SimpleNamespace(**variables, STATE=kv, DB=env.DB, STEPS=env.STEPS)
    workflow = loop(steps)
    deliveries = 0
    handling = 0.0  # seconds inside the queue handler

    busy = 0

    async def handler(batch):
        nonlocal deliveries, handling, busy
        deliveries += len(list(batch.messages))
        busy += 1
        t = time.perf_counter()
        try:
            # As the Worker's queue handler: a fresh Worker per invocation.
            await RefluxoWorker.from_env(bindings, workflows=[workflow]).queue(batch)
        finally:
            handling += time.perf_counter() - t
            busy -= 1

    # Read the run from a store of its own: what an observer outside the delivery sees.
    if store == "kv":
        reader = KVStateStore(env.STATE, prefix=f"bench{i}/")
    else:
        reader = D1StateStore(env.DB, table=f"bench_{i}")
        await reader.ensure_schema()
    set_queue_handler(handler)
    worker = RefluxoWorker.from_env(bindings, workflows=[workflow])
    run_id = f"run-{i}"
    t0 = time.perf_counter()
    await worker.dispatcher.start("loop", run_id=run_id)
    while True:
        snap = await reader.load(run_id)
        if snap.status in ("completed", "failed"):
            break
        assert time.perf_counter() - t0 < DEADLINE_S, f"run {run_id} stuck: {snap.status}"
        await asyncio.sleep(0.002)
    elapsed = time.perf_counter() - t0
    assert snap.status == "completed", snap.status
    while busy:  # the last delivery acks after its write: let it finish
        assert time.perf_counter() - t0 < DEADLINE_S, "the last delivery did not end"
        await asyncio.sleep(0.002)
    set_queue_handler(None)
    return {
        "store": store,
        "budget": budget,
        "steps": steps,
        "seconds": elapsed,
        "deliveries": deliveries,
        "handling_seconds": handling,
        "kv_puts": kv.puts if store == "kv" else None,
    }


async def main():
    for i, (store, budget, steps, measured) in enumerate(PLAN):
        row = await measure(i, store, budget, steps)
        if measured:
            print("BENCH " + json.dumps(row), flush=True)


await main()
'''


def _problem() -> str | None:
    if shutil.which("node") is None:
        return "node is not on PATH"
    for package in ("pyodide", "miniflare"):
        if not (HARNESS_DIR / "node_modules" / package / "package.json").is_file():
            return f"npm package {package} is not installed in tests/cloudflare/harness"
    wheels = [p.name for p in WHEELS.glob("*.whl")] if WHEELS.is_dir() else []
    for prefix in ("pydantic_core-", "pydantic-", "workers_runtime_sdk-"):
        if not any(w.startswith(prefix) for w in wheels):
            return f"no {prefix}*.whl in .tools/pyodide-wheels"
    return None


def _limits() -> Any:
    path = ROOT / "adapters" / "cloudflare" / "refluxo" / "cloudflare" / "limits.py"
    return load_module(path, "_refluxo_bench_cf_limits")


def run(cfg: Config) -> SectionResult:
    cmd = cfg.command_for(SECTION)
    result = SectionResult(SECTION, TITLE)
    problem = _problem()
    if problem:
        result.skipped = (
            f"the Worker harness is not installed ({problem}): run `make setup-cloudflare`"
        )
        return result
    limits = _limits()
    chained = cfg.pick(60, 30, 8)  # steps of a run with the default budget
    single = cfg.pick(8, 5, 3)  # with budget 0: each step waits for its queue batch
    repeats = cfg.pick(3, 2, 1)
    configs = [(store, budget) for store in ("kv", "d1") for budget in (None, 0)]
    plan: list[tuple[str, int | None, int, bool]] = [("d1", None, 3, False)]  # warm-up
    for _ in range(repeats):
        for store, budget in configs:
            plan.append((store, budget, chained if budget is None else single, True))
    with tempfile.TemporaryDirectory(prefix="refluxo-bench-worker-") as tmp:
        program = Path(tmp) / "worker_steps.py"
        program.write_text(PROGRAM.replace("__PLAN__", repr(json.dumps(plan))))
        argv = [
            "node",
            str(HARNESS_DIR / "harness.mjs"),
            "run",
            "--src",
            str(ROOT / "core"),
            "--src",
            str(ROOT / "adapters" / "cloudflare"),
            "--kv",
            "STATE",
            "--d1",
            "DB",
            "--queue",
            "STEPS",
            "--max-batch-size",
            str(limits.CONSUMER_MAX_BATCH_SIZE),
            "--max-batch-timeout",
            str(limits.CONSUMER_MAX_BATCH_TIMEOUT_SECONDS),
            str(program),
        ]
        proc = subprocess.run(
            argv, cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT_S, check=False
        )
    rows = [json.loads(line[6:]) for line in proc.stdout.splitlines() if line.startswith("BENCH ")]
    if proc.returncode != 0 or len(rows) != repeats * len(configs):
        result.skipped = (
            f"the harness run failed (exit {proc.returncode}):\n{proc.stdout[-2000:]}\n"
            f"{proc.stderr[-3000:]}"
        )
        return result
    for store, budget in configs:
        mine = [r for r in rows if r["store"] == store and r["budget"] == budget]
        per_step = [r["seconds"] / r["steps"] for r in mine]
        ms = median(per_step) * 1000
        rate = 1 / median(per_step)
        steps = mine[0]["steps"]
        deliveries = median([float(r["deliveries"]) for r in mine])
        inside = median([r["handling_seconds"] / r["steps"] for r in mine]) * 1000
        waiting = median([(r["seconds"] - r["handling_seconds"]) / r["deliveries"] for r in mine])
        how = "default budget" if budget is None else "budget 0"
        key = f"worker.{store}.{'chained' if budget is None else 'one_step_per_delivery'}"
        writes = ""
        if store == "kv":
            puts = median([float(r["kv_puts"]) for r in mine])
            writes = f", {puts:.0f} writes of the run's KV key"
        result.figures.append(
            Figure(
                id=f"{key}.ms_per_step",
                name=f"Worker, {store.upper()}, {how}: one run of {steps} trivial steps, "
                "start to completed",
                value=round(ms, 2),
                unit="ms/step",
                display=f"{ms:,.1f} ms/step = {rate:,.1f} steps/s ({deliveries:.0f} queue "
                f"deliveries{writes}; {inside:,.1f} ms/step inside the handler, "
                f"{waiting * 1000:,.0f} ms per delivery outside it)",
                command=cmd,
                details={"runs": mine},
            )
        )
    result.notes.append(
        f"Medians of {repeats} runs per row, after one warm-up run. Consumer as deployed: "
        f"max_batch_size {limits.CONSUMER_MAX_BATCH_SIZE}, max_batch_timeout "
        f"{limits.CONSUMER_MAX_BATCH_TIMEOUT_SECONDS} s, so each queue hop of a lone message "
        "waits for its batch. With the default budget a delivery runs the run's steps until "
        "the budget is spent; on KV it writes the run's key once, at its end "
        "(refluxo.cloudflare.delivery), on D1 it saves every step."
    )
    return result
