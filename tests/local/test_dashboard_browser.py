"""The dashboard in a real browser: headless Chromium driven by Playwright.

``refluxo dev`` serves the test workflows with a bearer token; ``refluxo ui`` serves the
dashboard for it, as an operator would run it against a remote deployment. Every wait is
Playwright's own polling with a deadline.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .browser import Deployment, browser_page, chromium_missing, deployment
from .ui_app import MARKUP

pytestmark = [
    pytest.mark.external_service,
    pytest.mark.skipif(chromium_missing() is not None, reason=str(chromium_missing())),
]

DEADLINE_MS = 20_000


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    with deployment(tmp_path_factory.mktemp("ui") / "ui.db") as d:
        yield d


@pytest.fixture(scope="module")
def browser_tab() -> Iterator[Any]:
    with browser_page() as page:
        yield page


@pytest.fixture
def page(browser_tab: Any) -> Any:
    errors: list[str] = []
    browser_tab.on("pageerror", lambda exc: errors.append(str(exc)))
    yield browser_tab
    assert errors == []


def expect(locator: Any) -> Any:
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(locator)


def status_of(page: Any) -> Any:
    return page.locator("#run-status .status")


def test_list_runs_open_one_send_the_approval_and_see_it_complete(
    served: Deployment, page: Any
) -> None:
    served.start("demo", "approve-me")
    served.wait("approve-me", lambda s: s["status"] == "paused")
    page.goto(served.ui_url)
    row = page.locator('#runs-table tr[data-run="approve-me"]')
    expect(row.locator(".status")).to_have_text("paused", timeout=DEADLINE_MS)
    row.get_by_role("link", name="approve-me").click()
    expect(status_of(page)).to_have_text("paused", timeout=DEADLINE_MS)
    expect(page.locator("#event-name")).to_have_value("approval")
    page.locator("#event-payload").fill('{"approved": true}')
    page.locator("#send-event").click()
    expect(status_of(page)).to_have_text("completed", timeout=DEADLINE_MS)
    graph = page.locator("#run-graph")
    expect(graph.locator('g.node[data-node="ship"]')).to_have_class("node taken")
    expect(graph.locator('g.node[data-node="cancel"]')).to_have_class("node")
    expect(page.locator('#steps tr[data-node="ship"]')).to_have_count(1)
    assert served.call("GET", "/runs/approve-me")["status"] == "completed"


def test_the_run_page_marks_the_current_node_and_the_path_taken(
    served: Deployment, page: Any
) -> None:
    served.start("demo", "half-way")
    served.wait("half-way", lambda s: s["status"] == "paused")
    page.goto(f"{served.ui_url}#/runs/half-way")
    graph = page.locator("#run-graph")
    expect(graph.locator('g.node[data-node="approval"]')).to_have_class(
        "node current", timeout=DEADLINE_MS
    )
    expect(graph.locator('g.node[data-node="order"]')).to_have_class("node taken")
    expect(graph.locator('g.edge[data-edge="e1"]')).to_have_class("edge taken")
    expect(graph.locator('g.edge[data-edge="e2"]')).to_have_class("edge taken")
    expect(graph.locator('g.edge[data-edge="e3"]')).to_have_class("edge")
    expect(page.locator("#snapshot")).to_contain_text('"workflowId": "half-way"')


def test_retry_a_failed_run_from_the_dashboard(served: Deployment, page: Any) -> None:
    served.start("fragile", "fails-once")
    served.wait("fails-once", lambda s: s["status"] == "failed")
    page.goto(f"{served.ui_url}#/runs?status=failed")
    row = page.locator('#runs-table tr[data-run="fails-once"]')
    expect(row).to_contain_text("the checker is down", timeout=DEADLINE_MS)
    row.get_by_role("link", name="fails-once").click()
    expect(status_of(page)).to_have_text("failed", timeout=DEADLINE_MS)
    expect(page.locator('#run-graph g.node[data-node="check"]')).to_have_class(
        "node failed current"
    )
    page.locator("#retry-reason").fill("checker is back")
    page.locator("#retry").click()
    expect(status_of(page)).to_have_text("completed", timeout=DEADLINE_MS)
    expect(page.locator("#timeline")).to_contain_text("checker is back")
    snap = served.call("GET", "/runs/fails-once")
    assert snap["status"] == "completed"
    assert [r.get("error") is None for r in snap["context"]["check"]] == [False, True]


def test_rerun_from_a_node_from_the_dashboard(served: Deployment, page: Any) -> None:
    served.start("demo", "source-run")
    served.wait("source-run", lambda s: s["status"] == "paused")
    served.call("POST", "/runs/source-run/events", {"payload": {"approved": True}})
    before = served.wait("source-run", lambda s: s["status"] == "completed")
    page.goto(f"{served.ui_url}#/runs/source-run")
    expect(status_of(page)).to_have_text("completed", timeout=DEADLINE_MS)
    page.locator("#rerun-node").select_option("decide")
    page.locator("#rerun-id").fill("the-rerun")
    page.locator("#rerun").click()
    expect(page.locator("#run-id")).to_have_text("the-rerun", timeout=DEADLINE_MS)
    expect(status_of(page)).to_have_text("completed", timeout=DEADLINE_MS)
    expect(page.locator("#timeline").get_by_role("link", name="source-run")).to_be_visible()
    rerun = served.call("GET", "/runs/the-rerun")
    assert rerun["metadata"]["rerunOf"]["run"] == "source-run"
    assert rerun["context"]["approval"] == before["context"]["approval"]
    after = served.call("GET", "/runs/source-run")
    assert after["context"] == before["context"]
    assert after["status"] == "completed"


def test_the_runs_page_filters_pages_and_refreshes_itself(served: Deployment, page: Any) -> None:
    for run_id in ("page-a", "page-b", "page-c"):
        served.start("fragile", run_id)
        served.wait(run_id, lambda s: s["status"] == "failed")
    page.goto(f"{served.ui_url}#/runs?workflow=fragile&status=failed&limit=2")
    rows = page.locator("#runs-table tbody tr[data-run]")
    expect(rows).to_have_count(2, timeout=DEADLINE_MS)
    first_page = rows.evaluate_all("rows => rows.map(r => r.dataset.run)")
    page.locator("#older").click()
    expect(page.locator("#newer")).to_be_enabled(timeout=DEADLINE_MS)
    later = page.locator("#runs-table tbody tr[data-run]")
    expect(later.first).not_to_have_attribute("data-run", first_page[0], timeout=DEADLINE_MS)
    seen = later.evaluate_all("rows => rows.map(r => r.dataset.run)")
    assert not set(seen) & set(first_page)
    page.goto(f"{served.ui_url}#/runs?workflow=demo")
    expect(page.locator("#filter-workflow")).to_have_value("demo", timeout=DEADLINE_MS)
    statuses = page.locator("#runs-table tbody tr[data-run]")
    expect(statuses.first).to_be_visible(timeout=DEADLINE_MS)
    # A run started after the page loaded appears without a reload (auto-refresh).
    served.start("demo", "arrives-later")
    expect(page.locator('#runs-table tr[data-run="arrives-later"]')).to_have_count(
        1, timeout=DEADLINE_MS
    )
    assert page.locator('#runs-table tr[data-run^="page-"]').count() == 0


def test_an_adversarial_run_is_shown_as_text(served: Deployment, page: Any) -> None:
    served.start("hostile", "hostile-run", input={"x": MARKUP})
    served.wait("hostile-run", lambda s: s["status"] == "failed")
    served.start("demo", "cancelled-run")
    served.call("POST", "/runs/cancelled-run/cancel", {"reason": MARKUP})
    for target in ("#/runs", "#/runs/hostile-run", "#/runs/cancelled-run", "#/workflows"):
        page.goto(f"{served.ui_url}{target}")
        expect(page.locator("main")).to_contain_text(MARKUP[:20], timeout=DEADLINE_MS)
        assert page.locator("main img, main script").count() == 0
        assert page.evaluate("window.__xss") is None
    page.goto(f"{served.ui_url}#/runs/hostile-run")
    expect(page.locator("#timeline")).to_contain_text(MARKUP, timeout=DEADLINE_MS)
    expect(page.locator("#snapshot")).to_contain_text("onerror", timeout=DEADLINE_MS)
    assert page.evaluate("window.__xss") is None


def test_refluxo_dev_serves_the_dashboard_at_ui(tmp_path: Path, page: Any) -> None:
    from .browser import APP, Process, free_port

    port = free_port()
    dev = Process(
        ["dev", "--app", APP, "--db", str(tmp_path / "d.db"), "--port", str(port)], "/ui/"
    )
    try:
        assert any(f"http://127.0.0.1:{port}/ui/" in line for line in dev.output)
        page.goto(f"http://127.0.0.1:{port}/ui/#/workflows")
        expect(page.locator('section[data-workflow="fragile"] svg g.node')).to_have_count(
            3, timeout=DEADLINE_MS
        )
    finally:
        dev.stop()
