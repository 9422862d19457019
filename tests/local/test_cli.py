"""The ``refluxo`` command: a real ``refluxo dev`` process, driven by the client commands."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest

pytestmark = pytest.mark.external_service


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cli(*args: str, url: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ}
    if url:
        env["REFLUXO_URL"] = url
    return subprocess.run(
        [sys.executable, "-m", "refluxo.local.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )


class DevServer:
    def __init__(self, db: Path) -> None:
        self.db = db
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "refluxo.local.cli",
                "dev",
                "--db",
                str(self.db),
                "--port",
                str(self.port),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "REFLUXO_GLOBALS": json.dumps({"supplier_token": "cli-token"})},
        )
        assert self.proc.stdout is not None
        ready = threading.Event()
        self.output: list[str] = []

        def drain(stream: IO[str]) -> None:  # keeps the pipe from filling up
            for line in stream:
                self.output.append(line)
                if "serving" in line:
                    ready.set()

        self._reader = threading.Thread(target=drain, args=(self.proc.stdout,), daemon=True)
        self._reader.start()
        if not ready.wait(20):
            self.stop()
            raise AssertionError("refluxo dev did not start:\n" + "".join(self.output))

    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                self.proc.wait(timeout=15)
            self._reader.join(5)
            assert self.proc.stdout is not None
            self.proc.stdout.close()
        self.proc = None


@pytest.fixture
def dev(tmp_path: Path) -> Iterator[DevServer]:
    server = DevServer(tmp_path / "dev.db")
    server.start()
    yield server
    server.stop()


def wait_status(
    url: str, run_id: str, predicate: object, deadline: float = 20
) -> dict[str, object]:
    """Poll the run over HTTP (a CLI process per poll is too slow to catch a 1 s sleep)."""
    end = time.monotonic() + deadline
    while True:
        with urllib.request.urlopen(f"{url}/runs/{run_id}", timeout=10) as response:
            snap = json.loads(response.read())
        if predicate(snap):  # type: ignore[operator]
            return snap  # type: ignore[no-any-return]
        assert time.monotonic() < end, f"run stuck: {snap['status']}"
        time.sleep(0.01)


def test_start_event_inspect_through_the_cli(dev: DevServer) -> None:
    out = cli("start", "demo", "--id", "cli-1", "--input", '{"customer": "Bo"}', url=dev.url)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["workflowId"] == "cli-1"
    wait_status(dev.url, "cli-1", lambda s: (s.get("wait") or {}).get("kind") == "event")
    out = cli(
        "event", "cli-1", "--name", "approval", "--payload", '{"approved": false}', url=dev.url
    )
    assert out.returncode == 0, out.stderr
    wait_status(dev.url, "cli-1", lambda s: s["status"] == "completed")
    raw = cli("inspect", "cli-1", "--json", url=dev.url)
    assert raw.returncode == 0 and json.loads(raw.stdout)["status"] == "completed"
    timeline = cli("inspect", "cli-1", url=dev.url).stdout
    assert "run cli-1 (workflow demo)" in timeline
    assert "attempt 1  error  SupplierUnavailable" in timeline
    assert "cancel" in timeline and "now: completed" in timeline


def test_cancel_through_the_cli_and_errors_are_reported(dev: DevServer) -> None:
    cli("start", "demo", "--id", "cli-2", url=dev.url)
    out = cli("cancel", "cli-2", "--reason", "test", url=dev.url)
    assert out.returncode == 0 and json.loads(out.stdout)["status"] == "failed"
    again = cli("cancel", "cli-2", url=dev.url)
    assert again.returncode == 1 and "HTTP 409" in again.stderr
    bad = cli("start", "demo", "--input", "{nope", url=dev.url)
    assert bad.returncode != 0 and "not valid JSON" in bad.stderr


def test_a_run_survives_a_restart_of_the_dev_server(tmp_path: Path) -> None:
    server = DevServer(tmp_path / "restart.db")
    server.start()
    try:
        cli("start", "demo", "--id", "r-1", url=server.url)
        wait_status(server.url, "r-1", lambda s: (s.get("wait") or {}).get("kind") == "sleep")
        server.stop()  # stopped while the run sleeps: its wake-up is in the SQLite file
        server.start()
        wait_status(server.url, "r-1", lambda s: (s.get("wait") or {}).get("kind") == "event")
        cli("event", "r-1", "--payload", '{"approved": true}', url=server.url)
        snap = wait_status(server.url, "r-1", lambda s: s["status"] == "completed")
        assert "ship" in snap["context"]  # type: ignore[operator]
    finally:
        server.stop()


def test_graph_prints_mermaid() -> None:
    out = cli("graph", "demo")
    assert out.returncode == 0
    assert out.stdout.startswith("flowchart TD")
    assert "-- approved -->" in out.stdout and "-- timeout -->" in out.stdout
    missing = cli("graph", "nope")
    assert missing.returncode == 2 and "no workflow 'nope'" in missing.stderr
