"""Run inside Pyodide against a bundle whose workflows are built at module level."""

import asyncio
import json
import time

import harness_env

BASE = "http://worker.test"


async def test_a_run_of_a_module_level_workflow_completes():
    response = await harness_env.dispatch_fetch(
        f"{BASE}/workflows/hello/runs",
        method="POST",
        headers={"content-type": "application/json"},
        body=json.dumps({"id": "run-1"}),
    )
    assert response.status == 201, await response.text()
    deadline = time.monotonic() + 30
    while True:  # the queue consumer (Miniflare's) drives the run
        run = json.loads(await (await harness_env.dispatch_fetch(f"{BASE}/runs/run-1")).text())
        if run["status"] == "completed":
            return
        assert run["status"] == "active", run
        assert time.monotonic() < deadline, f"not completed: {run}"
        await asyncio.sleep(0.05)


await harness_env.run_tests()  # noqa: F704 - `harness.mjs run` allows top-level await
