"""The workflow the PostgreSQL benchmark's worker processes host: the benchmarks' loop, as
long as ``$REFLUXO_BENCH_STEPS`` says (``refluxo worker --app benchmarks.postgres_app``)."""

from __future__ import annotations

import os

from refluxo.core import Workflow

from .workflows import loop_workflow

RETENTION = 10


def workflows() -> list[Workflow]:
    steps = int(os.environ.get("REFLUXO_BENCH_STEPS", "10"))
    return [loop_workflow(steps, RETENTION, name="embedded")]
