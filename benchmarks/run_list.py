"""``GET /runs`` on SQLite: the time of one page (50 runs) among 20,000 runs of ~4 KB.

Run: ``.venv/bin/python -m benchmarks.run_list``. Prints milliseconds per page, unfiltered
(a scan of the table's ``updated_at``) and filtered by status (the ``runs_settled`` index),
median of 20.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from refluxo.core.model import Snapshot
from refluxo.local.store import SQLiteStateStore

RUNS = 20_000
PAGE = 50


async def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        store = SQLiteStateStore(Path(folder) / "runs.db")
        pad = "x" * 4000
        for i in range(RUNS):
            failed = i % 10 == 0
            await store.create(
                Snapshot.model_validate(
                    {
                        "workflowId": f"r{i:06d}",
                        "status": "failed" if failed else "paused",
                        "currentNodeId": "n",
                        "definition": {"name": "w", "hash": "0123456789abcdef"},
                        "metadata": {"failedReason": "boom", "pad": pad},
                    }
                )
            )
        for label, status in (("unfiltered", None), ("status=failed", "failed")):
            times = []
            for _ in range(20):
                start = time.perf_counter()
                await store.find_runs(status=status, limit=PAGE + 1)
                times.append((time.perf_counter() - start) * 1000)
            print(f"{label:>14}: {statistics.median(times):.1f} ms per page of {PAGE}")
        store.close()


if __name__ == "__main__":
    asyncio.run(main())
