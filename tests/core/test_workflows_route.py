"""``GET /workflows`` and ``GET /workflows/{name}``: what a deployment hosts, with its graph."""

from __future__ import annotations

import json
from typing import Any

from refluxo.core import Dispatcher, MemoryScheduler, MemoryStateStore
from refluxo.core.http import HttpApi, HttpRequest
from refluxo.demo import DEFINITION, workflows


def api(token: str | None = None) -> HttpApi:
    return HttpApi(Dispatcher(workflows(), MemoryStateStore(), MemoryScheduler()), api_token=token)


async def call(api: HttpApi, path: str, **headers: str) -> tuple[int, Any]:
    response = await api.handle(HttpRequest("GET", path, b"", headers))
    return response.status, json.loads(response.body)


async def test_the_hosted_workflows_are_listed_with_their_shape_hash() -> None:
    status, body = await call(api(), "/workflows")
    assert status == 200
    assert [(w["name"], w["hash"]) for w in body["workflows"]] == [
        ("demo", DEFINITION.shape_hash())
    ]


async def test_a_workflow_is_answered_with_its_definition() -> None:
    status, body = await call(api(), "/workflows/demo")
    assert status == 200
    assert body["name"] == "demo"
    assert body["definition"] == DEFINITION.to_dict()


async def test_an_unknown_workflow_is_a_json_404() -> None:
    status, body = await call(api(), "/workflows/nope")
    assert status == 404
    assert body["error"]["code"] == "unknown_workflow"


async def test_the_workflow_routes_need_the_bearer_token() -> None:
    guarded = api("secret")
    for path in ("/workflows", "/workflows/demo"):
        assert (await call(guarded, path))[0] == 401
        assert (await call(guarded, path, authorization="Bearer secret"))[0] == 200
