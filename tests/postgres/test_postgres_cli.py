"""``refluxo dev --postgres URL`` serves the API on PostgreSQL; ``refluxo worker`` needs a URL."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading

from tests.local.test_cli import cli, free_port, wait_status


def test_dev_with_postgres_serves_the_api_and_runs_steps_with_a_worker(pg_url: str) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    common = ["--postgres", pg_url, "--app", "tests.postgres.worker_app"]
    dev = subprocess.Popen(
        [sys.executable, "-m", "refluxo.local.cli", "dev", *common, "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    worker = subprocess.Popen(
        [sys.executable, "-m", "refluxo.local.cli", "worker", *common, "--concurrency", "2"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert dev.stdout is not None
        ready = threading.Event()
        output: list[str] = []

        def drain() -> None:
            assert dev.stdout is not None
            for line in dev.stdout:
                output.append(line)
                if "serving" in line:
                    ready.set()

        reader = threading.Thread(target=drain, daemon=True)
        reader.start()
        assert ready.wait(30), "refluxo dev did not start:\n" + "".join(output)
        assert "state in PostgreSQL" in "".join(output)
        started = cli("start", "chain", "--id", "run-1", url=url)
        assert started.returncode == 0, started.stderr
        snap = wait_status(url, "run-1", lambda s: s["status"] == "completed", deadline=60)
        assert sorted(snap["context"]) == [f"s{i}" for i in range(5)]  # type: ignore[call-overload]
    finally:
        for proc in (dev, worker):
            proc.send_signal(signal.SIGTERM)
        for proc in (dev, worker):
            proc.wait(timeout=20)
        if dev.stdout is not None:
            dev.stdout.close()


def test_worker_without_a_database_says_what_it_needs() -> None:
    done = cli("worker", "--app", "tests.postgres.worker_app")
    assert done.returncode == 2
    assert "worker needs --postgres URL" in done.stderr
