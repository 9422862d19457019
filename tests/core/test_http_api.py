"""The framework-neutral HttpApi on its own (memory adapters): malformed input and its schema.

Every runtime mounts this object, so what is refused here is refused everywhere.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import BaseModel

from refluxo.core import MemoryScheduler, MemoryStateStore, RunNotFound, RunService
from refluxo.core.http import MAX_JSON_DEPTH, HttpApi, HttpRequest, bearer_token
from refluxo.core.schema import CancelRun, SendEvent, StartRun, openapi_document
from refluxo.testing.workflows import workflows


@pytest.fixture
def api() -> HttpApi:
    dispatcher = RunService(workflows(), MemoryStateStore(), MemoryScheduler())
    return HttpApi(dispatcher, dispatch_auth=bearer_token("sched"))


async def call(
    api: HttpApi, method: str, path: str, body: bytes = b"", **headers: str
) -> tuple[int, Any]:
    response = await api.handle(HttpRequest(method, path, body, headers))
    assert response.headers["content-type"] == "application/json"
    return response.status, json.loads(response.body)


def deep(levels: int) -> bytes:
    return b'{"input": ' + b"[" * levels + b"]" * levels + b"}"


MALFORMED = [
    pytest.param("POST", "/workflows/demo/runs", deep(5000), {}, id="json-5000-deep"),
    pytest.param("POST", "/workflows/demo/runs", deep(MAX_JSON_DEPTH + 1), {}, id="json-65-deep"),
    pytest.param("POST", "/workflows/demo/runs", b'{"input": "\\ud800"}', {}, id="lone-surrogate"),
    pytest.param("POST", "/workflows/demo/runs", b'{"\\udfff": 1}', {}, id="surrogate-key"),
    pytest.param("POST", "/workflows/demo/runs", b'{"input": "\xff\xfe"}', {}, id="bad-utf8"),
    pytest.param("POST", "/workflows/demo/runs", b'{"id": "\\ud800"}', {}, id="surrogate-id"),
    pytest.param("POST", "/runs/r/events", b'{"payload": "\\udc80"}', {}, id="event-surrogate"),
    pytest.param("POST", "/runs/r/cancel", b'{"reason": "\\ud83d"}', {}, id="reason-surrogate"),
    pytest.param(
        "POST",
        "/_dispatch",
        b'{"runId": "x"}',
        {"authorization": "Bearer \u00e9t\u00e9"},
        id="non-ascii-dispatch-token",
    ),
    pytest.param(
        "POST", "/_dispatch", b'{"runId": "a b", "version": 0}', {}, id="dispatch-bad-run-id"
    ),
    pytest.param("POST", "/_dispatch", deep(5000), {}, id="dispatch-deep"),
    pytest.param("GET", "/runs/\ud800", b"", {}, id="surrogate-in-path"),
    pytest.param("POST", "/workflows/\udcff/runs", b"{}", {}, id="surrogate-in-name"),
]


@pytest.mark.parametrize(("method", "path", "body", "headers"), MALFORMED)
async def test_malformed_input_is_a_json_4xx_on_every_route(
    api: HttpApi, method: str, path: str, body: bytes, headers: dict[str, str]
) -> None:
    if path == "/_dispatch" and "authorization" not in headers:
        headers = {"authorization": "Bearer sched"}
    await call(api, "POST", "/workflows/demo/runs", b'{"id": "r"}')
    status, answer = await call(api, method, path, body, **headers)
    assert 400 <= status < 500, answer
    assert answer["error"]["code"] and answer["error"]["message"]


async def test_a_non_ascii_bearer_token_is_refused_with_401(api: HttpApi) -> None:
    guarded = HttpApi(api.dispatcher, api_token="t0ken")
    status, answer = await call(guarded, "GET", "/runs/x", authorization="Bearer t\u00f6ken")
    assert (status, answer["error"]["code"]) == (401, "unauthorized")
    status, _ = await call(guarded, "GET", "/runs/x", authorization="Bearer \udcff")
    assert status == 401


async def test_json_at_the_depth_limit_is_accepted(api: HttpApi) -> None:
    status, _ = await call(api, "POST", "/workflows/demo/runs", deep(MAX_JSON_DEPTH - 1))
    assert status == 201


async def test_malformed_input_changes_nothing(api: HttpApi) -> None:
    await call(api, "POST", "/workflows/demo/runs", b'{"id": "keep"}')
    store = api.dispatcher.store
    before = (await store.load("keep")).to_dict()
    await call(api, "POST", "/runs/keep/events", b'{"payload": "\\ud800"}')
    await call(api, "POST", "/runs/keep/events", deep(5000))
    await call(api, "POST", "/runs/keep/cancel", b'{"reason": "\\ud800"}')
    assert (await store.load("keep")).to_dict() == before


@pytest.mark.parametrize(
    "path",
    ["/runs/order-1%0A", "/runs/order-1\n", "/healthz\n", "/workflows/demo\n/runs"],
)
async def test_a_trailing_newline_never_matches_a_route_or_an_id(api: HttpApi, path: str) -> None:
    status, _ = await call(api, "GET" if "workflows" not in path else "POST", path)
    assert status in (400, 404)


async def test_a_run_id_with_a_trailing_newline_is_refused(api: HttpApi) -> None:
    body = json.dumps({"id": "order-1\n"}).encode()
    status, answer = await call(api, "POST", "/workflows/demo/runs", body)
    assert (status, answer["error"]["code"]) == (400, "invalid_run_id")
    with pytest.raises(RunNotFound):
        await api.dispatcher.store.load("order-1\n")
    status, _ = await call(api, "GET", "/runs/order-1%0A")
    assert status == 400


def test_a_workflow_name_with_a_trailing_newline_is_refused() -> None:
    from refluxo.core import DefinitionError, Workflow
    from refluxo.testing.workflows import DEFINITION, NODES

    with pytest.raises(DefinitionError):
        Workflow("demo\n", DEFINITION, NODES)


# --- the OpenAPI document ------------------------------------------------------------------


async def test_openapi_json_is_served_and_is_openapi_3_1(api: HttpApi) -> None:
    status, document = await call(api, "GET", "/openapi.json")
    assert status == 200
    assert document["openapi"].startswith("3.1")
    assert document == json.loads(json.dumps(openapi_document()))


@pytest.mark.parametrize(
    ("path", "model"),
    [
        ("/workflows/{name}/runs", StartRun),
        ("/runs/{run_id}/events", SendEvent),
        ("/runs/{run_id}/cancel", CancelRun),
    ],
)
def test_the_documented_bodies_are_the_models_that_validate_them(
    path: str, model: type[BaseModel]
) -> None:
    document = openapi_document()
    body = document["paths"][path]["post"]["requestBody"]["content"]["application/json"]
    name = body["schema"]["$ref"].rsplit("/", 1)[-1]
    assert name == model.__name__
    expected = model.model_json_schema(ref_template="#/components/schemas/{model}")
    assert document["components"]["schemas"][name] == expected
    assert expected["additionalProperties"] is False


def test_every_route_the_api_answers_is_documented() -> None:
    from refluxo.core.http import _ROUTES

    documented = {
        (method.upper(), path)
        for path, operations in openapi_document()["paths"].items()
        for method in operations
    }
    served = {
        (
            method,
            pattern.pattern.replace("(?P<name>[^/]+)", "{name}")
            .replace("(?P<run_id>[^/]+)", "{run_id}")
            .replace("\\.", "."),
        )
        for method, pattern, _ in _ROUTES
    }
    assert served - {("GET", "/openapi.json")} == documented
