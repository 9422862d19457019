"""The durable workload of the ``vs_dbos`` section on DBOS Transact, run in DBOS's own
environment (``.tools/dbos-venv``, made by ``make setup-bench``), never imported by refluxo.

    python benchmarks/dbos_driver.py SYSTEM_DATABASE_URL RUNS STEPS

Starts RUNS workflows of STEPS trivial steps each (every step a ``DBOS.step``, checkpointed
in the system database before the next one runs), waits for all, and prints one JSON line:
steps per second from the first start to the last result, and DBOS's version.
"""

from __future__ import annotations

import importlib
import json
import sys
import time
from importlib.metadata import version
from typing import Any


def main(argv: list[str]) -> int:
    url, runs, steps = argv[0], int(argv[1]), int(argv[2])
    # Imported by name: DBOS is installed only in its own environment.
    dbos: Any = importlib.import_module("dbos")
    DBOS = dbos.DBOS
    DBOS(config={"name": "refluxo-bench", "system_database_url": url, "log_level": "WARNING"})

    def tick(i: int) -> dict[str, Any]:
        return {"i": i, "status": "ok", "note": "x" * 48}

    step = DBOS.step()(tick)

    def loop(n: int) -> int:
        for i in range(n):
            step(i)
        return n

    workflow = DBOS.workflow()(loop)
    DBOS.launch()
    try:
        t0 = time.perf_counter()
        handles = [DBOS.start_workflow(workflow, steps) for _ in range(runs)]
        done = sum(h.get_result() for h in handles)
        elapsed = time.perf_counter() - t0
    finally:
        DBOS.destroy()
    if done != runs * steps:
        raise RuntimeError(f"expected {runs * steps} steps, counted {done}")
    print(json.dumps({"steps_per_s": done / elapsed, "dbos": version("dbos")}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
