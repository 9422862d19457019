"""The HTTP API, served by the embedded runtime's real server: every route, every bad input.

Requests go over a real socket; the runtime behind them is SQLite plus the local scheduler.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from refluxo.core import Snapshot
from refluxo.core.http import HttpApi, bearer_token
from refluxo.local.runtime import LocalRuntime
from refluxo.local.server import LocalServer
from refluxo.testing.workflows import workflows


class Http:
    def __init__(self, port: int) -> None:
        self.port = port

    def _request(
        self, method: str, path: str, body: bytes | None, headers: dict[str, str]
    ) -> tuple[int, Any]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            raw = response.read()
            return response.status, json.loads(raw) if raw else None
        finally:
            conn.close()

    async def __call__(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        sent = {"content-type": "application/json", **(headers or {})}
        return await asyncio.to_thread(self._request, method, path, data, sent)


@pytest.fixture
async def runtime(tmp_path: Path) -> AsyncIterator[LocalRuntime]:
    async with LocalRuntime(
        workflows(),
        db_path=tmp_path / "api.db",
        globals={"supplier_token": "tok-1"},
        max_body_bytes=4096,
    ) as rt:
        yield rt


@pytest.fixture
async def api(runtime: LocalRuntime) -> Http:
    server = await runtime.serve(port=0)
    return Http(server.port)


async def wait_for(api: Http, run_id: str, predicate: Any, deadline: float = 20.0) -> Snapshot:
    end = time.monotonic() + deadline
    while True:
        status, body = await api("GET", f"/runs/{run_id}")
        assert status == 200
        snap = Snapshot.model_validate(body)
        if predicate(snap):
            return snap
        if time.monotonic() > end:
            raise AssertionError(f"run {run_id} never reached the state; last: {snap.status}")
        await asyncio.sleep(0.02)


def error_code(body: Any) -> str:
    return str(body["error"]["code"])


async def test_a_run_goes_from_start_to_completion_through_the_api(api: Http) -> None:
    status, body = await api(
        "POST", "/workflows/demo/runs", {"id": "o-1", "input": {"customer": "Lin"}}
    )
    assert status == 201
    assert body == {"workflowId": "o-1", "status": "active", "version": 0}
    snap = await wait_for(api, "o-1", lambda s: s.wait is not None and s.wait.kind == "event")
    assert snap.context["order"][-1].output["customer"] == "Lin"
    status, body = await api(
        "POST", "/runs/o-1/events", {"payload": {"approved": True}, "name": "approval"}
    )
    assert status == 202 and body["workflowId"] == "o-1"
    done = await wait_for(api, "o-1", lambda s: s.is_terminal)
    assert done.status == "completed" and "ship" in done.context


async def test_get_returns_the_snapshot_in_the_wire_format(api: Http) -> None:
    await api("POST", "/workflows/demo/runs", {"id": "w-1"})
    status, body = await api("GET", "/runs/w-1")
    assert status == 200
    assert body["workflowId"] == "w-1" and "currentNodeId" in body and "version" in body
    assert Snapshot.model_validate(body).to_dict() == body


async def test_the_same_id_again_answers_200_and_starts_nothing(
    api: Http, runtime: LocalRuntime
) -> None:
    assert (await api("POST", "/workflows/demo/runs", {"id": "dup", "input": 1}))[0] == 201
    status, body = await api("POST", "/workflows/demo/runs", {"id": "dup", "input": 2})
    assert status == 200 and body["workflowId"] == "dup"
    assert (await runtime.store.load("dup")).input == 1


async def test_a_run_without_an_id_gets_one(api: Http) -> None:
    status, body = await api("POST", "/workflows/demo/runs")
    assert status == 201 and len(body["workflowId"]) == 32


async def test_cancel_fails_the_run_and_a_second_cancel_is_a_conflict(api: Http) -> None:
    await api("POST", "/workflows/demo/runs", {"id": "c-1"})
    status, body = await api("POST", "/runs/c-1/cancel", {"reason": "duplicate order"})
    assert (status, body["status"]) == (200, "failed")
    status, body = await api("GET", "/runs/c-1")
    assert body["metadata"]["failedReason"] == "cancelled: duplicate order"
    status, body = await api("POST", "/runs/c-1/cancel")
    assert (status, error_code(body)) == (409, "run_finished")
    status, body = await api("POST", "/runs/c-1/events", {"payload": 1})
    assert (status, error_code(body)) == (409, "run_finished")


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "code"),
    [
        ("POST", "/workflows/demo/runs", {"raw": b"{not json"}, 400, "invalid_json"),
        ("POST", "/workflows/demo/runs", {"raw": b"[1, 2]"}, 400, "invalid_json"),
        ("POST", "/workflows/demo/runs", {"body": {"idd": "x"}}, 400, "invalid_request"),
        ("POST", "/workflows/demo/runs", {"body": {"id": 5}}, 400, "invalid_request"),
        ("POST", "/workflows/demo/runs", {"body": {"id": "has space"}}, 400, "invalid_run_id"),
        ("POST", "/workflows/demo/runs", {"body": {"id": "x" * 129}}, 400, "invalid_run_id"),
        ("POST", "/workflows/nope/runs", {"body": {}}, 404, "unknown_workflow"),
        ("GET", "/runs/ghost", {}, 404, "unknown_run"),
        ("GET", "/runs/bad%20id", {}, 400, "invalid_run_id"),
        ("POST", "/runs/ghost/events", {"body": {"payload": 1}}, 404, "unknown_run"),
        ("POST", "/runs/ghost/cancel", {}, 404, "unknown_run"),
        ("POST", "/runs/ghost/events", {"body": {}}, 400, "invalid_request"),
        ("POST", "/runs/ghost/events", {"raw": b""}, 400, "invalid_json"),
        ("GET", "/nowhere", {}, 404, "not_found"),
        ("DELETE", "/runs/x", {}, 405, "method_not_allowed"),
        ("GET", "/workflows/demo/runs", {}, 405, "method_not_allowed"),
        ("POST", "/_dispatch", {"body": {"runId": "x", "version": 0}}, 403, "forbidden"),
    ],
)
async def test_bad_requests_get_a_clear_4xx(
    api: Http, method: str, path: str, kwargs: dict[str, Any], status: int, code: str
) -> None:
    got_status, body = await api(method, path, **kwargs)
    assert (got_status, error_code(body)) == (status, code)
    assert body["error"]["message"]


async def test_missing_fields_are_named(api: Http) -> None:
    await api("POST", "/workflows/demo/runs", {"id": "m-1"})
    status, body = await api("POST", "/runs/m-1/events", {"name": "approval"})
    assert status == 400 and "payload: missing" in body["error"]["message"]


async def test_bad_input_changes_nothing(api: Http, runtime: LocalRuntime) -> None:
    await api("POST", "/workflows/demo/runs", {"id": "keep"})
    before = (await runtime.store.load("keep")).to_dict()
    await api("POST", "/runs/keep/events", raw=b'{"payload": 1, "extra": 2}')
    await api("POST", "/runs/keep/events", raw=b"{broken")
    await api("POST", "/runs/keep/events", raw=json.dumps({"payload": "x" * 5000}).encode())
    after = (await runtime.store.load("keep")).to_dict()
    assert after.get("inbox") == before.get("inbox") is None


async def test_an_oversize_body_is_refused_with_413(api: Http) -> None:
    status, body = await api("POST", "/workflows/demo/runs", {"input": "x" * 5000})
    assert (status, error_code(body)) == (413, "payload_too_large")
    assert "4096" in body["error"]["message"]


async def test_a_chunked_body_is_refused_with_411(api: Http) -> None:
    def send() -> bytes:
        with socket.create_connection(("127.0.0.1", api.port), timeout=5) as s:
            s.sendall(
                b"POST /workflows/demo/runs HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Content-Type: application/json\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n"
            )
            return s.recv(4096)

    assert (await asyncio.to_thread(send)).startswith(b"HTTP/1.1 411")


async def test_health(api: Http) -> None:
    assert await api("GET", "/healthz") == (200, {"ok": True})


async def test_public_routes_can_require_a_bearer_token(runtime: LocalRuntime) -> None:
    guarded = HttpApi(runtime.dispatcher, api_token="t0ken", dispatch_auth=bearer_token("sched"))
    async with LocalServer(guarded, port=0) as server:
        api = Http(server.port)
        status, body = await api("POST", "/workflows/demo/runs", {"id": "g-1"})
        assert (status, error_code(body)) == (401, "unauthorized")
        wrong = {"authorization": "Bearer nope"}
        assert (await api("GET", "/runs/g-1", headers=wrong))[0] == 401
        ok = {"authorization": "Bearer t0ken"}
        assert (await api("POST", "/workflows/demo/runs", {"id": "g-1"}, headers=ok))[0] == 201
        assert (await api("GET", "/runs/g-1", headers=ok))[0] == 200
        assert (await api("GET", "/healthz"))[0] == 200


async def test_dispatch_requires_the_schedulers_credential(runtime: LocalRuntime) -> None:
    guarded = HttpApi(runtime.dispatcher, dispatch_auth=bearer_token("sched"))
    async with LocalServer(guarded, port=0) as server:
        api = Http(server.port)
        message = {"runId": "ghost", "version": 0}
        assert (await api("POST", "/_dispatch", message))[0] == 401
        assert (
            await api("POST", "/_dispatch", message, headers={"authorization": "Bearer t0ken"})
        )[0] == 401
        auth = {"authorization": "Bearer sched"}
        status, body = await api("POST", "/_dispatch", message, headers=auth)
        assert (status, body["outcome"]) == (200, "unknown_run")
        status, body = await api("POST", "/_dispatch", {"runId": "x"}, headers=auth)
        assert (status, error_code(body)) == (400, "invalid_message")
