"""A real ``refluxo dev`` process serving executors that exit, interrupt or block."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.local.test_cli import free_port

pytestmark = pytest.mark.external_service

ROOT = Path(__file__).resolve().parents[2]


class Dev:
    def __init__(self, db: Path, *extra: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.output: list[str] = []
        app = "tests.local.misbehaving_app"
        command = ["dev", "--db", str(db), "--port", str(self.port), "--app", app, *extra]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "refluxo.local.cli", *command],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=ROOT,
        )
        ready = threading.Event()

        def drain() -> None:
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                self.output.append(line)
                if "serving" in line:
                    ready.set()

        self.reader = threading.Thread(target=drain, daemon=True)
        self.reader.start()
        if not ready.wait(20):
            self.proc.kill()
            raise AssertionError("refluxo dev did not start:\n" + "".join(self.output))

    def call(self, method: str, path: str, body: Any = None, timeout: float = 10) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.url + path, data=data, method=method, headers={"content-type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())

    def wait_status(self, run_id: str, status: str, deadline_s: float = 20) -> dict[str, Any]:
        end = time.monotonic() + deadline_s
        while True:
            snapshot: dict[str, Any] = self.call("GET", f"/runs/{run_id}")
            if snapshot["status"] == status:
                return snapshot
            assert time.monotonic() < end, f"run {run_id} is {snapshot['status']}"
            time.sleep(0.02)

    def kill(self) -> None:
        """SIGKILL, then close the pipe."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.reader.join(5)
        assert self.proc.stdout is not None
        self.proc.stdout.close()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=15)
        self.reader.join(5)
        return code


@pytest.fixture
def dev(tmp_path: Path) -> Iterator[Dev]:
    server = Dev(tmp_path / "dev.db")
    yield server
    server.kill()


@pytest.mark.parametrize(
    ("workflow", "raised"), [("exits", "SystemExit"), ("interrupts", "KeyboardInterrupt")]
)
def test_an_executor_raising_system_exit_fails_its_run_and_the_server_keeps_serving(
    dev: Dev, workflow: str, raised: str
) -> None:
    dev.call("POST", f"/workflows/{workflow}/runs", {"id": "r1"})
    failed = dev.wait_status("r1", "failed")
    assert failed["metadata"]["failedReason"].startswith(f"node 'a' failed: {raised}")
    assert dev.call("GET", "/healthz") is not None
    assert dev.proc.poll() is None
    assert any(raised in line for line in dev.output)  # logged
    # A second run after the first: the process did not die and come back.
    dev.call("POST", f"/workflows/{workflow}/runs", {"id": "r2"})
    dev.wait_status("r2", "failed")
    assert dev.stop() == 0


def test_a_blocking_plain_executor_leaves_the_server_answering_and_sigterm_stops_it(
    dev: Dev, tmp_path: Path
) -> None:
    marker = tmp_path / "started"
    dev.call("POST", "/workflows/blocks/runs", {"id": "b1", "input": {"marker": str(marker)}})
    end = time.monotonic() + 20
    while not marker.exists():
        assert time.monotonic() < end, "the executor did not start"
        time.sleep(0.02)
    # The executor sleeps for an hour in its thread; the event loop still answers.
    assert dev.call("GET", "/healthz", timeout=10) is not None
    assert dev.call("GET", "/runs/b1", timeout=10)["status"] == "active"
    # And a SIGTERM still stops the server, the blocked thread notwithstanding.
    assert dev.stop() == 0
