"""Section ``vs_dbos``: the same durable workload on DBOS Transact and on refluxo, one run.

N runs of M trivial steps, every step durable before the next one runs:

* DBOS Transact (PyPI ``dbos``, pinned in ``mk/bench.mk`` and installed by ``make bench`` in
  its own environment, ``.tools/dbos-venv``, so its pins never meet ours): one workflow per
  run, looping over a ``DBOS.step`` (each step's output checkpointed in the system database),
  all started with ``DBOS.start_workflow`` and awaited (``benchmarks/dbos_driver.py``).
* refluxo's embedded runtime: the ``embedded`` section's workload (the benchmarks' loop,
  SQLiteStateStore + SQLiteScheduler, concurrency 8), timed from the first start.

On SQLite (a fresh file each) and, when PostgreSQL's server binaries are there, on a
throwaway PostgreSQL server (the ``postgres`` section's): DBOS with that database as its
system database, refluxo with one ``refluxo worker --postgres`` process.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import tempfile
from pathlib import Path

from . import embedded, postgres
from .common import ROOT, Config, Figure, SectionResult, clean, fmt_num, median, spread

SECTION = "vs_dbos"
TITLE = "6. Durable steps: the embedded runtime against DBOS Transact"
DBOS_PYTHON = ROOT / ".tools" / "dbos-venv" / "bin" / "python"
DRIVER = ROOT / "benchmarks" / "dbos_driver.py"
GOAL = 10.0


def dbos_missing() -> str | None:
    """Why DBOS cannot run here, or None when it can."""
    if not DBOS_PYTHON.is_file():
        return "DBOS Transact is not installed (make setup-bench puts it in .tools/dbos-venv)"
    return None


def dbos_rate(url: str, runs: int, steps: int) -> tuple[float, str]:
    """DBOS's steps per second on the system database ``url``, and its version."""
    out = subprocess.run(
        [str(DBOS_PYTHON), str(DRIVER), url, str(runs), str(steps)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"the DBOS benchmark failed: {out.stderr.strip()[-2000:]}")
    data = json.loads(out.stdout.strip().splitlines()[-1])
    return float(data["steps_per_s"]), str(data["dbos"])


def ours_sqlite(path: Path, runs: int, steps: int) -> float:
    sz = embedded.Sizes(runs, steps, 0, 1, 0)
    measured = asyncio.run(embedded._throughput(path, sz, runs))
    return measured.steps / (measured.seconds + measured.start_seconds)


def _pair(
    result: SectionResult,
    key: str,
    label: str,
    mine: list[float],
    theirs: list[float],
    cmd: str,
) -> None:
    for who, rates in (("refluxo", mine), ("dbos", theirs)):
        result.figures.append(
            Figure(
                id=f"{SECTION}.{key}.{who}.steps_per_s",
                name=f"{label}: {'refluxo' if who == 'refluxo' else 'DBOS Transact'}",
                value=round(median(rates), 1),
                unit="steps/s",
                display=f"{fmt_num(median(rates))} steps/s",
                command=cmd,
                details={"steps_per_s": spread(rates)},
            )
        )
    value = median(mine) / median(theirs)
    result.figures.append(
        Figure(
            id=f"{SECTION}.{key}.ours_over_dbos",
            name=f"{label}: refluxo / DBOS Transact",
            value=round(value, 3),
            unit="x",
            display=f"{value:.2f}x ({fmt_num(median(mine))} vs {fmt_num(median(theirs))} steps/s)",
            command=cmd,
            goal=f">= {GOAL:g}",
            passed=value >= GOAL,
            details={"refluxo": spread(mine), "dbos": spread(theirs)},
        )
    )


def run(cfg: Config) -> SectionResult:
    cmd = cfg.command_for(SECTION)
    result = SectionResult(SECTION, TITLE)
    missing = dbos_missing()
    if missing is not None:
        result.skipped = missing
        return result
    runs, steps = cfg.pick(100, 40, 3), cfg.pick(100, 50, 4)
    pg_runs, pg_steps = cfg.pick(40, 20, 3), cfg.pick(50, 25, 4)
    repeats = min(cfg.repeats, cfg.pick(3, 1, 1))
    mine: list[float] = []
    theirs: list[float] = []
    version = "?"
    with tempfile.TemporaryDirectory(prefix="refluxo-bench-") as tmp:
        for i in range(repeats):
            clean()
            mine.append(ours_sqlite(Path(tmp) / f"refluxo-{i}.db", runs, steps))
            rate, version = dbos_rate(f"sqlite:///{Path(tmp) / f'dbos-{i}.db'}", runs, steps)
            theirs.append(rate)
    _pair(result, "sqlite", f"Durable steps, {runs} runs x {steps} steps, SQLite", mine, theirs,
          cmd)  # fmt: skip

    pg_note = ""
    try:
        from tests.postgres.server import PostgresServer

        server = PostgresServer()
        server.start()
    except Exception as exc:
        pg_note = f"PostgreSQL skipped (run `make setup-postgres`): {str(exc).splitlines()[0]}"
    else:
        pg_mine: list[float] = []
        pg_theirs: list[float] = []
        try:
            for _ in range(repeats):
                clean()
                pg_mine.append(
                    asyncio.run(postgres._throughput(server.new_database(), 1, pg_runs, pg_steps))
                )
                pg_theirs.append(dbos_rate(server.new_database(), pg_runs, pg_steps)[0])
        finally:
            server.stop()
        _pair(
            result, "postgres", f"Durable steps, {pg_runs} runs x {pg_steps} steps, PostgreSQL",
            pg_mine, pg_theirs, cmd,
        )  # fmt: skip
    result.notes.append(
        f"DBOS Transact {version}: one workflow per run looping over a `DBOS.step` (its output "
        "checkpointed before the next step), all runs started with `DBOS.start_workflow` then "
        "awaited; the clock runs from the first start to the last result, in a process of its "
        "own with DBOS's defaults (SQLite: DBOS's own journal settings). refluxo: the embedded "
        f"section's loop (retention {embedded.RETENTION}, concurrency {embedded.CONCURRENCY}), "
        f"timed from the first start too. Medians of {repeats}, sides interleaved."
    )
    result.notes.append(
        "PostgreSQL: the throwaway server of the postgres section (fsync off, on this "
        "machine); refluxo runs one `refluxo worker --postgres` process, DBOS one process with "
        "that database as its system database. " + pg_note
    )
    return result
