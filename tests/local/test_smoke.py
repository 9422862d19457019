"""``refluxo smoke --url``: the demo run to completion against a served deployment."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from refluxo.core.dispatcher import load_workflows
from refluxo.local.cli import main
from refluxo.local.runtime import LocalRuntime


async def test_smoke_runs_the_demo_to_completion_against_a_url(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with LocalRuntime(
        load_workflows("refluxo.demo"), db_path=tmp_path / "dev.db", api_token="s3cret"
    ) as runtime:
        server = await runtime.serve("127.0.0.1", 0)
        argv = ["smoke", "--url", server.url, "--token", "s3cret", "--poll", "0.05"]
        code = await asyncio.to_thread(main, [*argv, "--timeout", "60"])
        printed = capsys.readouterr().out
        assert code == 0, printed
        assert "OK, the demo ran to completion" in printed
        assert "order took 3 attempt(s)" in printed  # two retries, then success
        run_id = printed.split("started run ", 1)[1].split(":", 1)[0]
        snap = await runtime.store.load(run_id)
        assert snap.status == "completed" and "ship" in snap.context

        # The wrong token: a clear failure, not a traceback.
        code = await asyncio.to_thread(main, ["smoke", "--url", server.url, "--token", "nope"])
        assert code == 1
        assert "FAILED: HTTP 401" in capsys.readouterr().out


async def test_smoke_says_which_stage_did_not_happen(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Served, but nothing delivers steps: the scheduler's worker never runs.
    runtime = LocalRuntime(
        load_workflows("refluxo.demo"), db_path=tmp_path / "dev.db", reconcile_every_s=None
    )
    try:
        server = await runtime.serve("127.0.0.1", 0)
        argv = ["smoke", "--url", server.url, "--timeout", "0.3", "--poll", "0.05"]
        code = await asyncio.to_thread(main, argv)
    finally:
        await runtime.__aexit__(None, None, None)
    printed = capsys.readouterr().out
    assert code == 1
    assert "no step ran: deliveries do not reach /_dispatch" in printed
