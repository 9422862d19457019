"""Section ``vs_typescript``: our engine beside the TypeScript engine, same workloads, same run.

The TypeScript engine is run from its source (``@refluxo/core`` at a pinned commit, MIT),
read from ``../shared/anchors/refluxo-engine`` relative to the checkout or from the folder
named by ``REFLUXO_TS_ENGINE``; it is never copied into this repository. It runs under Node
with ``tsx`` (pinned in ``benchmarks/ts/package.json``, installed by ``make bench``).

Four workloads, equal work, every result kept (no retention) on both sides:

* a 1,000-node linear workflow, in memory;
* a 10,000-iteration loop on one node, in memory;
* the same two with a JSON round trip of the snapshot after every step (what a dispatcher
  pays: parse what it loaded, encode what it saves): ``Snapshot.from_json(s.to_json())`` here,
  ``JSON.parse(JSON.stringify(s))`` there.

Executors are ``async def`` on both sides (equal work). Our in-memory loop is also measured
with the same executors written as plain functions, which the engine hands to a thread at
every step (what users who write plain functions get): a figure of its own, without a goal.

Plus our 10,000-step loop with the round trip under refluxo's defaults (a :class:`Workflow`
built without options), against the TypeScript engine's full-history round-trip figure.
When the TypeScript side is missing (no source, no Node, or ``tsx`` not installed), our
figures are still reported and a note says why the ratios are not.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from refluxo.core import MemoryStateStore, Snapshot, Workflow, WorkflowEngine

from .common import ROOT, Config, Figure, SectionResult, clean, fmt_num, median, now, spread
from .workflows import (
    LINEAR_NODES,
    LINEAR_NODES_PLAIN,
    linear_definition,
    loop_definition,
    loop_nodes,
)

SECTION = "vs_typescript"
TITLE = "1b. Engine vs the TypeScript engine (same workloads, same run)"
ENGINE_ENV = "REFLUXO_TS_ENGINE"
DEFAULT_ENGINE_DIR = ROOT.parent / "shared" / "anchors" / "refluxo-engine"
TS_DIR = ROOT / "benchmarks" / "ts"
TSX = TS_DIR / "node_modules" / ".bin" / "tsx"
DRIVER = TS_DIR / "engine_bench.ts"
GOAL = 1.0
DEFAULTS_GOAL = 10.0


@dataclass(frozen=True)
class Workload:
    name: str
    kind: str  # "linear" or "loop"
    n: int
    roundtrip: bool
    label: str
    repeats: int
    plain: bool = False  # plain (threaded) executors: ours only, no TypeScript counterpart
    store: bool = False  # the round trip through a store (save, then load): ours only

    @property
    def ours_only(self) -> bool:
        return self.plain or self.store


def workloads(cfg: Config) -> list[Workload]:
    linear = cfg.pick(1000, 1000, 30)
    loop = cfg.pick(10_000, 10_000, 100)
    # The round-trip loop with full history is quadratic (about 10 minutes for one run of
    # ours today at 10,000): fewer repeats in full mode, a shorter loop in quick mode.
    loop_rt = cfg.pick(10_000, 2_000, 100)
    rt_repeats = min(cfg.repeats, 3)
    return [
        Workload("linear", "linear", linear, False, f"{linear:,}-node linear", cfg.repeats),
        Workload("loop", "loop", loop, False, f"{loop:,}-iteration loop", cfg.repeats),
        Workload(
            "linear_roundtrip",
            "linear",
            linear,
            True,
            f"{linear:,}-node linear + JSON round trip per step",
            cfg.repeats,
        ),
        Workload(
            "loop_roundtrip",
            "loop",
            loop_rt,
            True,
            f"{loop_rt:,}-iteration loop + JSON round trip per step",
            rt_repeats,
        ),
        Workload(
            "linear_store",
            "linear",
            linear,
            True,
            f"{linear:,}-node linear + save and load through a store per step",
            cfg.repeats,
            store=True,
        ),
        Workload(
            "loop_store",
            "loop",
            loop_rt,
            True,
            f"{loop_rt:,}-iteration loop + save and load through a store per step",
            rt_repeats,
            store=True,
        ),
        Workload(
            "loop_plain",
            "loop",
            loop,
            False,
            f"{loop:,}-iteration loop, plain executors (a thread each step)",
            cfg.repeats,
            plain=True,
        ),
    ]


def engine_dir() -> Path:
    """Where the TypeScript engine's source is read from."""
    return Path(os.environ.get(ENGINE_ENV) or DEFAULT_ENGINE_DIR)


def typescript_missing() -> str | None:
    """Why the TypeScript side cannot run here, or None when it can."""
    src = engine_dir() / "src" / "index.ts"
    if not src.is_file():
        return (
            f"the TypeScript engine's source is absent ({src} not found; set {ENGINE_ENV} "
            "to a checkout of @refluxo/core's package folder)"
        )
    if shutil.which("node") is None:
        return "node is not installed"
    if not TSX.is_file():
        return "tsx is not installed (make bench installs it: npm ci in benchmarks/ts)"
    return None


def _engine(w: Workload, *, defaults: bool = False) -> WorkflowEngine:
    if w.kind == "linear":
        return WorkflowEngine(
            linear_definition(w.n), LINEAR_NODES_PLAIN if w.plain else LINEAR_NODES
        )
    if defaults:
        return Workflow("bench-loop", loop_definition(), loop_nodes(w.n)).engine
    return WorkflowEngine(loop_definition(), loop_nodes(w.n, plain=w.plain))


async def _walk(engine: WorkflowEngine, run_id: str, roundtrip: bool, store: bool) -> float:
    """One whole run, one step at a time; its steps per second.

    ``roundtrip``: the snapshot goes through its JSON after every step; with ``store``, as a
    dispatcher's does: saved to a store (encoded, compare-and-set) and loaded back from it
    (:class:`MemoryStateStore`, which keeps the JSON text and knows the text it wrote).
    """
    current = engine.create_initial_snapshot(run_id)
    kept = MemoryStateStore() if store else None
    if kept is not None:
        await kept.create(current)
    steps = 0
    t0 = now()
    while current.status == "active":
        previous = current.version
        current = await engine.execute_step(current)
        if kept is not None:
            await kept.save(current, expected_version=previous)
            current = await kept.load(run_id)
        elif roundtrip:
            current = Snapshot.from_json(current.to_json())
        steps += 1
    elapsed = now() - t0
    if current.status != "completed":
        raise RuntimeError(f"benchmark run ended {current.status}: {current.metadata}")
    return steps / elapsed


async def ours(w: Workload, *, defaults: bool = False) -> list[float]:
    engine = _engine(w, defaults=defaults)
    rates = []
    for _ in range(w.repeats):
        clean()
        rates.append(await _walk(engine, f"bench-{w.name}", w.roundtrip, w.store))
    return rates


def theirs(ws: list[Workload]) -> tuple[dict[str, list[float]], str]:
    """The TypeScript engine's steps per second per workload, and Node's version."""
    spec = {
        "repeats": 1,
        "workloads": [
            {
                "name": w.name,
                "kind": w.kind,
                "n": w.n,
                "roundtrip": w.roundtrip,
                "repeats": w.repeats,
            }
            for w in ws
        ],
    }
    out = subprocess.run(
        [str(TSX), str(DRIVER), str(engine_dir()), json.dumps(spec)],
        cwd=TS_DIR,
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"the TypeScript benchmark failed: {out.stderr.strip()[-2000:]}")
    data: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return data["rates"], data["node"]


def _rate_figure(key: str, label: str, rates: list[float], cmd: str) -> Figure:
    return Figure(
        id=f"{SECTION}.{key}.steps_per_s",
        name=label,
        value=round(median(rates), 1),
        unit="steps/s",
        display=f"{fmt_num(median(rates))} steps/s",
        command=cmd,
        details={"steps_per_s": spread(rates)},
    )


def _ratio_figure(
    key: str, label: str, mine: list[float], ts: list[float], goal: float, cmd: str
) -> Figure:
    value = median(mine) / median(ts)
    return Figure(
        id=f"{SECTION}.{key}.ours_over_ts",
        name=label,
        value=round(value, 3),
        unit="x",
        display=f"{value:.2f}x ({fmt_num(median(mine))} vs {fmt_num(median(ts))} steps/s)",
        command=cmd,
        goal=f">= {goal:g}",
        passed=value >= goal,
        details={"ours": spread(mine), "typescript": spread(ts)},
    )


async def _run(cfg: Config) -> SectionResult:
    cmd = cfg.command_for(SECTION)
    result = SectionResult(SECTION, TITLE)
    every = workloads(cfg)
    mine = {w.name: await ours(w) for w in every}
    ws = [w for w in every if not w.ours_only]
    loop_rt = ws[-1]
    default_retention = Workflow("bench-loop", loop_definition(), loop_nodes(1)).engine.retention
    if default_retention is None:
        # Today's defaults keep every result: the very workload measured just above.
        defaults = mine[loop_rt.name]
    else:
        defaults = await ours(loop_rt, defaults=True)

    missing = typescript_missing()
    ts: dict[str, list[float]] = {}
    if missing is None:
        ts, node = theirs(ws)
        result.notes.append(
            f"The TypeScript engine ran from {engine_dir().name}/src (Node {node}, tsx), in a "
            "Node process started right after ours, in the same benchmark run; its node "
            "executors are async functions returning the same outputs, as ours are; its loop "
            "counts `context.loop.length`."
        )
    else:
        result.notes.append(f"TypeScript side skipped: {missing}. Only our figures are shown.")

    for w in ws:
        result.figures.append(
            _rate_figure(w.name, f"vs TS: ours, {w.label}, full history", mine[w.name], cmd)
        )
        if w.name in ts:
            result.figures.append(
                _rate_figure(
                    f"{w.name}.typescript",
                    f"vs TS: TypeScript, {w.label}, full history",
                    ts[w.name],
                    cmd,
                )
            )
            result.figures.append(
                _ratio_figure(
                    w.name,
                    f"vs TS: ours / TypeScript, {w.label}, full history",
                    mine[w.name],
                    ts[w.name],
                    GOAL,
                    cmd,
                )
            )
    for w in every:
        if w.ours_only:
            result.figures.append(
                _rate_figure(
                    w.name, f"vs TS: ours, {w.label}, full history (no goal)", mine[w.name], cmd
                )
            )
        like = w.name.replace("_store", "_roundtrip")
        if w.store and like in ts:
            ratio = median(mine[w.name]) / median(ts[like])
            result.figures.append(
                Figure(
                    id=f"{SECTION}.{w.name}.ours_over_ts_roundtrip",
                    name=f"vs TS: ours ({w.label}) / TypeScript (JSON round trip), full history "
                    "(no goal)",
                    value=round(ratio, 3),
                    unit="x",
                    display=f"{ratio:.2f}x ({fmt_num(median(mine[w.name]))} vs "
                    f"{fmt_num(median(ts[like]))} steps/s)",
                    command=cmd,
                    details={"ours": spread(mine[w.name]), "typescript": spread(ts[like])},
                )
            )
    label = f"{loop_rt.label}, refluxo's defaults (retention={default_retention})"
    result.figures.append(
        _rate_figure("loop_roundtrip_defaults", f"vs TS: ours, {label}", defaults, cmd)
    )
    if loop_rt.name in ts:
        result.figures.append(
            _ratio_figure(
                "loop_roundtrip_defaults",
                f"vs TS: ours ({label}) / TypeScript (full history)",
                defaults,
                ts[loop_rt.name],
                DEFAULTS_GOAL,
                cmd,
            )
        )
    result.notes.append(
        "Steps per second of whole runs driven one `execute_step` at a time; medians of "
        f"{cfg.repeats} runs ({loop_rt.repeats} for the round-trip loop, quadratic with full "
        "history). Round trip: `Snapshot.from_json(snapshot.to_json())` after every step here, "
        "`JSON.parse(JSON.stringify(snapshot))` there. Both sides run with warm caches of "
        "their own: no warm-up run is discarded on either."
    )
    result.notes.append(
        "Through a store (ours only, no goal): after every step the snapshot is saved to a "
        "MemoryStateStore (`encode_snapshot`: JSON written and proven to read back, then a "
        "compare-and-set) and loaded back, as a dispatcher does between two deliveries. The "
        "store keeps the JSON text and knows the text it wrote, so the load does not decode "
        "it again: this is the round trip our dispatcher pays, beside the TypeScript engine's "
        "`JSON.parse(JSON.stringify(...))`."
    )
    if default_retention is None:
        result.notes.append(
            "refluxo's default retention is None today (every result kept), so the defaults "
            "figure is the full-history round-trip loop measured above, not a second run."
        )
    return result


def run(cfg: Config) -> SectionResult:
    return asyncio.run(_run(cfg))


def profile(name: str, n: int | None = None, top: int = 25) -> str:
    """Run one of our workloads under cProfile; the ``top`` functions by own time, as text."""
    import cProfile
    import io
    import pstats

    (w,) = [w for w in workloads(Config(mode="full", repeats=1)) if w.name == name]
    if n is not None:
        w = Workload(w.name, w.kind, n, w.roundtrip, w.label, 1, w.plain, w.store)
    profiler = cProfile.Profile()
    profiler.enable()
    asyncio.run(ours(w))
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(top)
    return out.getvalue()


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.vs_typescript",
        description="Profile one of our workloads of this section (cProfile, by own time).",
    )
    parser.add_argument("--profile", required=True, choices=[w.name for w in workloads(Config())])
    parser.add_argument("-n", type=int, help="nodes or iterations (default: the full size)")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args(argv)
    print(profile(args.profile, args.n, args.top))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
