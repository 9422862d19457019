"""Two processes on one file, one with its Python clock 120 s ahead: one clock still rules."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from refluxo.local.runtime import LocalRuntime
from tests.local.clock_app import workflows

pytestmark = pytest.mark.external_service

ROOT = Path(__file__).resolve().parents[2]

# A second process whose Python clock runs 120 s ahead (as a time-patching library, or a
# process's own clock= would make it): it sends an event to the run, then delivers what it
# finds due, and says what it delivered and how the run stands.
SKEWED = textwrap.dedent(
    """
    import time
    _real = time.time_ns
    time.time_ns = lambda: _real() + 120_000_000_000
    time.time = lambda: time.time_ns() / 1e9

    import asyncio, json, sys
    from refluxo.local.runtime import LocalRuntime
    from tests.local.clock_app import workflows

    async def main(path: str, run_id: str, send_event: bool) -> None:
        runtime = LocalRuntime(workflows(), db_path=path)
        if send_event:
            await runtime.dispatcher.send_event(run_id, {"poke": True})
        delivered = []

        async def record(message):
            delivered.append(message.key)
            if send_event:
                await runtime.dispatcher.dispatch(message)

        await runtime.scheduler.drain(record)
        run = await runtime.dispatcher.get(run_id)
        print(json.dumps({"delivered": delivered, "status": run.status}))
        runtime.scheduler.close()
        runtime.store.close()

    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3] == "event"))
    """
)


def skewed(path: Path, run_id: str, mode: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-c", SKEWED, str(path), run_id, mode],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    result: dict[str, Any] = json.loads(out.stdout)
    return result


async def until(check: Any, deadline_s: float = 20) -> None:
    end = time.monotonic() + deadline_s
    while not await check():
        assert time.monotonic() < end, "gave up waiting"
        await asyncio.sleep(0.02)


async def test_a_process_with_its_clock_ahead_does_not_end_a_sleep_early(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    async with LocalRuntime(workflows(), db_path=path) as runtime:
        await runtime.dispatcher.start("sleeps", run_id="s1")

        async def sleeping() -> bool:
            run = await runtime.dispatcher.get("s1")
            return run.wait is not None and run.wait.kind == "sleep"

        await until(sleeping)
    result = skewed(path, "s1", "event")
    assert result["status"] == "paused"  # still asleep: 30 s have not passed on any clock
    async with LocalRuntime(workflows(), db_path=path) as runtime:
        run = await runtime.dispatcher.get("s1")
        assert run.status == "paused" and run.wait is not None and run.wait.kind == "sleep"
        assert "b" not in run.context


async def test_a_process_with_its_clock_ahead_does_not_take_over_a_lease_in_flight(
    tmp_path: Path,
) -> None:
    path = tmp_path / "r.db"
    started = asyncio.Event()
    async with LocalRuntime(workflows(), db_path=path, globals={"started": started}) as runtime:
        await runtime.dispatcher.start("hangs", run_id="h1")
        await asyncio.wait_for(started.wait(), 20)
        result = await asyncio.to_thread(skewed, path, "h1", "lease")
        assert result["delivered"] == []
        (message,) = await runtime.scheduler.list_messages()
        assert message.state == "leased"
        await runtime.dispatcher.cancel("h1")
