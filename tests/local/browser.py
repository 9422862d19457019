"""Headless Chromium (Debian's ``chromium``) driven by Playwright, and the servers it looks at.

Shared by the dashboard's browser tests and ``make screenshots``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

CHROMIUM = os.environ.get("REFLUXO_CHROMIUM", "/usr/bin/chromium")

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

TOKEN = "ui-test-token"
APP = "tests.local.ui_app"
REPO = Path(__file__).resolve().parents[2]


def chromium_missing() -> str | None:
    """Why the browser cannot start here, or None."""
    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        return f"{CHROMIUM} is missing: make setup-browser installs Debian's chromium"
    try:
        import playwright  # noqa: F401
    except ImportError:
        return "playwright is missing: pip install -e '.[dev]'"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Process:
    """A ``refluxo`` command in its own process, ready once it printed ``ready_word``."""

    def __init__(self, args: list[str], ready_word: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "refluxo.local.cli", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        assert self.proc.stdout is not None
        ready = threading.Event()
        self.output: list[str] = []

        def drain(stream: IO[str]) -> None:
            for line in stream:
                self.output.append(line)
                if ready_word in line:
                    ready.set()

        self._reader = threading.Thread(target=drain, args=(self.proc.stdout,), daemon=True)
        self._reader.start()
        if not ready.wait(30):
            self.stop()
            raise AssertionError(
                f"refluxo {' '.join(args)} did not start:\n" + "".join(self.output)
            )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=15)
        self._reader.join(5)
        assert self.proc.stdout is not None
        self.proc.stdout.close()


class Deployment:
    """``refluxo dev`` serving the test workflows with a token, and ``refluxo ui`` for it."""

    def __init__(self, db: Path) -> None:
        port, ui_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.dev = Process(
            ["--token", TOKEN, "dev", "--app", APP, "--db", str(db), "--port", str(port)],
            "serving",
        )
        try:
            self.ui = Process(
                ["ui", "--url", self.url, "--token", TOKEN, "--port", str(ui_port)], "dashboard"
            )
        except BaseException:
            self.dev.stop()
            raise
        self.ui_url = f"http://127.0.0.1:{ui_port}/"

    def stop(self) -> None:
        self.ui.stop()
        self.dev.stop()

    def call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)
        request.add_header("authorization", f"Bearer {TOKEN}")
        request.add_header("content-type", "application/json")
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def start(self, workflow: str, run_id: str, input: Any = None) -> None:
        self.call("POST", f"/workflows/{workflow}/runs", {"id": run_id, "input": input})

    def wait(
        self, run_id: str, predicate: Callable[[dict[str, Any]], bool], deadline: float = 20
    ) -> dict[str, Any]:
        """Poll the run until ``predicate`` holds (a deadline, not a sleep)."""
        end = time.monotonic() + deadline
        while True:
            snap: dict[str, Any] = self.call("GET", f"/runs/{run_id}")
            if predicate(snap):
                return snap
            assert time.monotonic() < end, f"run {run_id} stuck: {snap['status']}"
            time.sleep(0.05)


@contextmanager
def deployment(db: Path) -> Iterator[Deployment]:
    served = Deployment(db)
    try:
        yield served
    finally:
        served.stop()


@contextmanager
def browser_page(width: int = 1280, height: int = 900) -> Iterator[Any]:
    """A page of a fresh headless Chromium (Playwright with the system browser)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            yield page
        finally:
            browser.close()
