"""Operating runs through the real local server: list them, retry, rerun, read a timeline."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from refluxo.demo import workflows as demo_workflows
from refluxo.local.runtime import LocalRuntime

from . import ops_app
from .test_http_api import Http, error_code, wait_for


@pytest.fixture(autouse=True)
def broken_checker() -> Iterator[None]:
    ops_app.BROKEN["on"] = True
    yield
    ops_app.BROKEN["on"] = True


@pytest.fixture
async def runtime(tmp_path: Path) -> AsyncIterator[LocalRuntime]:
    async with LocalRuntime(
        [*demo_workflows(), *ops_app.workflows()], db_path=tmp_path / "ops.db"
    ) as rt:
        yield rt


@pytest.fixture
async def api(runtime: LocalRuntime) -> Http:
    server = await runtime.serve(port=0)
    return Http(server.port)


async def failed_ops_run(api: Http, run_id: str, item: str = "x") -> dict[str, Any]:
    status, _ = await api("POST", "/workflows/ops/runs", {"id": run_id, "input": {"item": item}})
    assert status == 201
    snap = await wait_for(api, run_id, lambda s: s.status == "failed")
    return snap.to_dict()


async def test_runs_are_listed_newest_first_as_summaries(api: Http) -> None:
    await api("POST", "/workflows/demo/runs", {"id": "d-1"})
    await api("POST", "/runs/d-1/cancel", {"reason": "test"})
    await failed_ops_run(api, "o-1")
    status, body = await api("GET", "/runs")
    assert status == 200 and body["cursor"] is None
    ids = [r["id"] for r in body["runs"]]
    assert ids == ["o-1", "d-1"]
    first = body["runs"][0]
    assert set(first) == {
        "id",
        "workflow",
        "status",
        "currentNode",
        "version",
        "createdAt",
        "updatedAt",
        "failedReason",
    }
    assert (first["workflow"], first["status"], first["currentNode"]) == ("ops", "failed", "check")
    assert "the checker is down" in first["failedReason"] or first["failedReason"]
    assert first["createdAt"] <= first["updatedAt"]
    assert body["runs"][1]["failedReason"] == "cancelled: test"


async def test_runs_are_filtered_by_workflow_status_and_time(api: Http) -> None:
    await api("POST", "/workflows/demo/runs", {"id": "d-1"})
    await failed_ops_run(api, "o-1")
    status, body = await api("GET", "/runs?workflow=ops")
    assert [r["id"] for r in body["runs"]] == ["o-1"]
    status, body = await api("GET", "/runs?status=failed&workflow=demo")
    assert body["runs"] == []
    status, body = await api("GET", "/runs?workflow=demo")
    assert [r["id"] for r in body["runs"]] == ["d-1"]
    updated = (await api("GET", "/runs?workflow=ops"))[1]["runs"][0]["updatedAt"]
    assert [r["id"] for r in (await api("GET", f"/runs?updated_after={updated}"))[1]["runs"]] == [
        "o-1"
    ]
    before = (await api("GET", f"/runs?updated_before={updated}&workflow=ops"))[1]["runs"]
    assert before == []
    status, body = await api("GET", "/runs?updated_after=2000-01-01T00:00:00%2B00:00")
    assert status == 200 and len(body["runs"]) == 2


async def test_pages_follow_the_cursor_without_repeating_or_skipping(api: Http) -> None:
    for i in range(7):
        await api("POST", "/workflows/ops/runs", {"id": f"q-{i}"})
    for i in range(7):
        await wait_for(api, f"q-{i}", lambda s: s.status == "failed")
    listed = (await api("GET", "/runs"))[1]["runs"]
    order = [(-r["updatedAt"], r["id"]) for r in listed]
    assert order == sorted(order)
    everything = [r["id"] for r in listed]
    seen: list[str] = []
    cursor = None
    while True:
        status, body = await api("GET", "/runs?limit=3" + (f"&cursor={cursor}" if cursor else ""))
        assert status == 200
        seen.extend(r["id"] for r in body["runs"])
        cursor = body["cursor"]
        if cursor is None:
            break
    assert seen == everything and len(seen) == 7


@pytest.mark.parametrize(
    "query",
    [
        "status=sleeping",
        "limit=0",
        "limit=201",
        "limit=ten",
        "cursor=not-a-cursor",
        "cursor=WzEsMl0",  # [1,2]: a run id must be text
        "updated_before=yesterday",
        "colour=red",
        "status=failed&status=active",
    ],
)
async def test_a_bad_list_query_is_a_400(api: Http, query: str) -> None:
    status, body = await api("GET", f"/runs?{query}")
    assert status == 400 and error_code(body) in ("invalid_query", "invalid_cursor")
    assert body["error"]["message"]
