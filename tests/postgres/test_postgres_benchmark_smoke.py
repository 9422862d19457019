"""The PostgreSQL benchmark's code path still runs and writes well-formed figures (tiny sizes,
no timing): its worker processes finish every run on each database."""

from __future__ import annotations

import json
import math
from pathlib import Path

from benchmarks import run


def test_the_postgres_benchmark_runs_and_writes_its_figures(tmp_path: Path) -> None:
    assert run.main(["--tiny", "--out", str(tmp_path), "--section", "postgres"]) == 0
    data = json.loads((tmp_path / "results.json").read_text())
    [section] = data["sections"]
    assert section["skipped"] is None, section["skipped"]
    assert [f["id"] for f in section["figures"]] == [
        "postgres.sqlite_embedded.steps_per_s",
        "postgres.workers_1.steps_per_s",
        "postgres.workers_2.steps_per_s",
        "postgres.workers_4.steps_per_s",
    ]
    for fig in section["figures"]:
        assert math.isfinite(fig["value"]) and fig["value"] > 0, fig
        assert fig["command"] == "python -m benchmarks.run --section postgres --tiny"
    assert section["notes"]
