"""The one demo, ``python -m refluxo.demo``, on the embedded runtime."""

from __future__ import annotations

from pathlib import Path

from refluxo.demo.__main__ import run_demo


async def test_the_demo_runs_to_completion_on_the_embedded_runtime(tmp_path: Path) -> None:
    snap = await run_demo(tmp_path / "demo.db")
    assert snap.status == "completed"
    assert list(snap.context) == ["order", "cool_down", "approval", "decide", "ship"]
