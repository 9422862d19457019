"""Section 1, engine overhead: ``engine.execute_step`` in memory, no store, no scheduler.

* Steps per second for a 1,000-node linear workflow and a 10,000-iteration loop (one node with
  an edge back to itself), the loop both without retention (every result kept: each step
  copies a longer list, so a run is quadratic) and with ``retention=10``.
* The cost of one step against the floor of serialising the snapshot it produced
  (``snapshot.to_json()`` of that same snapshot): what any durable step must pay at least once.
* The hand-over of one executor call (``run_executor``): a plain function to an executor
  thread, an async one on the event loop, each returning at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

import pydantic_core

from refluxo.core import Snapshot, WorkflowEngine
from refluxo.core.engine import run_executor

from .common import Config, Figure, SectionResult, clean, fmt_num, fmt_us, median, now, spread
from .workflows import LINEAR_NODES, linear_definition, loop_definition, loop_nodes

SECTION = "engine"
TITLE = "1. Engine overhead (in memory, execute_step only)"
RETENTION = 10


@dataclass(frozen=True)
class Sizes:
    linear: int
    loop: int
    samples: int  # snapshots sampled along a run for the step vs to_json comparison
    inner: int  # how often one sampled step (and its to_json) is timed


def sizes(cfg: Config) -> Sizes:
    return Sizes(
        linear=cfg.pick(1000, 1000, 50),
        loop=cfg.pick(10_000, 10_000, 200),
        samples=cfg.pick(40, 20, 4),
        inner=cfg.pick(15, 7, 2),
    )


async def _walk(engine: WorkflowEngine, start: Snapshot) -> tuple[float, int]:
    """Run ``start`` to its end one step at a time; (seconds, steps)."""
    current = start
    steps = 0
    t0 = now()
    while current.status == "active":
        current = await engine.execute_step(current)
        steps += 1
    elapsed = now() - t0
    if current.status != "completed":
        raise RuntimeError(f"benchmark run ended {current.status}: {current.metadata}")
    return elapsed, steps


async def _samples(engine: WorkflowEngine, start: Snapshot, at: set[int]) -> dict[int, Snapshot]:
    """The snapshots before steps ``at`` (1-based step numbers) of one walk."""
    found: dict[int, Snapshot] = {}
    current = start
    step = 1
    while current.status == "active":
        if step in at:
            found[step] = current
        current = await engine.execute_step(current)
        step += 1
    return found


async def _step_vs_json(
    engine: WorkflowEngine, before: Snapshot, inner: int
) -> tuple[float, float, int]:
    """(seconds of one execute_step from ``before``, seconds of its result's to_json, bytes)."""
    step_times: list[float] = []
    json_times: list[float] = []
    after = before
    for _ in range(inner):
        t0 = now()
        after = await engine.execute_step(before)
        step_times.append(now() - t0)
    raw = ""
    for _ in range(inner):
        t0 = now()
        raw = after.to_json()
        json_times.append(now() - t0)
    return median(step_times), median(json_times), len(raw.encode())


def _time(fn: Callable[[], object], inner: int) -> float:
    """Median seconds of ``inner`` calls of ``fn``."""
    times: list[float] = []
    for _ in range(inner):
        t0 = now()
        fn()
        times.append(now() - t0)
    return median(times)


def _sample_points(total: int, count: int) -> list[int]:
    count = max(1, min(count, total))
    return sorted({max(1, round(total * (i + 1) / count)) for i in range(count)})


async def _run(cfg: Config) -> SectionResult:
    sz = sizes(cfg)
    cmd = cfg.command_for(SECTION)
    result = SectionResult(SECTION, TITLE)

    linear = WorkflowEngine(linear_definition(sz.linear), LINEAR_NODES)
    loop_all = WorkflowEngine(loop_definition(), loop_nodes(sz.loop))
    loop_kept = WorkflowEngine(loop_definition(), loop_nodes(sz.loop), retention=RETENTION)
    engines = {"linear": linear, "loop_no_retention": loop_all, "loop_retention": loop_kept}
    starts = {k: e.create_initial_snapshot(f"bench-{k}") for k, e in engines.items()}

    # Throughput: whole runs, alternating the scenarios so machine noise hits all of them.
    rates: dict[str, list[float]] = {k: [] for k in engines}
    for _ in range(cfg.repeats):
        for key, engine in engines.items():
            clean()
            elapsed, steps = await _walk(engine, starts[key])
            rates[key].append(steps / elapsed)

    labels = {
        "linear": f"Engine: {sz.linear:,}-node linear workflow",
        "loop_no_retention": f"Engine: {sz.loop:,}-iteration loop, retention=None",
        "loop_retention": f"Engine: {sz.loop:,}-iteration loop, retention={RETENTION}",
    }
    for key, values in rates.items():
        result.figures.append(
            Figure(
                id=f"engine.{key}.steps_per_s",
                name=labels[key],
                value=round(median(values), 1),
                unit="steps/s",
                display=f"{fmt_num(median(values))} steps/s ({fmt_us(1 / median(values))}/step)",
                command=cmd,
                details={"steps_per_s": spread(values)},
            )
        )
    speedups = [
        b / a for a, b in zip(rates["loop_no_retention"], rates["loop_retention"], strict=True)
    ]
    result.figures.append(
        Figure(
            id="engine.loop.retention_speedup",
            name=f"Engine: loop throughput, retention={RETENTION} / retention=None (same runs)",
            value=round(median(speedups), 3),
            unit="x",
            display=f"{median(speedups):.3g}x",
            command=cmd,
            details={"ratios": spread(speedups)},
        )
    )

    # One step against serialising the snapshot it produced, at points along each run.
    ratio_rows: list[tuple[str, str, list[int]]] = [
        ("linear", "linear workflow", _sample_points(sz.linear, sz.samples)),
        ("loop_retention", f"loop, retention={RETENTION}", _sample_points(sz.loop, sz.samples)),
        ("loop_no_retention", "loop, retention=None, at step 100", [min(100, sz.loop)]),
        ("loop_no_retention", f"loop, retention=None, at step {sz.loop:,}", [sz.loop]),
    ]
    for key, label, points in ratio_rows:
        engine = engines[key]
        snaps = await _samples(engine, starts[key], set(points))
        step_s: list[float] = []
        json_s: list[float] = []
        sizes_b: list[int] = []
        for point in points:
            clean()
            s, j, b = await _step_vs_json(engine, snaps[point], sz.inner)
            step_s.append(s)
            json_s.append(j)
            sizes_b.append(b)
        ratios = [s / j for s, j in zip(step_s, json_s, strict=True)]
        suffix = "" if len(points) == 1 else " (median of sampled steps)"
        where = "at_" + str(points[0]) if len(points) == 1 else "sampled"
        result.figures.append(
            Figure(
                id=f"engine.{key}.{where}.step_over_to_json",
                name=f"Engine: one step / to_json of its snapshot, {label}{suffix}",
                value=round(median(ratios), 3),
                unit="x",
                display=(
                    f"{median(ratios):.3g}x ({fmt_us(median(step_s))} step vs "
                    f"{fmt_us(median(json_s))} to_json of {fmt_num(median(sizes_b))} B)"
                ),
                command=cmd,
                details={
                    "steps": points,
                    "step_s": [round(v, 9) for v in step_s],
                    "to_json_s": [round(v, 9) for v in json_s],
                    "snapshot_bytes": sizes_b,
                    "ratio": spread(ratios),
                },
            )
        )
    # The serialisation floor itself: the model layer against encoding the same document.
    snaps = await _samples(loop_kept, starts["loop_retention"], {sz.loop})
    sample = await loop_kept.execute_step(snaps[sz.loop])
    document = sample.to_dict()
    raw = sample.to_json()
    inner = sz.inner * 20
    codec = {
        "to_json": _time(sample.to_json, inner),
        "plain_dump": _time(lambda: pydantic_core.to_json(document), inner),
        "from_json": _time(lambda: Snapshot.from_json(raw), inner),
        "plain_parse": _time(lambda: pydantic_core.from_json(raw), inner),
    }
    for what, model, plain, plain_label in (
        ("to_json", "to_json", "plain_dump", "pydantic_core.to_json of the same data as dicts"),
        ("from_json", "from_json", "plain_parse", "pydantic_core.from_json to dicts"),
    ):
        result.figures.append(
            Figure(
                id=f"engine.snapshot_codec.{what}_over_plain",
                name=f"Snapshot.{model} / {plain_label} (loop snapshot, retention={RETENTION})",
                value=round(codec[model] / codec[plain], 3),
                unit="x",
                display=f"{codec[model] / codec[plain]:.3g}x ({fmt_us(codec[model])} vs "
                f"{fmt_us(codec[plain])}, {len(raw.encode()):,} B)",
                command=cmd,
                details={k: round(v, 9) for k, v in codec.items()},
            )
        )
    # The hand-over of one executor call: a plain function to a thread, an async one inline.
    calls = cfg.pick(20_000, 5_000, 100)
    hand_over: dict[str, list[float]] = {"thread": [], "async": []}
    for _ in range(cfg.repeats):
        for kind, executor in (("thread", _plain_executor), ("async", _async_executor)):
            clean()
            t0 = now()
            for _ in range(calls):
                await run_executor(executor, (None, None, None, None), 240.0, "n")
            hand_over[kind].append((now() - t0) / calls)
    for kind, label in (
        ("thread", "a plain executor, handed to an executor thread"),
        ("async", "an async executor, run on the event loop"),
    ):
        values = hand_over[kind]
        result.figures.append(
            Figure(
                id=f"engine.run_executor.{kind}.us_per_call",
                name=f"Engine: run_executor of {label} (per call)",
                value=round(median(values) * 1e6, 2),
                unit="us",
                display=fmt_us(median(values)),
                command=cmd,
                details={"seconds": spread(values), "calls": calls},
            )
        )
    result.notes.append(
        "Steps per second are whole runs (initial snapshot to completed) driven by "
        "`await engine.execute_step(snapshot)` in a loop, medians of "
        f"{cfg.repeats} runs per scenario, scenarios interleaved. No store, no scheduler, no "
        "serialisation; the default expression transform is on (node data holds no templates). "
        "Executors are async functions, run on the event loop (a plain function would add a "
        "hand-over to a thread at every step: see the vs_typescript section)."
    )
    result.notes.append(
        "'one step / to_json' times execute_step on a sampled snapshot and to_json on the "
        f"snapshot it returned ({sz.inner} times each, median), at {sz.samples} points along "
        "a run; a ratio near or under 1 means the engine's own work costs no more than writing "
        "the step down once."
    )
    return result


def _plain_executor(data: object, context: object, payload: object, globals: object) -> int:
    return 1


async def _async_executor(data: object, context: object, payload: object, globals: object) -> int:
    return 1


def run(cfg: Config) -> SectionResult:
    return asyncio.run(_run(cfg))
