"""Section 7, PostgreSQL: steps/s with 1, 2 and 4 worker processes on one database.

A throwaway PostgreSQL server is started (tests/postgres/server.py: Debian's ``postgresql``
package, ``make setup-postgres``), with ``fsync=off``, as a test server. For each worker count
a fresh database gets that many ``refluxo worker --postgres URL`` processes (concurrency 8
each, the default), started and ready before the clock starts; then the runs of the
benchmarks' loop workflow are started from this process, and the clock stops when the last
one is completed (polled every 20 ms). The SQLite embedded figure (section 3's measurement:
one process, SQLite store and local scheduler, concurrency 8) is measured in the same run on
the same runs, so that a busy machine shifts both alike.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from refluxo.core import Dispatcher

from . import embedded
from .common import ROOT, Config, Figure, SectionResult, clean, fmt_num, median, now, spread
from .postgres_app import RETENTION, workflows

SECTION = "postgres"
TITLE = "7. PostgreSQL: worker processes on one database"
WORKERS = (1, 2, 4)
CONCURRENCY = 8
POLL_S = 0.02


def _sizes(cfg: Config) -> tuple[int, int, int]:
    """Runs, steps per run, repeats."""
    return cfg.pick(40, 20, 3), cfg.pick(50, 25, 4), min(cfg.repeats, cfg.pick(3, 1, 1))


def _start_worker(url: str, steps: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable, "-m", "refluxo.local.cli", "worker", "--postgres", url,
            "--app", "benchmarks.postgres_app", "--concurrency", str(CONCURRENCY),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "REFLUXO_BENCH_STEPS": str(steps)},
    )  # fmt: skip


async def _throughput(url: str, workers: int, runs: int, steps: int) -> float:
    """Steps per second of ``workers`` processes finishing ``runs`` runs of ``steps`` steps."""
    from refluxo.postgres import PostgresScheduler, PostgresStateStore, open_pool

    pool = await open_pool(url)
    store = PostgresStateStore(pool)
    scheduler = PostgresScheduler(pool)
    await store.ensure_schema()
    await scheduler.create_schema()
    os.environ["REFLUXO_BENCH_STEPS"] = str(steps)
    dispatcher = Dispatcher(workflows(), store, scheduler)
    procs = [_start_worker(url, steps) for _ in range(workers)]
    try:
        for proc in procs:  # ready: each says so once its loop is listening
            assert proc.stdout is not None
            line = await asyncio.to_thread(proc.stdout.readline)
            if "running" not in line:
                raise RuntimeError(f"a worker did not start: {line!r}")
        t0 = now()
        for i in range(runs):
            await dispatcher.start("embedded", run_id=f"run-{i:03d}")
        while True:
            async with pool.connection() as conn:
                cur = await conn.execute(
                    "SELECT count(*) FROM refluxo_runs WHERE status = 'completed'"
                )
                row: Any = await cur.fetchone()
            if row[0] == runs:
                break
            await asyncio.sleep(POLL_S)
        elapsed = now() - t0
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=30)
            if proc.stdout is not None:
                proc.stdout.close()
        await pool.close()
    return runs * steps / elapsed


def run(cfg: Config) -> SectionResult:
    cmd = cfg.command_for(SECTION)
    result = SectionResult(SECTION, TITLE)
    runs, steps, repeats = _sizes(cfg)
    try:
        from tests.postgres.server import PostgresServer

        server = PostgresServer()
        server.start()
    except Exception as exc:
        result.skipped = (
            f"PostgreSQL did not start (run `make setup-postgres`): {str(exc).splitlines()[0]}"
        )
        return result
    rates: dict[int, list[float]] = {n: [] for n in WORKERS}
    sqlite: list[float] = []
    try:
        with tempfile.TemporaryDirectory(prefix="refluxo-bench-") as tmp:
            sz = embedded.Sizes(runs, steps, 0, 1, 0)
            for i in range(repeats):
                for n in WORKERS:
                    clean()
                    rates[n].append(asyncio.run(_throughput(server.new_database(), n, runs, steps)))
                clean()
                measured = asyncio.run(embedded._throughput(Path(tmp) / f"e{i}.db", sz, runs))
                sqlite.append(measured.steps / measured.seconds)
    finally:
        server.stop()
    base = median(sqlite)
    result.figures.append(
        Figure(
            id="postgres.sqlite_embedded.steps_per_s",
            name=f"SQLite embedded, one process (concurrency {CONCURRENCY}), same runs",
            value=round(base, 1),
            unit="steps/s",
            display=f"{fmt_num(base)} steps/s",
            command=cmd,
            details={"steps_per_s": spread(sqlite)},
        )
    )
    for n in WORKERS:
        rate = median(rates[n])
        result.figures.append(
            Figure(
                id=f"postgres.workers_{n}.steps_per_s",
                name=f"PostgreSQL, {n} worker process{'es' if n > 1 else ''} "
                f"(concurrency {CONCURRENCY} each) on one database",
                value=round(rate, 1),
                unit="steps/s",
                display=f"{fmt_num(rate)} steps/s ({rate / base:.2f}x SQLite embedded)",
                command=cmd,
                details={"steps_per_s": spread(rates[n]), "over_sqlite": rate / base},
            )
        )
    result.notes.append(
        f"{runs} runs of a {steps}-step loop (retention {RETENTION}) per measurement, median "
        f"of {repeats}; worker processes are started and listening before the clock starts, "
        "which stops when the last run is completed. The server runs on the same machine "
        f"({os.cpu_count()} CPUs shared by the workers, the server and this process), with "
        "fsync off: the figures show how the work spreads over processes, not what a "
        "dedicated database server sustains."
    )
    return result
