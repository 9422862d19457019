"""End to end: the Worker bundle that deploy/cloudflare/deploy.py builds runs the demo workflow.

The bundle is built with the deploy script's own CLI (``--build-only``) into a temporary
folder; the harness serves its ``src/`` with the bindings and vars its ``wrangler.toml``
declares (real KV / D1 / Queues from Miniflare), so the artifact under test is the one that
would be deployed. Through the Worker's HTTP API and its own queue consumer the demo runs
to completion: two failed attempts retried with backoff, the 1 s durable sleep, the pause
for approval, the event, the branch. Duplicate deliveries change nothing, and bad requests
get their 4xx. On D1 and on KV.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
DEPLOY = REPO / "deploy" / "cloudflare" / "deploy.py"
IN_PYODIDE = HERE / "in_pyodide"
TOKEN = "e2e-secret-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}
RUN_DEADLINE_S = 45.0
# The demo's approval waits up to this long (core/refluxo/demo: timeout_seconds).
APPROVAL_TIMEOUT_MS = 3600 * 1000


def build_bundle(out: Path, *args: str) -> Path:
    subprocess.run(
        [sys.executable, str(DEPLOY), "--build-only", "--out", str(out), *args],
        check=True,
        capture_output=True,
        text=True,
    )
    return out


def harness_config(bundle: Path, extra_vars: dict[str, str], name: str) -> Path:
    """A harness config with exactly the bindings and vars of the bundle's wrangler.toml.

    The one difference: the consumer's ``max_batch_timeout`` is 0 here (the harness default),
    so a test does not wait a second for every batch.
    """
    wrangler = tomllib.loads((bundle / "wrangler.toml").read_text())
    assert wrangler["main"] == "src/entry.py"
    assert wrangler["compatibility_flags"][0] == "python_workers"
    consumers = {c["queue"]: c for c in wrangler["queues"].get("consumers", [])}
    queues = {}
    for producer in wrangler["queues"]["producers"]:
        consumer = consumers[producer["queue"]]
        queues[producer["binding"]] = {
            "queue": producer["queue"],
            "maxBatchSize": consumer["max_batch_size"],
            "maxRetries": consumer["max_retries"],
            "deadLetterQueue": consumer["dead_letter_queue"],
        }
    config = {
        "entry": "entry",
        "kv": [kv["binding"] for kv in wrangler.get("kv_namespaces", [])],
        "d1": [db["binding"] for db in wrangler.get("d1_databases", [])],
        "queues": queues,
        "vars": {**wrangler["vars"], **extra_vars},
    }
    path = bundle.parent / f"{bundle.name}-{name}.json"
    path.write_text(json.dumps(config, indent=2))
    return path


def request(
    url: str,
    method: str = "GET",
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as res:
            return res.status, json.loads(res.read() or b"null")
    except urllib.error.HTTPError as err:
        with err:
            raw = err.read()
        try:
            return err.code, json.loads(raw)
        except ValueError:
            return err.code, raw.decode(errors="replace")


def post(url: str, payload: Any) -> tuple[int, Any]:
    return request(
        url, "POST", json.dumps(payload).encode(), {**AUTH, "content-type": "application/json"}
    )


class Api:
    def __init__(self, server: Any) -> None:
        self.server = server
        self.url = server.url

    def get(self, run_id: str) -> dict[str, Any]:
        status, snap = request(f"{self.url}/runs/{run_id}", headers=AUTH)
        assert status == 200, f"{status} {snap}\n{self.server.log()[-5000:]}"
        return dict(snap)

    def wait_until(self, run_id: str, done: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        deadline = time.monotonic() + RUN_DEADLINE_S
        while True:
            snap = self.get(run_id)
            if done(snap):
                return snap
            assert snap["status"] != "failed", snap
            assert time.monotonic() < deadline, f"stuck: {snap}\n{self.server.log()[-8000:]}"
            time.sleep(0.1)


@pytest.fixture(scope="module", params=["d1", "kv"])
def store(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def bundle(store: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_bundle(tmp_path_factory.mktemp(f"bundle-{store}"), "--store", store)


@pytest.fixture(scope="module")
def api(bundle: Path, worker_server: Callable[..., Any]) -> Api:
    # The API token is a secret in production; secrets reach the Worker as vars do.
    config = harness_config(bundle, {"REFLUXO_API_TOKEN": TOKEN}, "serve")
    server = worker_server(
        [bundle / "src"], "entry", kv=(), queues=(), d1=(), extra_args=["--config", str(config)]
    )
    return Api(server)


def test_the_bundle_is_what_the_deploy_script_describes(bundle: Path, store: str) -> None:
    src = bundle / "src"
    assert (src / "entry.py").is_file()
    for package in ("core", "cloudflare", "demo"):
        assert (src / "refluxo" / package / "__init__.py").is_file()
    assert not (src / "refluxo" / "__init__.py").exists()  # PEP 420, as in the repository
    assert not (src / "refluxo" / "gcp").exists() and not (src / "refluxo" / "local").exists()
    assert not list(bundle.rglob("__pycache__"))
    wrangler = tomllib.loads((bundle / "wrangler.toml").read_text())
    assert wrangler["compatibility_date"] >= "2026-09-08"  # Pyodide 314 / Python 3.14
    assert wrangler["vars"]["REFLUXO_STORE"] == store
    assert bool(wrangler.get("d1_databases")) == (store == "d1")
    assert bool(wrangler.get("kv_namespaces")) == (store == "kv")
    project = tomllib.loads((bundle / "pyproject.toml").read_text())
    assert any(d.startswith("pydantic") for d in project["project"]["dependencies"])


def test_the_demo_runs_to_completion_through_http_and_the_queue(api: Api) -> None:
    url = api.url
    for run_id in ("ship-it", "reject-it"):
        status, body = post(
            f"{url}/workflows/demo/runs", {"id": run_id, "input": {"customer": "Ada"}}
        )
        assert (status, body["status"]) == (201, "active"), body

    # Retries, the sleep, then the pause for the approval event.
    waiting = {
        r: api.wait_until(r, lambda s: s.get("wait", {}).get("kind") == "event")
        for r in ("ship-it", "reject-it")
    }
    snap = waiting["ship-it"]
    order = snap["context"]["order"]
    assert [(r["attempt"], bool(r.get("error"))) for r in order] == [
        (1, True),
        (2, True),
        (3, False),
    ]
    # Exponential backoff from 200 ms, each retry delivered by a delayed queue message.
    assert order[1]["timestamp"] - order[0]["timestamp"] >= 200
    assert order[2]["timestamp"] - order[1]["timestamp"] >= 400
    # The durable sleep: the approval node started at least 1 s after cool_down ran.
    slept_at = snap["context"]["cool_down"][0]["timestamp"]
    approval_started = snap["wait"]["until"] - APPROVAL_TIMEOUT_MS
    assert approval_started - slept_at >= 950, (slept_at, approval_started)
    assert snap["status"] == "paused" and snap["wait"]["event"] == "approval"

    status, body = post(
        f"{url}/runs/ship-it/events", {"name": "approval", "payload": {"approved": True}}
    )
    assert status == 202, body
    status, body = post(
        f"{url}/runs/reject-it/events", {"name": "approval", "payload": {"approved": False}}
    )
    assert status == 202, body

    shipped = api.wait_until("ship-it", lambda s: s["status"] == "completed")
    rejected = api.wait_until("reject-it", lambda s: s["status"] == "completed")
    assert shipped["context"]["ship"][0]["output"] == {"note": "shipping A-1001 to Ada"}
    assert "cancel" not in shipped["context"]
    assert rejected["context"]["cancel"][0]["output"] == {"note": "order A-1001 cancelled"}
    assert "ship" not in rejected["context"]
    # Each node recorded once per execution: three order attempts, one of everything else.
    assert {n: len(r) for n, r in shipped["context"].items()} == {
        "order": 3,
        "cool_down": 1,
        "approval": 1,
        "decide": 1,
        "ship": 1,
    }

    # Starting the same id again starts nothing; a finished run takes no more events.
    status, body = post(f"{url}/workflows/demo/runs", {"id": "ship-it"})
    assert (status, body["status"], body["version"]) == (200, "completed", shipped["version"])
    status, body = post(f"{url}/runs/ship-it/events", {"payload": {}})
    assert (status, body["error"]["code"]) == (409, "run_finished")
    # The step logs are JSON lines (Cloudflare's log viewers parse them).
    steps = [
        json.loads(line)
        for line in api.server.log().splitlines()
        if line.startswith("{") and '"refluxo.steps"' in line
    ]
    assert any(s["run"] == "ship-it" and s["node"] == "ship" for s in steps)


@pytest.mark.parametrize(
    ("method", "path", "body", "headers", "status", "code"),
    [
        ("POST", "/workflows/demo/runs", b"{not json", AUTH, 400, "invalid_json"),
        ("POST", "/workflows/demo/runs", b'{"nope": 1}', AUTH, 400, "invalid_request"),
        ("POST", "/workflows/ghost/runs", b"{}", AUTH, 404, "unknown_workflow"),
        ("GET", "/runs/ghost", None, AUTH, 404, "unknown_run"),
        ("POST", "/runs/ghost/events", b'{"payload": 1}', AUTH, 404, "unknown_run"),
        ("GET", "/runs/bad%20id", None, AUTH, 400, "invalid_run_id"),
        ("GET", "/nowhere", None, AUTH, 404, "not_found"),
        ("DELETE", "/runs/ghost", None, AUTH, 405, "method_not_allowed"),
        ("GET", "/runs/ghost", None, {}, 401, "unauthorized"),
        ("POST", "/_dispatch", b'{"runId": "x", "version": 0}', AUTH, 403, "forbidden"),
    ],
)
def test_bad_requests_get_their_4xx(
    api: Api,
    method: str,
    path: str,
    body: bytes | None,
    headers: dict[str, str],
    status: int,
    code: str,
) -> None:
    got, answer = request(f"{api.url}{path}", method, body, headers)
    assert (got, answer["error"]["code"]) == (status, code), answer


def test_an_oversize_body_is_refused_before_it_is_read(api: Api) -> None:
    big = json.dumps({"input": "x" * (300 * 1024)}).encode()  # the default limit is 256 KiB
    status, answer = request(f"{api.url}/workflows/demo/runs", "POST", big, AUTH)
    assert (status, answer["error"]["code"]) == (413, "payload_too_large")
    assert str(len(big)) in answer["error"]["message"]  # judged by Content-Length


def test_a_message_delivered_twice_changes_nothing(
    bundle: Path, run_in_pyodide: Callable[..., Any]
) -> None:
    config = harness_config(bundle, {"REFLUXO_PUBLIC_API": "1"}, "run")
    run = run_in_pyodide(
        IN_PYODIDE / "duplicates.py",
        [bundle / "src"],
        entry_module="entry",
        kv=[],
        queues=[],
        d1=[],
        extra_args=["--config", str(config)],
        check=False,
    )
    assert "1 passed, 0 failed" in run.stdout, f"{run.stdout}\n{run.stderr[-8000:]}"


def test_a_worker_without_an_api_token_refuses_the_public_routes(
    bundle: Path, store: str, worker_server: Callable[..., Any]
) -> None:
    if store != "d1":
        pytest.skip("the refusal comes before any store is touched: one store is enough")
    config = harness_config(bundle, {}, "open")
    server = worker_server(
        [bundle / "src"], "entry", kv=(), queues=(), d1=(), extra_args=["--config", str(config)]
    )
    json_type = {"content-type": "application/json"}
    status, body = request(f"{server.url}/workflows/demo/runs", "POST", b"{}", json_type)
    assert (status, body["error"]["code"]) == (403, "api_not_configured"), body
    status, body = request(f"{server.url}/runs/anything")
    assert status == 403
    assert request(f"{server.url}/healthz")[0] == 200


def test_runs_are_listed_and_retried_through_the_worker(api: Api) -> None:
    status, body = post(f"{api.url}/workflows/demo/runs", {"id": "listed-1"})
    assert status == 201, body
    status, body = post(f"{api.url}/runs/listed-1/cancel", {"reason": "to list it"})
    assert status == 200, body
    status, page = request(f"{api.url}/runs?status=failed&workflow=demo&limit=200", headers=AUTH)
    assert status == 200, page
    found = {run["id"]: run for run in page["runs"]}
    assert found["listed-1"]["failedReason"] == "cancelled: to list it"
    assert all(run["status"] == "failed" for run in page["runs"])
    status, body = post(f"{api.url}/runs/listed-1/retry", {"force": True})
    assert (status, body["status"]) == (200, "active"), body
    api.wait_until("listed-1", lambda s: s.get("wait", {}).get("kind") == "event")


def test_a_run_moves_from_a_local_server_to_the_worker_and_back(api: Api, tmp_path: Path) -> None:
    from tests.local.test_cli import DevServer, cli, wait_status

    local = DevServer(tmp_path / "local.db")
    local.start()
    try:
        cli("start", "demo", "--id", "trip-1", url=local.url)
        wait_status(local.url, "trip-1", lambda s: (s.get("wait") or {}).get("kind") == "event")
        out = cli("move", "trip-1", "--from", local.url, "--to", api.url, "--to-token", TOKEN)
        assert out.returncode == 0, out.stderr
        there = api.get("trip-1")
        assert there["status"] == "paused" and there["metadata"]["movedFrom"]["from"] == local.url
        back = cli("move", "trip-1", "--from", api.url, "--to", local.url, "--token", TOKEN)
        assert back.returncode == 0, back.stderr
        assert api.get("trip-1")["metadata"]["failedReason"] == "moved"
        cli(
            "event",
            "trip-1",
            "--name",
            "approval",
            "--payload",
            '{"approved": true}',
            url=local.url,
        )
        done = wait_status(local.url, "trip-1", lambda s: s["status"] == "completed")
        assert "ship" in done["context"]  # type: ignore[operator]
    finally:
        local.stop()
