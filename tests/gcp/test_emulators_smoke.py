"""The emulators behave as the Google Cloud adapters will rely on.

These run the real Firestore emulator, gcloud-tasks-emulator and
functions-framework, through the async clients the adapters use.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import http.server
import json
import os
import queue
import textwrap
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from google.api_core import exceptions as gexc
from google.cloud import firestore, tasks_v2

try:
    from .emulators import EmulatorError, FirestoreEmulator, FunctionsFrameworkServer
except ImportError:
    from emulators import EmulatorError, FirestoreEmulator, FunctionsFrameworkServer  # type: ignore[no-redef]

DEADLINE = 20.0  # seconds: generous upper bound for any single wait below


# --------------------------------------------------------------------------- #
# Firestore
# --------------------------------------------------------------------------- #


async def test_firestore_create_refuses_existing_document(firestore_client: Any) -> None:
    ref = firestore_client.collection("runs").document("create-once")
    await ref.create({"state": "pending"})
    with pytest.raises(gexc.Conflict):
        await ref.create({"state": "other"})
    assert (await ref.get()).to_dict() == {"state": "pending"}


async def test_firestore_transactional_read_modify_write(firestore_client: Any) -> None:
    ref = firestore_client.collection("runs").document("rmw")
    await ref.set({"version": 1, "steps": ["a"]})

    @firestore.async_transactional
    async def advance(transaction: Any) -> int:
        snapshot = await ref.get(transaction=transaction)
        version = int(snapshot.get("version")) + 1
        transaction.update(ref, {"version": version, "steps": [*snapshot.get("steps"), "b"]})
        return version

    assert await advance(firestore_client.transaction()) == 2
    assert (await ref.get()).to_dict() == {"version": 2, "steps": ["a", "b"]}


async def test_firestore_concurrent_transactions_never_both_commit(
    firestore_client: Any,
) -> None:
    """Two read-modify-write transactions on one document: no lost update.

    With one attempt each, the emulator's lock timeout sometimes aborts both, so "at most one"
    is the guarantee (the store saves with an update-time precondition instead, which always
    has exactly one winner: see test_firestore_store.py)."""
    ref = firestore_client.collection("runs").document("contended")
    await ref.set({"version": 0})
    # Both transactions have read version 0 before either tries to commit.
    both_read = asyncio.Barrier(2)

    async def bump(tag: str) -> str:
        @firestore.async_transactional
        async def body(transaction: Any) -> None:
            snapshot = await ref.get(transaction=transaction)
            await asyncio.wait_for(both_read.wait(), DEADLINE)
            transaction.update(ref, {"version": snapshot.get("version") + 1, "by": tag})

        await body(firestore_client.transaction(max_attempts=1))
        return tag

    results = await asyncio.wait_for(
        asyncio.gather(bump("a"), bump("b"), return_exceptions=True), DEADLINE
    )
    winners = [r for r in results if isinstance(r, str)]
    losers = [r for r in results if isinstance(r, BaseException)]
    assert len(winners) <= 1 and len(winners) + len(losers) == 2, results
    for loser in losers:  # retries exhausted: a plain ValueError raised from the Aborted
        assert isinstance(loser, ValueError), repr(loser)
        assert isinstance(loser.__cause__, gexc.Aborted), repr(loser.__cause__)
    stored = (await ref.get()).to_dict()
    assert stored == ({"version": 1, "by": winners[0]} if winners else {"version": 0})


async def test_firestore_reset_deletes_documents(
    firestore_emulator: FirestoreEmulator, firestore_client: Any
) -> None:
    ref = firestore_client.collection("runs").document("doomed")
    await ref.set({"x": 1})
    firestore_emulator.reset()
    assert not (await ref.get()).exists


def test_firestore_stop_leaves_no_jvm(firestore_emulator: FirestoreEmulator) -> None:
    # An emulator of its own; the session one proves the launcher is there.
    emulator = FirestoreEmulator(project="refluxo-stop-test", launcher=firestore_emulator.launcher)
    with emulator:
        pgid = emulator.pid
        assert pgid is not None
        members = _group_members(pgid)
        assert any("java" in cmd for cmd in members.values()), members
    leftovers = [pid for pid in members if _alive(pid)]
    assert leftovers == [], leftovers
    assert _group_members(pgid) == {}


def test_startup_failure_reports_output_tail(tmp_path: Path) -> None:
    launcher = tmp_path / "broken_emulator"
    launcher.write_text("#!/bin/sh\necho 'java: no such thing' >&2\nexit 3\n")
    launcher.chmod(0o755)
    with pytest.raises(EmulatorError, match=r"(?s)exited with code 3.*java: no such thing"):
        FirestoreEmulator(launcher=launcher).start()


# --------------------------------------------------------------------------- #
# Cloud Tasks
# --------------------------------------------------------------------------- #


@dataclass
class Delivery:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float


@pytest.fixture
def http_sink() -> Iterator[tuple[str, queue.Queue[Delivery]]]:
    """A loopback HTTP server that records each request and answers 200."""
    received: queue.Queue[Delivery] = queue.Queue()

    class Handler(http.server.BaseHTTPRequestHandler):
        def _record(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            received.put(
                Delivery(self.command, self.path, dict(self.headers), body, time.monotonic())
            )
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_POST = do_PUT = do_GET = _record

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", received
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


async def test_tasks_http_task_delivered_at_schedule_time(
    tasks_emulator: Any,
    tasks_client: Any,
    http_sink: tuple[str, queue.Queue[Delivery]],
) -> None:
    base_url, received = http_sink
    delay = 2.0
    payload = json.dumps({"run": "r1", "step": 3}).encode()
    task = tasks_v2.Task(
        http_request=tasks_v2.HttpRequest(
            http_method=tasks_v2.HttpMethod.POST,
            url=f"{base_url}/steps/r1?attempt=1",
            headers={"Content-Type": "application/json", "X-Refluxo-Run": "r1"},
            body=payload,
        ),
        schedule_time=dt.datetime.now(dt.UTC) + dt.timedelta(seconds=delay),
    )
    created_at = time.monotonic()
    created = await tasks_client.create_task(parent=tasks_emulator.queue_path, task=task)
    assert created.name.startswith(tasks_emulator.queue_path + "/tasks/")

    delivery = await asyncio.to_thread(received.get, timeout=DEADLINE)
    assert delivery.method == "POST"
    assert delivery.path == "/steps/r1?attempt=1"
    assert delivery.body == payload
    assert delivery.headers["Content-Type"] == "application/json"
    assert delivery.headers["X-Refluxo-Run"] == "r1"
    assert delivery.headers["X-Cloudtasks-Queuename"] == tasks_emulator.queue_path
    assert delivery.headers["X-Cloudtasks-Taskname"] == created.name.rsplit("/", 1)[-1]
    assert delivery.headers["X-Cloudtasks-Taskretrycount"] == "0"
    # Not before its schedule_time (some slack for clock reads on both sides).
    assert delivery.at - created_at >= delay - 0.25
    assert received.empty()


# --------------------------------------------------------------------------- #
# functions-framework
# --------------------------------------------------------------------------- #


def test_functions_framework_serves_with_env_and_stops(tmp_path: Path) -> None:
    source = tmp_path / "main.py"
    source.write_text(
        textwrap.dedent(
            """
            import os

            def handler(request):
                return {"greeting": os.environ["GREETING"], "path": request.path}
            """
        )
    )
    server = FunctionsFrameworkServer("handler", source, env={"GREETING": "hola"})
    with server:
        pgid = server.pid
        assert pgid is not None
        with urllib.request.urlopen(server.url + "/run/1", timeout=DEADLINE) as response:
            assert json.loads(response.read()) == {"greeting": "hola", "path": "/run/1"}
        members = _group_members(pgid)
    assert [pid for pid in members if _alive(pid)] == []


# --------------------------------------------------------------------------- #
# helpers
# --------------------------------------------------------------------------- #


def _group_members(pgid: int) -> dict[int, str]:
    """Live processes in process group ``pgid`` (pid -> command line), via /proc."""
    members: dict[int, str] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
            cmdline = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        fields = text[text.rfind(")") + 2 :].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            members[int(stat.parent.name)] = cmdline
    return members


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    state = Path(f"/proc/{pid}/stat")
    try:
        text = state.read_text()
    except OSError:
        return False
    return text[text.rfind(")") + 2 :].split()[0] != "Z"
