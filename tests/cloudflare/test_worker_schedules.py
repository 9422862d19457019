"""refluxo.examples in the Worker bundle, in the harness: the cron trigger starts the digest's
tick (once, however often it fires that minute), and its sub-workflow node runs the summary as
a child run through the Worker's own queue, on D1.

The bundle is built by the deploy script's CLI; its wrangler.toml adds the every-minute cron
trigger because the workflows have schedules. The trigger goes through Miniflare's scheduled
route, which calls the entry's ``scheduled(controller, env, ctx)`` as workerd does.
"""

from __future__ import annotations

import tomllib
import urllib.parse
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from test_worker_e2e import TOKEN, Api, build_bundle, harness_config, request

from refluxo.core.schedules import tick_run_id
from refluxo.core.subflows import child_run_id

# A Monday, 09:00 in Lisbon (UTC+0 in winter): a tick of the digest's weekday schedule.
TICK_MS = round(datetime(2026, 11, 23, 9, tzinfo=UTC).timestamp() * 1000)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bundle-examples")
    return build_bundle(out, "--store", "d1", "--app", "refluxo.examples")


@pytest.fixture(scope="module")
def api(bundle: Path, worker_server: Callable[..., Any]) -> Api:
    config = harness_config(bundle, {"REFLUXO_API_TOKEN": TOKEN}, "examples")
    server = worker_server(
        [bundle / "src"], "entry", kv=(), queues=(), d1=(), extra_args=["--config", str(config)]
    )
    return Api(server)


def trigger(api: Api, cron: str, at_ms: int) -> None:
    query = urllib.parse.urlencode({"cron": cron, "time": str(at_ms)})
    url = f"{api.url}/cdn-cgi/handler/scheduled?{query}"
    with urllib.request.urlopen(url, timeout=60) as answer:  # "ok", or an error status
        assert answer.status == 200, api.server.log()[-5000:]


def test_the_wrangler_config_has_the_every_minute_trigger_beside_the_reconcilers(
    bundle: Path,
) -> None:
    wrangler = tomllib.loads((bundle / "wrangler.toml").read_text())
    assert wrangler["triggers"]["crons"] == ["*/5 * * * *", "* * * * *"]


def test_a_tick_triggered_twice_runs_the_digest_and_its_child_once(api: Api) -> None:
    trigger(api, "* * * * *", TICK_MS)
    trigger(api, "*/5 * * * *", TICK_MS)  # the reconciler's trigger of the same minute
    run_id = tick_run_id("digest", "weekdays", TICK_MS)
    done = api.wait_until(run_id, lambda s: s["status"] == "completed")
    assert done["context"]["publish"][-1]["output"] == {
        "text": "ops: 3 open, 4 closed, first ops-ticket-1"
    }
    assert [
        len(done["context"][n])
        for n in ("collect", "open_items", "closed_items", "merge", "summarize", "publish")
    ] == [1] * 6
    child = api.get(child_run_id(run_id, "summarize", 1))
    assert child["status"] == "completed"
    assert child["metadata"]["parent"]["runId"] == run_id
    assert done["metadata"]["children"] == [child["workflowId"]]


def test_a_minute_without_a_tick_starts_nothing(api: Api) -> None:
    sunday = round(datetime(2026, 11, 22, 9, tzinfo=UTC).timestamp() * 1000)
    trigger(api, "* * * * *", sunday)
    status, _ = request(
        f"{api.url}/runs/{tick_run_id('digest', 'weekdays', sunday)}",
        headers={"authorization": f"Bearer {TOKEN}"},
    )
    assert status == 404
