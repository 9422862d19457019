"""refluxo.examples in the Cloud Function bundle on the emulators: Cloud Scheduler's call to
``/_cron`` (twice, as a retried job does) starts the digest once; its sub-workflow node runs the
summary as a child run through Cloud Tasks and Firestore, and the child resumes its parent.

The function is served as in test_function_e2e.py (functions-framework from the venv of the
bundle's requirements). Cloud Scheduler has no emulator: the test makes its HTTP call, with
the header it sends, authenticated by the shared secret (the OIDC check is test_oidc.py's).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from emulators import CloudTasksEmulator, EmulatorError, FirestoreEmulator  # tests/gcp
from test_function_e2e import DISPATCH_TOKEN, Api, BundleFunction, finished
from test_function_e2e import function_framework as function_framework  # the fixture

from refluxo.core.schedules import tick_run_id
from refluxo.core.subflows import child_run_id
from refluxo.gcp.auth import DISPATCH_TOKEN_HEADER


@pytest.fixture(scope="module")
def examples_function(
    tmp_path_factory: pytest.TempPathFactory,
    deploy_script: Any,
    function_framework: Path,
    firestore_emulator: FirestoreEmulator,
    tasks_emulator: CloudTasksEmulator,
) -> Iterator[BundleFunction]:
    bundle: Path = deploy_script.build(
        tmp_path_factory.mktemp("gcp-examples") / "bundle", "refluxo.examples"
    )
    server = BundleFunction(
        "refluxo",
        bundle / "main.py",
        executable=function_framework,
        cwd=bundle,
        env={
            **firestore_emulator.env,
            **tasks_emulator.env,
            "REFLUXO_APP": "refluxo.examples",
            "REFLUXO_PROJECT": tasks_emulator.project,
            "REFLUXO_LOCATION": tasks_emulator.location,
            "REFLUXO_QUEUE": tasks_emulator.queue,
            "REFLUXO_COLLECTION": f"examples_{uuid.uuid4().hex[:8]}",
            "REFLUXO_DISPATCH_TOKEN": DISPATCH_TOKEN,
        },
    )
    try:
        server.start()
    except EmulatorError as exc:
        pytest.fail(f"the bundle did not start under functions-framework:\n{exc}", pytrace=False)
    try:
        yield server
    finally:
        server.stop()


def test_a_cloud_scheduler_tick_twice_runs_the_digest_and_its_child_once(
    examples_function: BundleFunction,
) -> None:
    api = Api(examples_function)
    tick = "2026-11-23T09:00:00Z"  # a Monday, 09:00 in Lisbon (UTC+0 in winter)
    headers = {DISPATCH_TOKEN_HEADER: DISPATCH_TOKEN, "X-CloudScheduler-ScheduleTime": tick}
    body = {"workflow": "digest", "schedule": "weekdays"}
    first = api.request("POST", "/_cron", body, headers=headers)
    again = api.request("POST", "/_cron", body, headers=headers)
    tick_ms = round(datetime(2026, 11, 23, 9, tzinfo=UTC).timestamp() * 1000)
    run_id = tick_run_id("digest", "weekdays", tick_ms)
    assert first == (200, {"runId": run_id, "created": True, "tick": tick_ms}), first
    assert again == (200, {"runId": run_id, "created": False, "tick": tick_ms}), again
    done = api.wait(run_id, finished, "finished")
    assert done.status == "completed", json.dumps(done.metadata)
    assert done.context["publish"][-1].output == {
        "text": "ops: 3 open, 4 closed, first ops-ticket-1"
    }
    child = api.run(child_run_id(run_id, "summarize", 1))
    assert child.status == "completed"
    assert child.metadata["parent"]["runId"] == run_id
    assert [
        len(done.context[n])
        for n in ("collect", "open_items", "closed_items", "merge", "summarize", "publish")
    ] == [1] * 6
    assert api.request("POST", "/_cron", body)[0] == 401  # only the scheduler may call
