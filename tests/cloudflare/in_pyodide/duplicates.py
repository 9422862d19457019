"""Runs inside Pyodide with the built bundle as the Worker: ``harness.mjs run --entry entry``.

Two demo runs go through the Worker's HTTP API and its own queue consumer: ``clean`` on its
own, ``dup`` with every delivery duplicated (the same message sent again, the previous
version's message, a later hop) and its approval event posted twice with one id. At-least-once
delivery must change nothing: both runs must end with the same results, none recorded twice.
"""

import asyncio
import json
import time

from harness_env import dispatch_fetch, env, run_tests

from refluxo.core.model import DispatchMessage

DEADLINE_S = 60.0
sent_duplicates: list[str] = []


async def call(method, path, body=None):
    init = {"method": method}
    if body is not None:
        init["body"] = json.dumps(body)
        init["headers"] = {"content-type": "application/json"}
    response = await dispatch_fetch(path, **init)
    return response.status, json.loads(await response.text())


async def duplicate(run_id, version):
    """Send what a redelivering queue, a stale producer and a retried hop would send."""
    for message in (
        DispatchMessage(run_id=run_id, version=version),
        DispatchMessage(run_id=run_id, version=version),
        DispatchMessage(run_id=run_id, version=max(version - 1, 0)),
        DispatchMessage(run_id=run_id, version=version, hop=1),
    ):
        await env.STEPS.send(message.to_dict())
        sent_duplicates.append(message.key)


async def drive(run_id, *, duplicates):
    """Start a run, approve it when it waits, and return its final snapshot."""
    status, body = await call(
        "POST", "/workflows/demo/runs", {"id": run_id, "input": {"customer": "Ada"}}
    )
    assert status == 201, body
    deadline = time.monotonic() + DEADLINE_S
    seen_version = -1
    approved = False
    while True:
        status, snap = await call("GET", f"/runs/{run_id}")
        assert status == 200, snap
        if duplicates and snap["version"] != seen_version:
            seen_version = snap["version"]
            await duplicate(run_id, seen_version)
        if snap["status"] in ("completed", "failed"):
            return snap
        if (
            snap["status"] == "paused"
            and snap.get("wait", {}).get("kind") == "event"
            and not approved
        ):
            # A client retrying its POST: two with one event id, at once (the id is honoured
            # while the event waits in the inbox; a retry after it was consumed would add it).
            event = {"name": "approval", "payload": {"approved": True}, "id": f"{run_id}-ok"}
            copies = 2 if duplicates else 1
            answers = await asyncio.gather(
                *(call("POST", f"/runs/{run_id}/events", event) for _ in range(copies))
            )
            assert all(status == 202 for status, _ in answers), answers
            approved = True
        assert time.monotonic() < deadline, f"run {run_id} stuck: {snap}"
        await asyncio.sleep(0.1)


def results(snap):
    """Per node, what each execution recorded, without its timestamp."""
    return {
        node: [(r.get("output"), r.get("error"), r.get("attempt")) for r in runs]
        for node, runs in snap["context"].items()
    }


async def test_duplicate_deliveries_change_nothing():
    clean, dup = await asyncio.gather(
        drive("clean", duplicates=False), drive("dup", duplicates=True)
    )
    assert clean["status"] == dup["status"] == "completed", (clean, dup)
    assert results(dup) == results(clean)
    assert dup["version"] == clean["version"]
    assert dup["currentNodeId"] == clean["currentNodeId"]
    assert [len(v) for v in results(clean).values()] == [3, 1, 1, 1, 1], results(clean)
    assert results(clean)["ship"] == [({"note": "shipping A-1001 to Ada"}, None, 1)]
    assert "inbox" not in dup  # the second event with the same id was not kept
    print(f"  sent {len(sent_duplicates)} duplicate deliveries; final version {dup['version']}")


await run_tests()  # noqa: F704 - `harness.mjs run` allows top-level await
