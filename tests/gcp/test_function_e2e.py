"""The deployment bundle, served as Cloud Functions serves it, end to end on the emulators.

``build()`` of deploy/gcp/deploy.py writes the bundle (exactly what a deployment uploads) to a
temporary folder. functions-framework serves its ``main.py`` from ``.tools/gcp-function/``, a
virtual environment holding only the bundle's ``requirements.txt`` (``make setup-gcp`` makes
it), with the bundle as working directory: a module the bundle lacks fails these tests instead
of being imported from the repository. Behind the function: the Firestore emulator, and
gcloud-tasks-emulator delivering every step to ``<url>/_dispatch``.

The tasks emulator attaches no OIDC token to what it delivers, so ``/_dispatch`` is
authenticated with the shared secret instead: ``REFLUXO_DISPATCH_TOKEN`` is set, and every task
carries it in ``X-Refluxo-Dispatch-Token``. The OIDC check itself is tested in test_oidc.py.
The emulator does not deduplicate task names either, so every duplicate reaches the function;
it must answer them with a 2xx and change nothing (the emulator re-sends a non-2xx about every
0.1 s).

What these tests cannot show: OIDC tokens from Cloud Tasks and Cloud Scheduler, Cloud Tasks
collapsing a task name it has seen, and 503 on a Firestore outage (the Firestore client retries
UNAVAILABLE for up to 300 s before the store gives up, far past a test's patience).
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import secrets
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from refluxo.core import Snapshot
from refluxo.core.model import DispatchMessage
from refluxo.gcp.auth import DISPATCH_TOKEN_HEADER
from refluxo.gcp.scheduler import CloudTasksScheduler

try:
    from .emulators import (
        REPO_ROOT,
        CloudTasksEmulator,
        EmulatorError,
        FirestoreEmulator,
        FunctionsFrameworkServer,
    )
except ImportError:
    from emulators import (  # type: ignore[no-redef]
        REPO_ROOT,
        CloudTasksEmulator,
        EmulatorError,
        FirestoreEmulator,
        FunctionsFrameworkServer,
    )

# Made by `make setup-gcp`; $REFLUXO_GCP_FUNCTION_VENV points elsewhere.
FUNCTION_VENV = Path(
    os.environ.get("REFLUXO_GCP_FUNCTION_VENV") or REPO_ROOT / ".tools" / "gcp-function"
)
DEADLINE = 30.0  # seconds: the demo needs about 2 s; this is for a slow CI machine
POLL = 0.05
MAX_BODY_BYTES = 8192
ORDER_ID = "E2E-7"
DISPATCH_TOKEN = secrets.token_urlsafe(24)

# Variables of the test's own environment that must not leak into the function's.
_NOT_INHERITED = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV")


def _fail_or_skip(message: str) -> None:
    if os.environ.get("REFLUXO_SKIP_GCP", "") == "1":
        pytest.skip(f"REFLUXO_SKIP_GCP=1: {message}")
    pytest.fail(f"{message} (set REFLUXO_SKIP_GCP=1 to skip these tests)", pytrace=False)


# --------------------------------------------------------------------------- #
# The function under test
# --------------------------------------------------------------------------- #


class BundleFunction(FunctionsFrameworkServer):
    """The bundle under functions-framework, from its own venv, knowing its own URL."""

    def process_env(self) -> dict[str, str]:
        env = {
            k: v
            for k, v in super().process_env().items()
            if k not in _NOT_INHERITED and not k.startswith("REFLUXO_")
        }
        env.update(self._extra_env)
        # The port is picked in start(), before the process is spawned.
        env["REFLUXO_FUNCTION_URL"] = self.url
        return env


class Api:
    """A small HTTP client for the function: JSON in, (status, JSON) out."""

    def __init__(self, server: BundleFunction) -> None:
        self.server = server
        self.port = server.port

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
        chunked: bool = False,
    ) -> tuple[int, Any]:
        data = raw if raw is not None else None if body is None else json.dumps(body).encode()
        sent = {"Content-Type": "application/json", **(headers or {})}
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=DEADLINE)
        try:
            if chunked and data is not None:
                pieces = [data[i : i + 1024] for i in range(0, len(data), 1024)]
                conn.request(method, path, body=iter(pieces), headers=sent, encode_chunked=True)
            else:
                conn.request(method, path, body=data, headers=sent)
            response = conn.getresponse()
            payload = response.read()
        finally:
            conn.close()
        try:
            return response.status, json.loads(payload) if payload else None
        except ValueError:
            return response.status, payload.decode("utf-8", "replace")

    def dispatch(self, message: Any, token: str | None = DISPATCH_TOKEN) -> tuple[int, Any]:
        """POST ``message`` to /_dispatch as the queue would (with the shared secret)."""
        headers = {DISPATCH_TOKEN_HEADER: token} if token is not None else {}
        if isinstance(message, DispatchMessage):
            message = message.to_dict()
        return self.request("POST", "/_dispatch", message, headers=headers)

    def run(self, run_id: str) -> Snapshot:
        status, body = self.request("GET", f"/runs/{run_id}")
        assert status == 200, (status, body, self.server.output())
        return Snapshot.model_validate(body)

    def wait(
        self,
        run_id: str,
        until: Callable[[Snapshot], bool],
        what: str,
        *,
        each: Callable[[Snapshot], None] | None = None,
    ) -> Snapshot:
        """Poll the run until ``until`` holds; ``each`` sees every snapshot polled."""
        deadline = time.monotonic() + DEADLINE
        while True:
            snap = self.run(run_id)
            if each is not None:
                each(snap)
            if until(snap):
                return snap
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"run {run_id} was not {what} within {DEADLINE}s; last: {snap.to_json()}\n"
                    f"--- function output (tail) ---\n{self.server.output()}"
                )
            time.sleep(POLL)


def waiting_for_approval(snap: Snapshot) -> bool:
    return snap.status == "paused" and snap.wait is not None and snap.wait.kind == "event"


def finished(snap: Snapshot) -> bool:
    return snap.is_terminal


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory, deploy_script: Any) -> Path:
    """The deployment bundle of the demo, as deploy.py builds it."""
    out: Path = deploy_script.build(tmp_path_factory.mktemp("gcp") / "bundle", "refluxo.demo")
    return out


@pytest.fixture(scope="module")
def function_framework() -> Path:
    """functions-framework of the venv that holds only deploy/gcp/requirements.txt."""
    executable = FUNCTION_VENV / "bin" / "functions-framework"
    if not (executable.is_file() and os.access(executable, os.X_OK)):
        _fail_or_skip(
            f"{executable} is missing: run `make setup-gcp`, which makes .tools/gcp-function/, "
            "a venv with only the function's requirements"
        )
    return executable


@pytest.fixture(scope="module")
def function(
    bundle: Path,
    function_framework: Path,
    firestore_emulator: FirestoreEmulator,
    tasks_emulator: CloudTasksEmulator,
) -> Iterator[BundleFunction]:
    """The bundle served on loopback, wired to both emulators."""
    server = BundleFunction(
        "refluxo",
        bundle / "main.py",
        executable=function_framework,
        cwd=bundle,
        env={
            **firestore_emulator.env,
            **tasks_emulator.env,  # CLOUD_TASKS_EMULATOR_HOST: the bootstrap reads it
            "REFLUXO_APP": "refluxo.demo",
            "REFLUXO_PROJECT": tasks_emulator.project,
            "REFLUXO_LOCATION": tasks_emulator.location,
            "REFLUXO_QUEUE": tasks_emulator.queue,
            "REFLUXO_COLLECTION": "e2e_runs",
            "REFLUXO_DISPATCH_TOKEN": DISPATCH_TOKEN,
            "REFLUXO_GLOBALS": json.dumps({"supplier_token": "e2e-token"}),
            "REFLUXO_MAX_BODY_BYTES": str(MAX_BODY_BYTES),
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


@pytest.fixture(scope="module")
def api(function: BundleFunction) -> Api:
    api = Api(function)
    status, body = api.request("GET", "/healthz")  # the first request builds the app
    assert (status, body) == (200, {"ok": True}), function.output()
    return api


@pytest.fixture(scope="module")
def suffix() -> str:
    """Makes run ids unique to this session (the emulator may outlive a run of the tests)."""
    return uuid.uuid4().hex[:8]


@dataclass(frozen=True)
class DemoRun:
    waiting: Snapshot  # paused for the approval
    done: Snapshot


def run_demo(api: Api, run_id: str, **hooks: Any) -> DemoRun:
    """Start the demo, approve it when it waits, and return it waiting and finished."""
    status, body = api.request(
        "POST",
        "/workflows/demo/runs",
        {"id": run_id, "input": {"customer": "Lin", "order": ORDER_ID}},
    )
    assert status == 201, (status, body)
    assert body == {"workflowId": run_id, "status": "active", "version": 0}
    waiting = api.wait(run_id, waiting_for_approval, "waiting for the approval", **hooks)
    status, body = api.request(
        "POST",
        f"/runs/{run_id}/events",
        {"payload": {"approved": True}, "name": "approval", "id": "approve-1"},
    )
    assert status == 202, (status, body)
    assert body["workflowId"] == run_id
    done = api.wait(run_id, finished, "finished", **hooks)
    return DemoRun(waiting, done)


@pytest.fixture(scope="module")
def clean_run(api: Api, suffix: str) -> DemoRun:
    """One demo run without interference, for reference."""
    return run_demo(api, f"clean-{suffix}")


def recorded(snap: Snapshot) -> dict[str, list[tuple[int, str | None, Any]]]:
    """What a run recorded, without the times: node -> [(attempt, error, output)]."""
    return {
        node: [(r.attempt, r.error, r.output) for r in results]
        for node, results in sorted(snap.context.items())
    }


# --------------------------------------------------------------------------- #
# The bundle
# --------------------------------------------------------------------------- #


def test_the_bundle_imports_refluxo_from_itself_only(
    bundle: Path, function_framework: Path
) -> None:
    python = function_framework.parent / "python"
    probe = (
        "import importlib.util, json, refluxo, refluxo.core, refluxo.gcp.function, refluxo.demo\n"
        "print(json.dumps({'paths': list(refluxo.__path__),"
        " 'local': importlib.util.find_spec('refluxo.local') is not None}))\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in _NOT_INHERITED}
    out = subprocess.run(
        [str(python), "-c", probe],
        cwd=bundle,
        env=env,
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    found = json.loads(out.stdout)
    assert [Path(p).resolve() for p in found["paths"]] == [(bundle / "refluxo").resolve()]
    assert found["local"] is False


# --------------------------------------------------------------------------- #
# The demo, through the HTTP API
# --------------------------------------------------------------------------- #


def test_the_demo_runs_to_completion_through_the_api(clean_run: DemoRun) -> None:
    waiting, done = clean_run.waiting, clean_run.done
    assert done.status == "completed", done.to_json()

    # order: fails twice, succeeds on the third attempt, 200 then 400 ms apart.
    order = done.context["order"]
    assert [(r.attempt, r.error is None) for r in order] == [(1, False), (2, False), (3, True)]
    assert order[0].error == "SupplierUnavailable: supplier timed out (attempt 1)"
    assert order[1].error == "SupplierUnavailable: supplier timed out (attempt 2)"
    assert order[2].output == {"order": ORDER_ID, "customer": "Lin", "items": 3}
    assert order[1].timestamp - order[0].timestamp >= 200
    assert order[2].timestamp - order[1].timestamp >= 400

    # cool_down: sleeps 1 s durably before the approval wait begins.
    (cool_down,) = done.context["cool_down"]
    assert cool_down.output == {"slept": 1}
    assert waiting.wait is not None and waiting.wait.event == "approval"
    assert waiting.wait.until is not None
    approval_began = waiting.wait.until - 3600 * 1000  # the wait's timeout is one hour
    # The sleep ends 1 s after cool_down's step began, a moment before its result's timestamp.
    assert approval_began - cool_down.timestamp >= 900

    # approval, then the branch: approved -> ship; cancel never runs.
    assert [r.output for r in done.context["approval"]] == [{"approved": True}]
    assert [r.output for r in done.context["decide"]] == [{"approved": True}]
    assert [r.output for r in done.context["ship"]] == [{"note": f"shipping {ORDER_ID} to Lin"}]
    assert "cancel" not in done.context
    assert not done.inbox and done.wait is None and done.retry_state is None
    # start, 3 order attempts, cool_down, approval wait, event, approval, decide, ship
    assert done.version == 9


def test_starting_the_same_run_again_answers_200_and_starts_nothing(
    api: Api, clean_run: DemoRun
) -> None:
    run_id = clean_run.done.run_id
    status, body = api.request("POST", "/workflows/demo/runs", {"id": run_id, "input": 2})
    assert status == 200, body
    assert body == {"workflowId": run_id, "status": "completed", "version": clean_run.done.version}
    assert api.run(run_id) == clean_run.done


# --------------------------------------------------------------------------- #
# At-least-once delivery
# --------------------------------------------------------------------------- #

# What a harmless duplicate may do; anything else (unknown_run, refused) would be a bug here.
HARMLESS = {"stepped", "stale", "recovered", "early", "waiting", "conflict", "finished"}


async def test_tasks_delivered_twice_change_nothing(
    api: Api,
    clean_run: DemoRun,
    suffix: str,
    tasks_emulator: CloudTasksEmulator,
    tasks_client: Any,
) -> None:
    """Deliveries come three more times; the run ends as the clean run did.

    For each version of the run that the polling sees, the test schedules a copy of the
    function's own task (the same task name: the emulator, unlike Cloud Tasks, accepts and
    delivers it) and POSTs the same message to /_dispatch twice itself, racing the queue.
    """
    run_id = f"dup-{suffix}"
    # The function's own scheduler, as the bootstrap builds it: same queue, URL and headers.
    copies = CloudTasksScheduler(
        tasks_client,
        queue=tasks_emulator.queue_path,
        url=f"{api.server.url}/_dispatch",
        headers={DISPATCH_TOKEN_HEADER: DISPATCH_TOKEN},
    )
    seen: set[int] = set()
    pairs: list[tuple[int, str, str]] = []
    pending: list[tuple[DispatchMessage, int | None]] = []

    def duplicate(snap: Snapshot) -> None:
        if snap.is_terminal or snap.version in seen:
            return
        seen.add(snap.version)
        message = DispatchMessage(run_id=run_id, version=snap.version)
        pending.append((message, snap.due_at()))  # when the function scheduled it for
        outcomes = []
        for _ in range(2):
            status, body = api.dispatch(message)
            assert status == 200, (status, body)
            outcomes.append(body["outcome"])
        pairs.append((snap.version, outcomes[0], outcomes[1]))

    async def schedule_copies() -> None:
        while pending:
            message, due = pending.pop(0)
            await copies.schedule(message, at=due or None)

    def run() -> DemoRun:
        return run_demo(api, run_id, each=duplicate)

    # The polling (and its direct POSTs) run in a thread; task copies go out from the loop.
    runner = asyncio.get_running_loop().run_in_executor(None, run)
    while not runner.done():
        await schedule_copies()
        await asyncio.sleep(POLL)
    dup = await runner
    await schedule_copies()

    assert recorded(dup.done) == recorded(clean_run.done)
    for node, results in dup.done.context.items():  # no result recorded twice
        assert len({r.attempt for r in results}) == len(results), (node, results)
    assert dup.done.status == "completed"
    assert dup.done.version == clean_run.done.version
    assert not dup.done.inbox
    for version, first, second in pairs:
        assert {first, second} <= HARMLESS, (version, first, second)
        # The same message twice in a row: the second can never run the step again.
        assert second != "stepped", (version, first, second)
    assert seen, "no version was observed"

    # Now deterministic: the finished run takes any message without a change.
    final = dup.done
    for version in (final.version, final.version, final.version - 1, 0):
        status, body = api.dispatch(DispatchMessage(run_id=run_id, version=version))
        assert status == 200, body
        assert body["outcome"] == ("finished" if version == final.version else "stale"), body
    assert api.run(run_id) == final


def test_a_duplicate_while_waiting_for_the_event_is_put_off(api: Api, suffix: str) -> None:
    run_id = f"wait-{suffix}"
    status, body = api.request(
        "POST", "/workflows/demo/runs", {"id": run_id, "input": {"order": ORDER_ID}}
    )
    assert status == 201, body
    waiting = api.wait(run_id, waiting_for_approval, "waiting for the approval")
    message = DispatchMessage(run_id=run_id, version=waiting.version)
    for _ in range(2):
        status, body = api.dispatch(message)
        assert (status, body["outcome"], body["version"]) == (200, "early", waiting.version)
    # One version behind, with the wait still pending: its delivery is re-sent (the deadline).
    status, body = api.dispatch(DispatchMessage(run_id=run_id, version=waiting.version - 1))
    assert (status, body["outcome"]) == (200, "recovered")
    assert api.run(run_id) == waiting
    # The approval moves it on: rejected, so the branch goes to cancel.
    status, body = api.request(
        "POST", f"/runs/{run_id}/events", {"payload": {"approved": False}, "name": "approval"}
    )
    assert status == 202, body
    done = api.wait(run_id, finished, "finished")
    assert done.status == "completed"
    assert [r.output for r in done.context["cancel"]] == [{"note": f"order {ORDER_ID} cancelled"}]
    assert "ship" not in done.context


# --------------------------------------------------------------------------- #
# Bad requests
# --------------------------------------------------------------------------- #

OVERSIZE = {"id": "too-big", "input": "x" * (MAX_BODY_BYTES + 1)}

BAD_REQUESTS: list[tuple[str, str, str, dict[str, Any], int, str]] = [
    # (id, method, path, request kwargs, status, error code)
    ("malformed-json", "POST", "/workflows/demo/runs", {"raw": b'{"id": '}, 400, "invalid_json"),
    ("not-an-object", "POST", "/workflows/demo/runs", {"raw": b"[1, 2]"}, 400, "invalid_json"),
    (
        "unknown-field",
        "POST",
        "/workflows/demo/runs",
        {"body": {"id": "x-1", "colour": "red"}},
        400,
        "invalid_request",
    ),
    (
        "bad-run-id",
        "POST",
        "/workflows/demo/runs",
        {"body": {"id": "no spaces"}},
        400,
        "invalid_run_id",
    ),
    (
        "unknown-workflow",
        "POST",
        "/workflows/nope/runs",
        {"body": {"id": "x-2"}},
        404,
        "unknown_workflow",
    ),
    ("unknown-run", "GET", "/runs/no-such-run", {}, 404, "unknown_run"),
    (
        "event-for-unknown-run",
        "POST",
        "/runs/no-such-run/events",
        {"body": {"payload": 1}},
        404,
        "unknown_run",
    ),
    (
        "event-without-payload",
        "POST",
        "/runs/no-such-run/events",
        {"body": {}},
        400,
        "invalid_request",
    ),
    ("cancel-unknown-run", "POST", "/runs/no-such-run/cancel", {}, 404, "unknown_run"),
    ("unknown-route", "GET", "/nowhere", {}, 404, "not_found"),
    ("wrong-method", "GET", "/workflows/demo/runs", {}, 405, "method_not_allowed"),
    ("oversize", "POST", "/workflows/demo/runs", {"body": OVERSIZE}, 413, "payload_too_large"),
    (
        "oversize-chunked",
        "POST",
        "/workflows/demo/runs",
        {"body": OVERSIZE, "chunked": True},
        413,
        "payload_too_large",
    ),
    (
        "dispatch-without-token",
        "POST",
        "/_dispatch",
        {"body": {"runId": "x-3", "version": 0}},
        401,
        "unauthorized",
    ),
    (
        "dispatch-wrong-token",
        "POST",
        "/_dispatch",
        {
            "body": {"runId": "x-3", "version": 0},
            "headers": {DISPATCH_TOKEN_HEADER: DISPATCH_TOKEN + "x"},
        },
        401,
        "unauthorized",
    ),
    (
        "dispatch-token-as-bearer",
        "POST",
        "/_dispatch",
        {
            "body": {"runId": "x-3", "version": 0},
            "headers": {"Authorization": f"Bearer {DISPATCH_TOKEN}"},
        },
        401,
        "unauthorized",
    ),
    (
        "dispatch-malformed-message",
        "POST",
        "/_dispatch",
        {"body": {"runId": "x-3"}, "headers": {DISPATCH_TOKEN_HEADER: DISPATCH_TOKEN}},
        400,
        "invalid_message",
    ),
    (
        "dispatch-malformed-json",
        "POST",
        "/_dispatch",
        {"raw": b"run x-3 please", "headers": {DISPATCH_TOKEN_HEADER: DISPATCH_TOKEN}},
        400,
        "invalid_json",
    ),
]


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "code"),
    [pytest.param(*case[1:], id=case[0]) for case in BAD_REQUESTS],
)
def test_bad_requests_get_their_4xx_and_change_nothing(
    api: Api, method: str, path: str, kwargs: dict[str, Any], status: int, code: str
) -> None:
    got, body = api.request(method, path, **kwargs)
    assert got == status, (got, body)
    assert isinstance(body, dict) and set(body) == {"error"}, body
    assert body["error"]["code"] == code, body
    for run_id in ("x-1", "x-2", "x-3", "too-big", "no-such-run"):
        assert api.request("GET", f"/runs/{run_id}")[0] == 404, run_id


def test_a_chunked_body_within_the_limit_is_read_whole(api: Api, suffix: str) -> None:
    run_id = f"chunked-{suffix}"
    body = {"id": run_id, "input": {"note": "y" * (MAX_BODY_BYTES - 100)}}
    status, answer = api.request("POST", "/workflows/demo/runs", body, chunked=True)
    assert status == 201, answer
    assert api.run(run_id).input == body["input"]


def test_a_dispatch_for_an_unknown_run_is_a_harmless_200(api: Api) -> None:
    # A 2xx: the queue must not re-send a message that can never do anything.
    status, body = api.dispatch({"runId": "never-started", "version": 3})
    assert (status, body["outcome"]) == (200, "unknown_run")
    assert api.request("GET", "/runs/never-started")[0] == 404


async def test_a_run_whose_only_task_was_lost_is_recovered_through_the_reconcile_route(
    api: Api, firestore_emulator: FirestoreEmulator, suffix: str
) -> None:
    """What the Cloud Scheduler job does: a run stored ten minutes ago whose task never came
    (deleted after its attempts) is found by its due time, and its steps go on."""
    from unittest import mock

    from google.cloud import firestore

    from refluxo.core import Workflow
    from refluxo.core.model import now_ms
    from refluxo.demo import DEFINITION, NODES
    from refluxo.gcp import FirestoreStateStore

    run_id = f"stranded-{suffix}"
    with mock.patch.dict(os.environ, firestore_emulator.env):
        client = firestore.AsyncClient(project=firestore_emulator.project)
    try:
        store = FirestoreStateStore(client, "e2e_runs", clock=lambda: now_ms() - 600_000)
        demo = Workflow("demo", DEFINITION, NODES)
        snapshot = demo.engine.create_initial_snapshot(
            run_id, demo.start, input={"customer": "Lin"}, definition=demo.ref
        )
        assert await store.create(snapshot)  # stored, and no task scheduled
    finally:
        await client._firestore_api.transport.close()

    headers = {DISPATCH_TOKEN_HEADER: DISPATCH_TOKEN}
    status, body = await asyncio.to_thread(api.request, "POST", "/_reconcile", {}, headers=headers)
    assert status == 200, body
    assert run_id in body["scheduled"]
    waiting = await asyncio.to_thread(
        api.wait, run_id, waiting_for_approval, "waiting for the approval"
    )
    assert waiting.current_node_id == "approval"
    status, body = await asyncio.to_thread(api.request, "POST", "/_reconcile", {})
    assert status == 401  # only the scheduler's credential may ask


def test_runs_are_listed_through_the_function_with_their_query(
    api: Api, clean_run: DemoRun, suffix: str
) -> None:
    status, body = api.request("GET", "/runs?workflow=demo&status=completed&limit=200")
    assert status == 200, body
    listed = {run["id"]: run for run in body["runs"]}
    run = listed[f"clean-{suffix}"]
    assert (run["workflow"], run["status"], run["version"]) == (
        "demo",
        "completed",
        clean_run.done.version,
    )
    assert all(r["status"] == "completed" for r in body["runs"])
    status, body = api.request("GET", "/runs?status=sleeping")
    assert (status, body["error"]["code"]) == (400, "invalid_query")
