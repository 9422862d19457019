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
        "status=",
    ],
)
async def test_a_bad_list_query_is_a_400(api: Http, query: str) -> None:
    status, body = await api("GET", f"/runs?{query}")
    assert status == 400 and error_code(body) in ("invalid_query", "invalid_cursor")
    assert body["error"]["message"]


async def test_retry_continues_a_failed_run_from_the_failed_node_and_keeps_its_history(
    api: Http,
) -> None:
    await failed_ops_run(api, "r-1", item="pen")
    ops_app.BROKEN["on"] = False
    headers = {"x-refluxo-caller": "ops@example"}
    status, body = await api("POST", "/runs/r-1/retry", {"reason": "fixed"}, headers=headers)
    assert (status, body["status"]) == (200, "active")
    done = await wait_for(api, "r-1", lambda s: s.is_terminal)
    assert done.status == "completed"
    assert [r.error is None for r in done.context["check"]] == [False, True]
    assert done.context["check"][-1].attempt == 1  # attempts reset
    assert done.context["done"][-1].output == {"item": "pen"}
    (entry,) = done.metadata["retries"]
    assert (entry["by"], entry["reason"]) == ("ops@example", "fixed")
    assert "the checker is down" in entry["failedReason"]
    assert "failedReason" not in done.metadata


async def test_a_cancelled_run_is_retried_only_with_force(api: Http) -> None:
    await api("POST", "/workflows/demo/runs", {"id": "c-1"})
    await wait_for(api, "c-1", lambda s: s.wait is not None and s.wait.kind == "event")
    await api("POST", "/runs/c-1/cancel", {"reason": "oops"})
    before = (await api("GET", "/runs/c-1"))[1]
    status, body = await api("POST", "/runs/c-1/retry", {})
    assert (status, error_code(body)) == (409, "not_retryable")
    assert (await api("GET", "/runs/c-1"))[1] == before
    status, body = await api("POST", "/runs/c-1/retry", {"force": True})
    assert (status, body["status"]) == (200, "active")
    snap = await wait_for(api, "c-1", lambda s: s.wait is not None and s.wait.kind == "event")
    assert snap.current_node_id == "approval" and "cancelled" not in snap.metadata


@pytest.mark.parametrize(
    ("path", "body", "status", "code"),
    [
        ("/runs/ghost/retry", {}, 404, "unknown_run"),
        ("/runs/bad%20id/retry", {}, 400, "invalid_run_id"),
        ("/runs/x/retry", {"force": "yes"}, 400, "invalid_request"),
        ("/runs/x/retry", {"who": 1}, 400, "invalid_request"),
        ("/runs/ghost/rerun", {"from": "check"}, 404, "unknown_run"),
        ("/runs/x/rerun", {}, 400, "invalid_request"),
        ("/runs/x/rerun", {"from": 3}, 400, "invalid_request"),
    ],
)
async def test_bad_retry_and_rerun_requests_get_a_clear_4xx(
    api: Http, path: str, body: Any, status: int, code: str
) -> None:
    got, answer = await api("POST", path, body)
    assert (got, error_code(answer)) == (status, code)


async def test_a_completed_run_cannot_be_retried(api: Http) -> None:
    ops_app.BROKEN["on"] = False
    await api("POST", "/workflows/ops/runs", {"id": "ok-1"})
    await wait_for(api, "ok-1", lambda s: s.is_terminal)
    status, body = await api("POST", "/runs/ok-1/retry", {})
    assert (status, error_code(body)) == (409, "not_retryable")


async def test_rerun_starts_a_new_run_at_a_node_with_the_sources_results(api: Http) -> None:
    source = await failed_ops_run(api, "s-1", item="cup")
    ops_app.BROKEN["on"] = False
    status, body = await api(
        "POST", "/runs/s-1/rerun", {"from": "check", "id": "s-1-again", "input": {"n": 1}}
    )
    assert (status, body["workflowId"]) == (201, "s-1-again")
    done = await wait_for(api, "s-1-again", lambda s: s.is_terminal)
    assert done.status == "completed"
    assert done.context["done"][-1].output == {"item": "cup"}  # the source's fetch result
    assert len(done.context["fetch"]) == 1 and done.context["check"][-1].output["payload"] == {
        "n": 1
    }
    assert done.metadata["rerunOf"]["run"] == "s-1"
    after = (await api("GET", "/runs/s-1"))[1]
    assert [r["run"] for r in after["metadata"]["reruns"]] == ["s-1-again"]
    for key in ("status", "context", "currentNodeId"):
        assert after[key] == source[key]
    status, body = await api("POST", "/runs/s-1/rerun", {"from": "nowhere"})
    assert (status, error_code(body)) == (400, "unknown_node")
    status, body = await api("POST", "/runs/s-1/rerun", {"from": "check", "id": "s-1-again"})
    assert status == 409


async def test_the_timeline_holds_steps_errors_waits_and_links(api: Http) -> None:
    await failed_ops_run(api, "t-1")
    status, body = await api("GET", "/runs/t-1/timeline")
    assert status == 200
    assert [(s["node"], s["ok"]) for s in body["steps"]] == [("fetch", True), ("check", False)]
    assert "second line of the trace" in body["steps"][1]["error"]  # the full text
    assert body["now"]["status"] == "failed" and body["now"]["node"] == "check"
    ops_app.BROKEN["on"] = False
    await api("POST", "/runs/t-1/retry", {"reason": "again"})
    await api("POST", "/runs/t-1/rerun", {"from": "check", "id": "t-2"})
    await wait_for(api, "t-1", lambda s: s.is_terminal)
    body = (await api("GET", "/runs/t-1/timeline"))[1]
    assert [r["reason"] for r in body["retries"]] == ["again"]
    assert [r["run"] for r in body["reruns"]] == ["t-2"]
    assert (await api("GET", "/runs/t-2/timeline"))[1]["rerunOf"]["run"] == "t-1"
    await api("POST", "/workflows/demo/runs", {"id": "w-1"})
    await wait_for(api, "w-1", lambda s: s.wait is not None and s.wait.kind == "event")
    await api("POST", "/runs/w-1/events", {"payload": 1, "name": "other", "id": "ev-1"})
    body = (await api("GET", "/runs/w-1/timeline"))[1]
    assert body["now"]["wait"]["event"] == "approval" and body["now"]["wait"]["until"] > 0
    assert [e["id"] for e in body["events"]["received"]] == ["ev-1"]
    assert (await api("GET", "/runs/ghost/timeline"))[0] == 404


async def test_the_hosted_workflows_and_their_definitions_are_served(api: Http) -> None:
    status, body = await api("GET", "/workflows")
    assert status == 200
    assert {w["name"] for w in body["workflows"]} == {"demo", "ops"}
    status, body = await api("GET", "/workflows/ops")
    assert (status, body["name"], body["start"]) == (200, "ops", "fetch")
    assert [n["id"] for n in body["definition"]["nodes"]] == ["fetch", "check", "done"]
    assert (await api("GET", "/workflows/nope"))[0] == 404


async def test_a_waiting_run_moves_to_another_server_and_ends_here_as_moved(
    api: Http, tmp_path: Path
) -> None:
    async with LocalRuntime(demo_workflows(), db_path=tmp_path / "other.db") as other:
        there = Http((await other.serve(port=0)).port)
        await api("POST", "/workflows/demo/runs", {"id": "m-1", "input": {"customer": "Lu"}})
        waiting = await wait_for(
            api, "m-1", lambda s: s.wait is not None and s.wait.kind == "event"
        )
        status, body = await api(
            "POST", "/runs/m-1/export", {"to": "http://there", "version": waiting.version - 1}
        )
        assert (status, error_code(body)) == (409, "run_changed")
        status, body = await api(
            "POST", "/runs/m-1/export", {"to": "http://there", "version": waiting.version}
        )
        assert status == 200 and body["snapshot"]["status"] == "paused"
        status, imported = await there(
            "POST", "/runs/import", {"snapshot": body["snapshot"], "from": "http://here"}
        )
        assert (status, imported["workflowId"]) == (201, "m-1")
        here = (await api("GET", "/runs/m-1"))[1]
        assert (here["status"], here["metadata"]["failedReason"]) == ("failed", "moved")
        assert here["metadata"]["movedTo"] == "http://there"
        assert (await api("POST", "/runs/m-1/retry", {"force": True}))[0] == 409
        await there("POST", "/runs/m-1/events", {"payload": {"approved": True}, "name": "approval"})
        done = await wait_for(there, "m-1", lambda s: s.is_terminal)
        assert done.status == "completed" and done.metadata["movedFrom"]["from"] == "http://here"
        assert done.context["order"][-1].output["customer"] == "Lu"
        status, body = await there("POST", "/runs/import", {"snapshot": waiting.to_dict()})
        assert (status, error_code(body)) == (409, "not_importable")  # the id is taken there


async def test_a_run_moves_only_to_the_same_shape(api: Http, tmp_path: Path) -> None:
    from refluxo.core.dispatcher import Workflow
    from refluxo.demo import DEFINITION, NODES

    rewired = DEFINITION.model_copy(deep=True)
    rewired.edges[0].target = "approval"
    async with LocalRuntime([Workflow("demo", rewired, NODES)], db_path=tmp_path / "o.db") as rt:
        there = Http((await rt.serve(port=0)).port)
        await api("POST", "/workflows/demo/runs", {"id": "m-2"})
        snap = (await api("GET", "/runs/m-2"))[1]
        status, body = await there("POST", "/runs/import", {"snapshot": snap})
        assert (status, error_code(body)) == (409, "not_importable")
        assert "nodes or edges differ" in body["error"]["message"]
        assert (await there("GET", "/runs/m-2"))[0] == 404
        status, body = await there("POST", "/runs/import", {"snapshot": {"status": "x"}})
        assert (status, error_code(body)) == (400, "invalid_request")


async def test_import_is_a_route_and_no_run_may_take_its_name(api: Http) -> None:
    status, body = await api("POST", "/workflows/demo/runs", {"id": "import"})
    assert (status, error_code(body)) == (400, "invalid_run_id")
    status, body = await api("GET", "/runs/import")
    assert (status, error_code(body)) == (405, "method_not_allowed")


async def test_a_run_that_moved_away_can_come_back(api: Http, tmp_path: Path) -> None:
    async with LocalRuntime(demo_workflows(), db_path=tmp_path / "other.db") as other:
        there = Http((await other.serve(port=0)).port)
        await api("POST", "/workflows/demo/runs", {"id": "b-1"})
        waiting = await wait_for(
            api, "b-1", lambda s: s.wait is not None and s.wait.kind == "event"
        )
        out = (await api("POST", "/runs/b-1/export", {"to": "there", "version": waiting.version}))[
            1
        ]
        assert (await there("POST", "/runs/import", {"snapshot": out["snapshot"]}))[0] == 201
        moved = (await there("GET", "/runs/b-1"))[1]
        back = (
            await there("POST", "/runs/b-1/export", {"to": "here", "version": moved["version"]})
        )[1]
        status, body = await api("POST", "/runs/import", {"snapshot": back["snapshot"]})
        assert status == 201, body
        home = await wait_for(api, "b-1", lambda s: s.status == "paused")
        assert "failedReason" not in home.metadata and "movedFrom" in home.metadata
        await api("POST", "/runs/b-1/events", {"payload": {"approved": False}, "name": "approval"})
        assert (await wait_for(api, "b-1", lambda s: s.is_terminal)).status == "completed"


async def test_a_rerun_from_the_start_without_input_gets_the_sources_input(api: Http) -> None:
    await failed_ops_run(api, "st-1", item="bell")
    ops_app.BROKEN["on"] = False
    status, body = await api("POST", "/runs/st-1/rerun", {"from": "fetch", "id": "st-2"})
    assert status == 201, body
    done = await wait_for(api, "st-2", lambda s: s.is_terminal)
    assert done.status == "completed" and done.context["done"][-1].output == {"item": "bell"}
    assert list(done.context) == ["fetch", "check", "done"]  # nothing of the source's kept


async def test_a_rerun_keeps_results_of_the_same_millisecond_only_from_upstream_nodes() -> None:
    from refluxo.core import NodeDefinition
    from refluxo.core.dispatcher import Dispatcher, Workflow
    from refluxo.core.memory import MemoryScheduler, MemoryStateStore

    def frozen() -> int:
        return 1_700_000_000_000  # every result recorded in the same millisecond

    nodes = {
        "fetch": NodeDefinition(executor=ops_app.fetch),
        "check": NodeDefinition(executor=ops_app.check),
        "done": NodeDefinition(executor=ops_app.done),
    }
    workflow = Workflow("ops", ops_app.DEFINITION, nodes, clock=frozen)
    store, scheduler = MemoryStateStore(), MemoryScheduler()
    dispatcher = Dispatcher([workflow], store, scheduler)
    await dispatcher.start("ops", run_id="src", input={"item": "key"})
    while due := scheduler.pop_due():
        for message in due:
            await dispatcher.dispatch(message)
    from_check = await dispatcher.rerun("src", "check", new_id="a")
    assert list(from_check.context) == ["fetch"]
    from_fetch = await dispatcher.rerun("src", "fetch", new_id="b")
    assert from_fetch.context == {}
