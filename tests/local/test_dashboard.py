"""The dashboard's server side: its pages, the proxy that holds the token, and where it ships.

The pages themselves are tested in a real browser (``test_dashboard_browser.py``).
"""

from __future__ import annotations

import importlib.util
import json
import sys
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from refluxo.demo import workflows
from refluxo.local.dashboard import CSP, DashboardServer
from refluxo.local.runtime import LocalRuntime

REPO = Path(__file__).resolve().parents[2]
TOKEN = "s3cret-token"


@pytest.fixture
async def runtime(tmp_path: Path) -> AsyncIterator[LocalRuntime]:
    async with LocalRuntime(workflows(), db_path=tmp_path / "ui.db", api_token=TOKEN) as rt:
        yield rt


@pytest.fixture
async def base(runtime: LocalRuntime) -> str:
    """The dashboard that ``refluxo dev`` serves at ``/ui/``."""
    server = await runtime.serve(port=0, dashboard=True)
    return f"{server.url}/ui/"


def fetch(
    url: str, method: str = "GET", body: Any = None, **headers: str
) -> tuple[int, dict[str, str], bytes]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    if data is not None:
        request.add_header("content-type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers.items()), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers.items()), exc.read()


async def get(url: str, method: str = "GET", body: Any = None, **headers: str) -> Any:
    import asyncio

    return await asyncio.to_thread(fetch, url, method, body, **headers)


UI = {"x-refluxo-ui": "1"}


async def test_the_pages_are_served_with_a_policy_that_runs_only_their_own_scripts(
    base: str,
) -> None:
    status, headers, body = await get(base)
    assert status == 200
    assert headers["content-type"].startswith("text/html")
    assert headers["content-security-policy"] == CSP
    assert "script-src 'self'" in CSP and "unsafe-inline" not in CSP
    assert headers["x-content-type-options"] == "nosniff"
    assert b'src="app.js"' in body
    for name, kind in (("app.js", "text/javascript"), ("graph.js", "text/javascript")):
        status, headers, _ = await get(base + name)
        assert (status, headers["content-type"].split(";")[0]) == (200, kind)


async def test_refluxo_dev_sends_ui_to_the_dashboard_and_the_rest_to_the_api(base: str) -> None:
    status, headers, body = await get(base.rstrip("/"))  # /ui: redirected to /ui/
    assert (status, headers["content-type"].split(";")[0]) == (200, "text/html")
    root = base.removesuffix("/ui/")
    status, _, body = await get(root + "/workflows", authorization=f"Bearer {TOKEN}")
    assert status == 200
    assert json.loads(body)["workflows"][0]["name"] == "demo"


async def test_only_the_dashboards_own_files_are_served(base: str) -> None:
    for name in ("../__init__.py", "%2e%2e/__init__.py", "__init__.py", "static/app.js", "x.js"):
        status, _, body = await get(base + name)
        assert status == 404, name
        assert json.loads(body)["error"]["code"] == "not_found"


async def test_the_proxy_adds_the_token_which_no_page_holds(
    runtime: LocalRuntime, base: str
) -> None:
    await runtime.dispatcher.start("demo", run_id="r1")
    status, _, body = await get(base + "api/runs/r1", **UI)
    assert status == 200
    assert json.loads(body)["workflowId"] == "r1"
    for name in ("", "app.js", "graph.js", "style.css", "info.json"):
        assert TOKEN.encode() not in (await get(base + name))[2]


async def test_the_proxy_answers_only_requests_that_carry_the_dashboards_header(
    runtime: LocalRuntime, base: str
) -> None:
    # A page of another origin cannot add the header without a CORS preflight, never granted.
    await runtime.dispatcher.start("demo", run_id="r1")
    status, _, body = await get(base + "api/runs/r1/cancel", "POST", {})
    assert status == 403
    assert json.loads(body)["error"]["code"] == "forbidden"
    assert (await runtime.store.load("r1")).status != "failed"


async def test_the_proxy_forwards_the_public_routes_only(base: str) -> None:
    for path in ("_dispatch", "_reconcile", "healthz", "runs/../_dispatch"):
        status, _, _ = await get(base + "api/" + path, "POST", {}, **UI)
        assert status == 404, path
    status, _, body = await get(base + "api/workflows", **UI)
    assert status == 200
    assert [w["name"] for w in json.loads(body)["workflows"]] == ["demo"]


async def test_the_dashboard_answers_its_own_host_names_only(base: str) -> None:
    status, _, body = await get(base, host="attacker.example")
    assert status == 400
    assert json.loads(body)["error"]["code"] == "host_not_allowed"


async def test_refluxo_ui_operates_a_deployment_through_its_api_with_the_token(
    runtime: LocalRuntime,
) -> None:
    api = await runtime.serve(port=0)
    await runtime.dispatcher.start("demo", run_id="far")
    ui = DashboardServer(api.url, TOKEN, port=0)
    await ui.start()
    try:
        status, _, body = await get(ui.url + "api/runs?workflow=demo", **UI)
        assert status == 200
        assert [r["id"] for r in json.loads(body)["runs"]] == ["far"]
        status, _, body = await get(ui.url + "info.json")
        assert json.loads(body) == {"target": api.url}
        # Without the token the deployment refuses, and the dashboard says so.
        bare = DashboardServer(api.url, None, port=0)
        await bare.start()
        try:
            status, _, body = await get(bare.url + "api/runs", **UI)
            assert status == 401
        finally:
            await bare.stop()
    finally:
        await ui.stop()


async def test_refluxo_ui_says_when_the_deployment_cannot_be_reached() -> None:
    ui = DashboardServer("http://127.0.0.1:9", None, port=0)
    await ui.start()
    try:
        status, _, body = await get(ui.url + "api/runs", **UI)
    finally:
        await ui.stop()
    assert status == 502
    assert json.loads(body)["error"]["code"] == "unreachable"


def _load(name: str, path: Path) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


@pytest.mark.parametrize("platform", ["gcp", "cloudflare"])
def test_cloud_bundles_leave_the_dashboard_out(platform: str, tmp_path: Path) -> None:
    name = f"dashboard_check_{platform}_deploy"
    module = _load(name, REPO / "deploy" / platform / "deploy.py")
    try:
        out = tmp_path / "bundle"
        assert module.main(["--build-only", "--out", str(out)]) == 0
    finally:
        del sys.modules[name]
    shipped = [p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()]
    assert shipped
    assert not [p for p in shipped if "dashboard" in p or p.endswith((".js", ".html", ".css"))]


UI_COMMAND = [sys.executable, "-m", "refluxo.local.cli", "ui", "--url", "http://127.0.0.1:9"]


def test_refluxo_ui_says_in_one_line_when_its_port_is_taken() -> None:
    import socket
    import subprocess

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [*UI_COMMAND, "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert done.returncode == 1
    assert done.stderr.startswith(f"refluxo: cannot listen on 127.0.0.1:{port}")
    assert len(done.stderr.strip().splitlines()) == 1
