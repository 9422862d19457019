"""Section 5, platform per-step latency: Firestore and Cloud Tasks, through their emulators.

One run of the loop workflow (retention on) is stepped by hand through the RunService on a
FirestoreStateStore and a CloudTasksScheduler: each step is ``dispatch(message)``, i.e. a
Firestore load, a compare-and-set save (``FirestoreStateStore.save`` reads the version, then
writes with an ``update_time`` precondition) and a ``create_task``. The queue is paused, so the
emulator stores tasks and delivers none: we deliver the next message ourselves.

The floor, measured in the same run and interleaved with ours: the raw client calls a step
cannot do without, on a document of the same size: one Firestore ``get`` plus one ``update``
with a ``last_update_time`` precondition, and one ``create_task`` with the same body.

End to end, through functions-framework: the bundle ``deploy/gcp/deploy.py`` builds, served
by functions-framework (from ``.tools/gcp-function`` when ``make setup-gcp`` made it) on the
Firestore emulator, with a second Cloud Tasks emulator queue delivering every step to its
``/_dispatch``; one run of N trivial steps is started over HTTP and timed until it is
``completed``, with the default multi-step delivery budget and with it at 0 (one step per
task). The Cloud Tasks emulator looks for due tasks every 0.1 s, so each hop there costs up to
that much on top of the HTTP call.

The emulators are not the cloud (no network, no replication): the ratio says what our code
adds to the calls, not what a step costs in production.
"""

from __future__ import annotations

import asyncio
import functools
import os
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any, TypeVar
from unittest import mock

from refluxo.core import DispatchMessage, RunService

from .common import ROOT, Config, Figure, SectionResult, fmt_us, load_module, median, now, spread
from .workflows import loop_workflow

SECTION = "platform"
TITLE = "5. Platform per-step latency (Firestore + Cloud Tasks emulators)"
RETENTION = 10
PROJECT = "refluxo-bench"
QUEUE = f"projects/{PROJECT}/locations/us-central1/queues/bench"
TARGET_URL = "http://127.0.0.1:9/_dispatch"  # never called: the queue is paused

T = TypeVar("T")


@dataclass(frozen=True)
class Sizes:
    steps: int  # per block
    blocks: int  # ours and the floor alternate this many times
    warmup: int


def sizes(cfg: Config) -> Sizes:
    return Sizes(
        steps=cfg.pick(40, 20, 3),
        blocks=cfg.pick(5, 2, 1),
        warmup=cfg.pick(12, 12, 1),  # 10 results kept: full-size snapshots
    )


def _emulators() -> ModuleType:
    return load_module(ROOT / "tests" / "gcp" / "emulators.py", "_refluxo_bench_emulators")


class _Parts:
    def __init__(self) -> None:
        self.totals: dict[str, list[float]] = {}

    def wrap(self, name: str, fn: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
        @functools.wraps(fn)
        async def timed(*args: Any, **kwargs: Any) -> T:
            t0 = now()
            try:
                return await fn(*args, **kwargs)
            finally:
                self.totals.setdefault(name, []).append(now() - t0)

        return timed


async def _measure(firestore_env: dict[str, str], tasks_address: str, sz: Sizes) -> dict[str, Any]:
    import grpc
    from google.cloud import firestore, tasks_v2
    from google.cloud.tasks_v2.services.cloud_tasks.transports import (
        CloudTasksGrpcAsyncIOTransport,
    )

    from refluxo.gcp.scheduler import CloudTasksScheduler
    from refluxo.gcp.store import FirestoreStateStore

    with mock.patch.dict(os.environ, firestore_env):
        db = firestore.AsyncClient(project=PROJECT)
    channel = grpc.aio.insecure_channel(tasks_address)
    tasks = tasks_v2.CloudTasksAsyncClient(
        transport=CloudTasksGrpcAsyncIOTransport(channel=channel)
    )
    try:
        await tasks.pause_queue(name=QUEUE)
        scheduler = CloudTasksScheduler(tasks, queue=QUEUE, url=TARGET_URL)
        store = FirestoreStateStore(db, collection="bench_runs")
        parts = _Parts()
        store_any: Any = store
        sched_any: Any = scheduler
        store_any.load = parts.wrap("store.load (get)", store.load)
        store_any.save = parts.wrap("store.save (conditional update)", store.save)
        sched_any.schedule = parts.wrap("scheduler.schedule (create_task)", scheduler.schedule)
        total_steps = sz.warmup + sz.steps * sz.blocks
        workflow = loop_workflow(total_steps + 10, RETENTION, name="platform")
        # One step per dispatch: what this measures (a run of steps end to end is below).
        dispatcher = RunService([workflow], store, scheduler, delivery_budget_ms=0)
        run_id = f"bench-{uuid.uuid4().hex[:8]}"
        await dispatcher.start(workflow.name, run_id=run_id)
        version = 0

        async def step() -> float:
            nonlocal version
            t0 = now()
            outcome = await dispatcher.dispatch(DispatchMessage(run_id=run_id, version=version))
            elapsed = now() - t0
            if outcome.outcome != "stepped" or outcome.version is None:
                raise RuntimeError(f"expected a step, got {outcome}")
            version = outcome.version
            return elapsed

        for _ in range(sz.warmup):
            await step()
        parts.totals.clear()
        snapshot_json = (await store.load(run_id)).to_json()
        parts.totals.clear()

        # The floor's document: the same fields and the same snapshot text size.
        raw_ref = db.collection("bench_raw").document(f"raw-{uuid.uuid4().hex[:8]}")
        fields: dict[str, Any] = {
            "status": "active",
            "version": 0,
            "workflow": workflow.name,
            "updatedAt": firestore.SERVER_TIMESTAMP,
            "snapshot": snapshot_json,
        }
        await raw_ref.create(fields)
        body = DispatchMessage(run_id=run_id, version=version).to_json().encode()

        async def raw_cas(i: int) -> float:
            t0 = now()
            doc = await raw_ref.get()
            await raw_ref.update(
                {**fields, "version": i}, option=db.write_option(last_update_time=doc.update_time)
            )
            return now() - t0

        async def raw_task() -> float:
            t0 = now()  # building the request is part of any create_task
            task = tasks_v2.Task(
                name=f"{QUEUE}/tasks/raw-{uuid.uuid4().hex}",
                http_request=tasks_v2.HttpRequest(
                    http_method=tasks_v2.HttpMethod.POST,
                    url=TARGET_URL,
                    headers={"Content-Type": "application/json"},
                    body=body,
                ),
            )
            await tasks.create_task(request=tasks_v2.CreateTaskRequest(parent=QUEUE, task=task))
            return now() - t0

        for _ in range(sz.warmup):
            await raw_cas(0)
            await raw_task()

        ours: list[float] = []
        cas: list[float] = []
        enqueue: list[float] = []
        block_ratios: list[float] = []
        for _ in range(sz.blocks):
            block = [await step() for _ in range(sz.steps)]
            block_cas = [await raw_cas(i) for i in range(sz.steps)]
            block_task = [await raw_task() for _ in range(sz.steps)]
            ours += block
            cas += block_cas
            enqueue += block_task
            block_ratios.append(median(block) / (median(block_cas) + median(block_task)))
        return {
            "ours": ours,
            "cas": cas,
            "enqueue": enqueue,
            "block_ratios": block_ratios,
            "parts": {k: median(v) for k, v in parts.totals.items()},
            "snapshot_bytes": len(snapshot_json.encode()),
        }
    finally:
        transport: Any = tasks.transport
        await transport.close()
        if db._firestore_api_internal is not None:
            await db._firestore_api.transport.close()


E2E_QUEUE = f"projects/{PROJECT}/locations/us-central1/queues/bench-e2e"
E2E_TOKEN = "bench-token"
E2E_DISPATCH_TOKEN = "bench-dispatch-token"
_NOT_INHERITED = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV")
E2E_APP = """
from refluxo.core import NodeDefinition, StepResult, Workflow

STEPS = {steps}


def _loop(limit):
    def tick(data, context, payload, globals):
        n = context.count("tick") + 1
        return StepResult(data={{"i": n}}, next_handle="again" if n < limit else None)

    definition = {{
        "nodes": [{{"id": "tick", "type": "tick"}}],
        "edges": [{{"id": "back", "source": "tick", "target": "tick", "sourceHandle": "again"}}],
    }}
    return Workflow(f"loop{{limit}}", definition, {{"tick": NodeDefinition(executor=tick)}})


def workflows():
    return [_loop(n) for n in STEPS]
"""


def _http(url: str, method: str = "GET", body: Any = None) -> tuple[int, Any]:
    import json
    import urllib.error
    import urllib.request

    data = None if body is None else json.dumps(body).encode()
    headers = {"authorization": f"Bearer {E2E_TOKEN}", "content-type": "application/json"}
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as res:
            return res.status, json.loads(res.read() or b"null")
    except urllib.error.HTTPError as err:
        with err:
            return err.code, err.read().decode(errors="replace")


def _end_to_end(
    emulators: ModuleType, firestore_env: dict[str, str], cfg: Config
) -> tuple[dict[str, list[dict[str, Any]]], str]:
    """Runs of N steps through functions-framework and a delivering Cloud Tasks queue, per
    budget (``default``, ``0``); and which functions-framework served them."""
    import tempfile
    import time
    from pathlib import Path

    chained, single = cfg.pick(60, 30, 6), cfg.pick(15, 10, 3)
    repeats = cfg.pick(3, 2, 1)
    venv_ff = ROOT / ".tools" / "gcp-function" / "bin" / "functions-framework"
    executable = str(venv_ff) if venv_ff.exists() else None
    how = (
        "the function's own venv (.tools/gcp-function)"
        if executable
        else "the project venv (.tools/gcp-function is missing: make setup-gcp)"
    )
    deploy: Any = load_module(ROOT / "deploy" / "gcp" / "deploy.py", "_refluxo_bench_gcp_deploy2")
    results: dict[str, list[dict[str, Any]]] = {}
    tasks = emulators.CloudTasksEmulator(queue_path=E2E_QUEUE, max_retries=3)
    tasks.start()
    try:
        with tempfile.TemporaryDirectory(prefix="refluxo-bench-e2e-") as tmp:
            app = Path(tmp) / "bench_loops.py"
            app.write_text(E2E_APP.format(steps=sorted({chained, single, 2})))
            bundle: Path = deploy.build(Path(tmp) / "bundle", "bench_loops", app_src=app)
            for budget in ("default", "0"):
                env = {
                    **firestore_env,
                    **tasks.env,
                    "REFLUXO_APP": "bench_loops",
                    "REFLUXO_PROJECT": tasks.project,
                    "REFLUXO_LOCATION": tasks.location,
                    "REFLUXO_QUEUE": tasks.queue,
                    "REFLUXO_COLLECTION": f"bench_e2e_{budget}",
                    "REFLUXO_API_TOKEN": E2E_TOKEN,
                    "REFLUXO_DISPATCH_TOKEN": E2E_DISPATCH_TOKEN,
                    "REFLUXO_LOG_LEVEL": "WARNING",
                }
                if budget == "0":
                    env["REFLUXO_DELIVERY_BUDGET_MS"] = "0"
                server = _function_server(emulators, bundle, env, executable)
                server.start()
                try:
                    url = server.url
                    steps = chained if budget == "default" else single
                    rows = []
                    for i in range(repeats + 1):  # the first run warms the function up
                        n = 2 if i == 0 else steps
                        run_id = f"e2e-{budget}-{i}-{uuid.uuid4().hex[:6]}"
                        t0 = time.perf_counter()
                        status, body = _http(
                            f"{url}/workflows/loop{n}/runs", "POST", {"id": run_id}
                        )
                        if status != 201:
                            raise RuntimeError(f"start answered {status}: {body}")
                        deadline = t0 + 300
                        while True:
                            status, snap = _http(f"{url}/runs/{run_id}")
                            if status == 200 and snap["status"] in ("completed", "failed"):
                                break
                            if time.perf_counter() > deadline:
                                raise RuntimeError(f"run {run_id} stuck: {snap}")
                            time.sleep(0.005)
                        if snap["status"] != "completed":
                            raise RuntimeError(f"run {run_id} failed: {snap}")
                        if i:
                            rows.append({"steps": n, "seconds": time.perf_counter() - t0})
                    results[budget] = rows
                finally:
                    server.stop()
    finally:
        tasks.stop()
    return results, how


def _function_server(
    emulators: ModuleType, bundle: Any, env: dict[str, str], executable: str | None
) -> Any:
    """The bundle under functions-framework, knowing its own URL, without our variables."""

    class BundleFunction(emulators.FunctionsFrameworkServer):  # type: ignore[misc, name-defined]
        def process_env(self) -> dict[str, str]:
            inherited = {
                k: v
                for k, v in super().process_env().items()
                if k not in _NOT_INHERITED and not k.startswith("REFLUXO_")
            }
            return {**inherited, **env, "REFLUXO_FUNCTION_URL": self.url}

    return BundleFunction("refluxo", bundle / "main.py", executable=executable, cwd=bundle)


def run(cfg: Config) -> SectionResult:
    cmd = cfg.command_for(SECTION)
    result = SectionResult(SECTION, TITLE)
    sz = sizes(cfg)
    try:
        emulators = _emulators()
        firestore_emulator = emulators.FirestoreEmulator(project=PROJECT)
        tasks_emulator = emulators.CloudTasksEmulator(queue_path=QUEUE, max_retries=0)
    except Exception as exc:
        result.skipped = f"the emulator helpers (tests/gcp/emulators.py) failed to load: {exc}"
        return result
    started: list[Any] = []
    try:
        try:
            for emulator in (firestore_emulator, tasks_emulator):
                emulator.start()
                started.append(emulator)
        except Exception as exc:
            result.skipped = (
                f"an emulator did not start (run `make setup-gcp`): {str(exc).splitlines()[0]}"
            )
            return result
        data = asyncio.run(_measure(firestore_emulator.env, tasks_emulator.address, sz))
        try:
            e2e, e2e_how = _end_to_end(emulators, firestore_emulator.env, cfg)
        except Exception as exc:  # the per-step figures above stand on their own
            e2e, e2e_how = {}, f"not measured: {str(exc).splitlines()[0] if str(exc) else exc!r}"
    finally:
        for emulator in reversed(started):
            emulator.stop()

    ours = median(data["ours"])
    cas = median(data["cas"])
    enqueue = median(data["enqueue"])
    result.figures.append(
        Figure(
            id="platform.gcp.step_latency",
            name="Platform, GCP emulators: one step through the RunService (load + CAS save + "
            "create_task)",
            value=round(ours, 6),
            unit="s",
            display=f"{fmt_us(ours)}/step",
            command=cmd,
            details={"seconds": spread(data["ours"]), "parts": data["parts"]},
        )
    )
    ratio = median(data["block_ratios"])
    result.figures.append(
        Figure(
            id="platform.gcp.step_over_floor",
            name="Platform, GCP emulators: our step / raw Firestore get + update-with-"
            "precondition + raw create_task (same run)",
            value=round(ratio, 3),
            unit="x",
            display=f"{ratio:.2f}x ({fmt_us(ours)} vs {fmt_us(cas)} get+update + "
            f"{fmt_us(enqueue)} create_task)",
            command=cmd,
            details={
                "block_ratios": data["block_ratios"],
                "raw_cas_s": spread(data["cas"]),
                "raw_create_task_s": spread(data["enqueue"]),
                "snapshot_bytes": data["snapshot_bytes"],
            },
        )
    )
    for budget, rows in e2e.items():
        per_step = [r["seconds"] / r["steps"] for r in rows]
        ms = median(per_step) * 1000
        how = "default budget" if budget == "default" else "budget 0"
        key = "chained" if budget == "default" else "one_step_per_delivery"
        result.figures.append(
            Figure(
                id=f"platform.gcp.end_to_end.{key}.ms_per_step",
                name=f"Platform, GCP emulators through functions-framework, {how}: one run of "
                f"{rows[0]['steps']} trivial steps, HTTP start to completed",
                value=round(ms, 2),
                unit="ms/step",
                display=f"{ms:,.1f} ms/step = {1000 / ms:,.1f} steps/s",
                command=cmd,
                details={"runs": rows},
            )
        )
    result.notes.append(
        "End to end: the deploy/gcp bundle under functions-framework served by "
        f"{e2e_how}, a second Cloud Tasks emulator queue delivering each task to its "
        "/_dispatch, the run polled over HTTP every 5 ms; medians of the runs after one "
        "warm-up run."
    )
    result.notes.append(
        f"{sz.blocks} blocks of {sz.steps} steps, each followed by {sz.steps} raw Firestore "
        f"compare-and-sets and {sz.steps} raw create_task calls; figures are medians over all "
        f"blocks, the ratio the median of the per-block ratios. Snapshot "
        f"{data['snapshot_bytes']:,} B (retention={RETENTION})."
    )
    result.notes.append(
        "Our step's parts (median per call): "
        + "; ".join(f"{k} {fmt_us(v)}" for k, v in data["parts"].items())
        + ". Like the floor, a step makes two Firestore round trips: the load's get, and an "
        "update whose precondition is the update time that get saw."
    )
    result.notes.append(
        "Cloudflare: a run of N steps end to end in the Worker harness, on KV and on D1, is "
        "section 5b (`--section worker`); the Worker's import cost is in section 4."
    )
    return result
