"""Section 2, flatness: time and bytes per step at step 100 and at step 10,000 of a loop.

Through the RunService, on the memory store (messages delivered by hand from a
MemoryScheduler) and on SQLite (SQLiteStateStore and SQLiteScheduler on one file, one message
leased, dispatched and marked done per step with ``drain(max_messages=1)``).

Each point has its own store and run, brought to just before its window. With retention both
runs are walked for real (the far one 10,000 steps), then the two windows are stepped
alternately (a step at ~100, a step at ~10,000, ...), so that the rest of the machine's load
weighs on both alike. Without retention a walk is quadratic (each step loads and writes every
earlier result), so the far run's state is reached by the same engine in memory
(``execute_step``, no I/O) and saved to the store; the two windows are then dispatched for
real, one after the other.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from refluxo.core import (
    DispatchMessage,
    MemoryScheduler,
    MemoryStateStore,
    RunService,
    Scheduler,
    StateStore,
    Workflow,
)
from refluxo.local.scheduler import SQLiteScheduler
from refluxo.local.store import SQLiteStateStore

from .common import (
    Config,
    Figure,
    SectionResult,
    clean,
    fmt_bytes,
    fmt_us,
    median,
    now,
    ratio_figure,
    written_bytes,
)
from .workflows import loop_workflow

SECTION = "flatness"
TITLE = "2. Flatness (per step at step 100 vs step 10,000, through the RunService)"
RETENTION = 10
GOAL = 1.2
RUN_ID = "flat"


@dataclass(frozen=True)
class Sizes:
    near: int  # "step 100"
    far: int  # "step 10,000"
    window: int  # steps measured around each point (the ``window`` steps up to it)
    window_unbounded: int  # the same without retention, where a step is slow
    repeats: int


def sizes(cfg: Config) -> Sizes:
    return Sizes(
        near=cfg.pick(100, 100, 20),
        far=cfg.pick(10_000, 10_000, 200),
        window=cfg.pick(50, 30, 5),
        window_unbounded=cfg.pick(20, 10, 3),
        repeats=min(cfg.repeats, cfg.pick(3, 1, 1)),
    )


@dataclass
class Window:
    """Per-step measurements over the steps up to one point of a run."""

    seconds: list[float] = field(default_factory=list)
    logical_bytes: list[int] = field(default_factory=list)  # snapshot JSON the store wrote
    written: list[int] = field(default_factory=list)  # bytes passed to write() (SQLite)


class _Rig:
    """A dispatcher on one store and scheduler, stepped one message at a time."""

    def __init__(self, workflow: Workflow, store: StateStore, scheduler: Scheduler) -> None:
        self.workflow = workflow
        self.store = store
        self.scheduler = scheduler
        # One step per delivery: each step is measured on its own.
        self.dispatcher = RunService([workflow], store, scheduler, delivery_budget_ms=0)
        self.step: Callable[[], Awaitable[None]] = self._no_step

    async def _no_step(self) -> None:
        raise NotImplementedError

    async def stored_bytes(self) -> int:
        return len((await self.store.load(RUN_ID)).to_json().encode())

    def close(self) -> None:
        for resource in (self.scheduler, self.store):
            close = getattr(resource, "close", None)
            if close is not None:
                close()


def _memory_rig(workflow: Workflow, path: Path) -> _Rig:
    scheduler = MemoryScheduler()
    rig = _Rig(workflow, MemoryStateStore(), scheduler)

    async def step() -> None:
        due = scheduler.pop_due()
        if len(due) != 1:
            raise RuntimeError(f"expected one due message, got {due}")
        outcome = await rig.dispatcher.dispatch(due[0])
        if outcome.outcome != "stepped":
            raise RuntimeError(f"expected a step, got {outcome}")

    rig.step = step
    return rig


def _sqlite_rig(workflow: Workflow, path: Path) -> _Rig:
    path.unlink(missing_ok=True)
    scheduler = SQLiteScheduler(path)
    rig = _Rig(workflow, SQLiteStateStore(path), scheduler)
    outcomes: list[str] = []

    async def handler(message: DispatchMessage) -> None:
        outcomes.append((await rig.dispatcher.dispatch(message)).outcome)

    async def step() -> None:
        outcomes.clear()
        delivered = await scheduler.drain(handler, max_messages=1)
        if delivered != 1 or outcomes != ["stepped"]:
            raise RuntimeError(f"expected one step, got {delivered} deliveries: {outcomes}")

    rig.step = step
    return rig


RIGS: dict[str, Callable[[Workflow, Path], _Rig]] = {"memory": _memory_rig, "sqlite": _sqlite_rig}


async def _measure(pairs: list[tuple[_Rig, Window]], steps: int) -> None:
    """``steps`` steps of each rig, alternating between them, each timed on its own."""
    for _ in range(steps):
        for rig, window in pairs:
            w0 = written_bytes()
            t0 = now()
            await rig.step()
            elapsed = now() - t0
            w1 = written_bytes()
            window.seconds.append(elapsed)
            if w0 is not None and w1 is not None:
                window.written.append(w1 - w0)
            window.logical_bytes.append(await rig.stored_bytes())


async def _walked(kind: str, workflow: Workflow, steps: int, tmp: Path, tag: str) -> _Rig:
    """A rig whose run has taken ``steps`` real steps."""
    rig = RIGS[kind](workflow, tmp / f"{tag}.db")
    await rig.dispatcher.start(workflow.name, run_id=RUN_ID)
    for _ in range(steps):
        await rig.step()
    return rig


async def _reached(kind: str, workflow: Workflow, steps: int, tmp: Path, tag: str) -> _Rig:
    """A rig whose run is saved as the engine leaves it after ``steps`` steps in memory."""
    rig = RIGS[kind](workflow, tmp / f"{tag}.db")
    engine = workflow.engine
    snapshot = engine.create_initial_snapshot(RUN_ID, workflow.start, definition=workflow.ref)
    while snapshot.version < steps:
        snapshot = await engine.execute_step(snapshot)
    await rig.store.create(snapshot)
    await rig.scheduler.schedule(DispatchMessage(run_id=RUN_ID, version=snapshot.version))
    return rig


async def _windows(
    kind: str, sz: Sizes, tmp: Path, *, retention: int | None
) -> tuple[Window, Window]:
    """The windows of steps up to ``near`` and up to ``far``.

    Each point has a rig (store and scheduler) of its own, brought to the start of its
    window first. With retention both runs are walked for real and the two windows stepped
    in turn, so that whatever else the machine does at that moment weighs on both. Without
    it the far run is reached in memory (a real walk is quadratic) and the windows are
    measured one after the other.
    """
    window = sz.window if retention is not None else sz.window_unbounded
    workflow = loop_workflow(sz.far + 10, retention, name="flat")
    rigs: list[_Rig] = []
    try:
        rigs.append(await _walked(kind, workflow, sz.near - window, tmp, "near"))
        if retention is not None:
            rigs.append(await _walked(kind, workflow, sz.far - window, tmp, "far"))
        else:
            rigs.append(await _reached(kind, workflow, sz.far - window, tmp, "far"))
        near, far = Window(), Window()
        clean()
        if retention is not None:
            await _measure([(rigs[0], near), (rigs[1], far)], window)
        else:
            # A far step allocates megabytes; alternating would leave its garbage collections
            # to the near steps, and the difference needs no help to show.
            await _measure([(rigs[0], near)], window)
            clean()
            await _measure([(rigs[1], far)], window)
        return near, far
    finally:
        for rig in rigs:
            rig.close()


def _figures(
    kind: str,
    label: str,
    pairs: list[tuple[Window, Window]],
    sz: Sizes,
    goal: float | None,
    cmd: str,
) -> list[Figure]:
    key = "retention" if goal is not None else "no_retention"
    time_ratios = [median(f.seconds) / median(n.seconds) for n, f in pairs]
    byte_ratios = [median(f.logical_bytes) / median(n.logical_bytes) for n, f in pairs]
    near_t = median(median(n.seconds) for n, _ in pairs)
    far_t = median(median(f.seconds) for _, f in pairs)
    near_b = median(median(n.logical_bytes) for n, _ in pairs)
    far_b = median(median(f.logical_bytes) for _, f in pairs)
    where = f"step {sz.far:,} / step {sz.near}"
    figures = [
        ratio_figure(
            id=f"flatness.{kind}.{key}.time_ratio",
            name=f"Flatness, {kind} store, {label}: time per step, {where}",
            near=near_t,
            far=far_t,
            fmt=fmt_us,
            command=cmd,
            goal=goal,
            details={"ratio_per_run": time_ratios},
        ),
        ratio_figure(
            id=f"flatness.{kind}.{key}.bytes_ratio",
            name=f"Flatness, {kind} store, {label}: snapshot bytes written per step, {where}",
            near=near_b,
            far=far_b,
            fmt=fmt_bytes,
            command=cmd,
            goal=goal,
            details={"ratio_per_run": byte_ratios},
        ),
    ]
    if all(n.written and f.written for n, f in pairs) and kind == "sqlite":
        # Bytes handed to write(): WAL frames of every page the step touched (the runs row,
        # the messages row and their indexes). Mean per step: checkpoints come in bursts.
        def mean(values: list[int]) -> float:
            return sum(values) / len(values)

        near_w = median(mean(n.written) for n, _ in pairs)
        far_w = median(mean(f.written) for _, f in pairs)
        figures.append(
            ratio_figure(
                id=f"flatness.{kind}.{key}.written_ratio",
                name=f"Flatness, {kind} store, {label}: bytes written to disk per step "
                f"(WAL, mean), {where}",
                near=near_w,
                far=far_w,
                fmt=fmt_bytes,
                command=cmd,
                goal=goal,
                details={},
            )
        )
    return figures


async def _run(cfg: Config) -> SectionResult:
    sz = sizes(cfg)
    cmd = cfg.command_for(SECTION)
    result = SectionResult(SECTION, TITLE)
    with tempfile.TemporaryDirectory(prefix="refluxo-bench-") as tmp_dir:
        tmp = Path(tmp_dir)
        for kind in RIGS:
            kept: list[tuple[Window, Window]] = []
            unbounded: list[tuple[Window, Window]] = []
            for _ in range(sz.repeats):
                clean()
                kept.append(await _windows(kind, sz, tmp, retention=RETENTION))
                clean()
                unbounded.append(await _windows(kind, sz, tmp, retention=None))
            result.figures += _figures(kind, f"retention={RETENTION}", kept, sz, GOAL, cmd)
            result.figures += _figures(kind, "retention=None", unbounded, sz, None, cmd)
    result.notes.append(
        f"Each point is the median over the {sz.window} steps up to it ({sz.window_unbounded} "
        "without retention). The two points are separate runs, each on its own store, stepped "
        "alternately (one after the other without retention, where a far step's garbage "
        f"would land in the near steps); the ratio is the median over {sz.repeats} such pairs. "
        "A step's time "
        "covers delivery too: MemoryScheduler.pop_due + RunService.dispatch, or "
        "SQLiteScheduler.drain(max_messages=1) (lease, dispatch, mark done). The far run's "
        "SQLite file holds its 10,000 delivered messages (tombstones kept for an hour), so a "
        "growing messages table would show."
    )
    result.notes.append(
        "Snapshot bytes are the JSON the store wrote for the step (the same for both stores). "
        "On SQLite the bytes written to disk are what the process handed to write() "
        "(/proc/self/io wchar): WAL frames of whole 4 KiB pages for the runs row, the message "
        "row and their indexes, plus checkpoints."
    )
    result.notes.append(
        f"Without retention the far run's state at step {sz.far - sz.window_unbounded:,} is "
        "reached by the engine in memory and saved, not walked through the store (a full "
        "walk is quadratic: minutes per store); the steps measured after it are real "
        "dispatches."
    )
    return result


def run(cfg: Config) -> SectionResult:
    return asyncio.run(_run(cfg))
