"""The Cloudflare harness itself: a toy Python Worker over real KV, Queues and D1."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
TOY_WORKER = HERE / "toy_worker"
IN_PYODIDE = HERE / "in_pyodide"

pytestmark = pytest.mark.external_service


def _request(
    url: str, method: str = "GET", body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as res:
            data = res.read()
            if res.headers.get_content_type() == "application/json":
                return res.status, json.loads(data)
            return res.status, data.decode()
    except urllib.error.HTTPError as err:
        with err:
            return err.code, err.read().decode(errors="replace")


@pytest.fixture(scope="module")
def toy(worker_server: Any) -> Any:
    return worker_server([TOY_WORKER], "entry", vars={"MODE": "test"})


def test_fetch_then_delayed_queue_message_reaches_the_queue_handler(toy: Any) -> None:
    server = toy

    posted_at = time.monotonic()
    status, body = _request(f"{server.url}/jobs/j1", method="POST", body=b"{}")
    assert (status, body) == (202, {"id": "j1", "status": "accepted"}), server.log()

    # The queue handler runs no earlier than delaySeconds=1 after the send.
    deadline = posted_at + 20
    while True:
        status, body = _request(f"{server.url}/jobs/j1")
        assert status == 200, server.log()
        assert body["state"] == "accepted"
        if body["done"] is not None or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert body["done"] is not None, f"queue handler never wrote done:j1\n{server.log()}"
    seen_after = time.monotonic() - posted_at
    assert body["done"]["attempts"] == 1
    assert body["done"]["queue"] == "steps"
    assert body["done"]["delay"] >= 0.9, body
    assert seen_after < 10, f"took {seen_after:.1f} s"


def test_request_body_headers_and_vars_reach_python(toy: Any) -> None:
    status, body = _request(
        f"{toy.url}/echo", "POST", json.dumps({"a": [1, 2]}).encode(), {"x-toy": "yes"}
    )
    assert (status, body) == (200, {"body": {"a": [1, 2]}, "header": "yes", "mode": "test"})
    assert _request(f"{toy.url}/nope") == (404, "not found")


def test_an_exception_in_fetch_is_a_500_and_is_logged(toy: Any) -> None:
    assert _request(f"{toy.url}/boom")[0] == 500
    assert "RuntimeError: boom" in toy.log()


def test_wait_until_work_finishes_after_the_response(toy: Any) -> None:
    assert _request(f"{toy.url}/later/k1", "POST", b"") == (202, "scheduled")
    assert _request(f"{toy.url}/later/k1") == (200, "")  # written ~0.2 s later
    deadline = time.monotonic() + 10
    while _request(f"{toy.url}/later/k1")[1] != "written":
        assert time.monotonic() < deadline, toy.log()
        time.sleep(0.05)


def test_run_mode_d1_compare_and_set_and_pydantic(run_in_pyodide: Any) -> None:
    result = run_in_pyodide(IN_PYODIDE / "d1_cas_and_pydantic.py", d1=["DB"])
    assert "3 passed, 0 failed" in result.stdout, result.stdout + result.stderr


def test_run_mode_queue_semantics_kv_and_bodies(run_in_pyodide: Any) -> None:
    result = run_in_pyodide(IN_PYODIDE / "queue_semantics.py", kv=["STATE"], queues=["STEPS"])
    assert "4 passed, 0 failed" in result.stdout, result.stdout + result.stderr


def test_run_mode_reports_failure(run_in_pyodide: Any, tmp_path: Path) -> None:
    program = tmp_path / "fails.py"
    program.write_text("print('before')\nraise ValueError('boom')\n")
    result = run_in_pyodide(program, kv=[], queues=[], d1=[], check=False)
    assert result.returncode == 1
    assert result.stdout == "before\n"
    assert "ValueError: boom" in result.stderr
