"""CloudTasksScheduler: the Scheduler contract on gcloud-tasks-emulator, and fakes for its gaps.

The emulator delivers each task to a small HTTP server in the test (loopback), which parses the
body back into a DispatchMessage. Two things the emulator cannot show are tested with a fake
client that captures ``create_task`` requests: task-name deduplication (the emulator accepts a
duplicate name and delivers it twice; Cloud Tasks answers ALREADY_EXISTS) and OIDC tokens (the
emulator sends none). The contract also runs a second time on a fake that delivers and
deduplicates names as Cloud Tasks does, so the contract's collapse test covers the adapter.
"""

from __future__ import annotations

import asyncio
import http.server
import json
import re
import secrets
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any, cast

import pytest
from google.api_core import exceptions as gexc
from google.auth import exceptions as auth_exc
from google.cloud import tasks_v2

from refluxo.core import SchedulerError
from refluxo.core.model import DispatchMessage, now_ms
from refluxo.gcp.scheduler import (
    MAX_DELAY_MS,
    CloudTasksScheduler,
    default_audience,
    task_id,
)
from refluxo.testing.scheduler import NextDelivery, SchedulerContract

QUEUE = "projects/refluxo-test/locations/us-central1/queues/refluxo"
TASK_ID = re.compile(r"[A-Za-z0-9_-]{1,500}")


# --------------------------------------------------------------------------- #
# A loopback /_dispatch that records what Cloud Tasks (the emulator) sends
# --------------------------------------------------------------------------- #


@dataclass
class Delivery:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def message(self) -> DispatchMessage:
        assert self.method == "POST", self
        assert self.headers.get("Content-Type") == "application/json", self.headers
        return DispatchMessage.model_validate_json(self.body)


class DispatchSink:
    """A threaded HTTP server answering 200, handing each delivery to the test's event loop.

    The path carries a random token: the emulator is shared by the whole session, and a task
    left by an earlier test (its server gone) must not be counted here, even if this server
    got that test's port. Such strays are answered 200 so the emulator drops them.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.token = secrets.token_hex(8)
        self.path = f"/{self.token}/_dispatch"
        self.deliveries: asyncio.Queue[Delivery] = asyncio.Queue()
        sink = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                if self.path == sink.path:
                    delivery = Delivery(self.command, self.path, dict(self.headers), body)
                    loop.call_soon_threadsafe(sink.deliveries.put_nowait, delivery)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}{self.path}"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,))

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    async def next_delivery(self, timeout_s: float) -> Delivery | None:
        try:
            return await asyncio.wait_for(self.deliveries.get(), max(timeout_s, 0))
        except TimeoutError:
            return None


@pytest.fixture
async def sink() -> AsyncIterator[DispatchSink]:
    server = DispatchSink(asyncio.get_running_loop())
    server.start()
    try:
        yield server
    finally:
        await asyncio.to_thread(server.stop)


class TestCloudTasksScheduler(SchedulerContract):
    @pytest.fixture
    def scheduler(self, tasks_client: Any, tasks_emulator: Any, sink: DispatchSink) -> Any:
        return CloudTasksScheduler(
            tasks_client, queue=tasks_emulator.queue_path, url=sink.url, headers={"X-Test": "1"}
        )

    @pytest.fixture
    def scheduler_capabilities(self) -> frozenset[str]:
        # Cloud Tasks deduplicates by task name, but the emulator does not (it delivers a
        # duplicate name twice), so here the adapter honestly declares nothing. The collapse
        # itself is tested below with a fake client that answers ALREADY_EXISTS.
        return frozenset()

    @pytest.fixture
    def next_delivery(self, sink: DispatchSink) -> NextDelivery:
        async def next_delivery(timeout_s: float) -> DispatchMessage | None:
            delivery = await sink.next_delivery(timeout_s)
            return None if delivery is None else delivery.message()

        return next_delivery

    @pytest.fixture
    def delivery_timeout_s(self) -> float:
        # The emulator polls its queue every 0.1 s and delivers one task at a time; tasks left
        # by earlier tests (answered by nobody) share that one delivery thread.
        return 10.0


async def test_the_emulator_delivers_the_task_the_adapter_built(
    tasks_client: Any, tasks_emulator: Any, sink: DispatchSink
) -> None:
    scheduler = CloudTasksScheduler(
        tasks_client,
        queue=tasks_emulator.queue_path,
        url=sink.url,
        headers={"X-Refluxo-Dispatch-Token": "s3cret", "content-type": "text/plain"},
    )
    message = DispatchMessage(run_id="Run_2.a:b", version=7, hop=1)
    await scheduler.schedule(message)
    delivery = await sink.next_delivery(10.0)
    assert delivery is not None
    assert delivery.message() == message
    assert json.loads(delivery.body) == {"runId": "Run_2.a:b", "version": 7, "hop": 1}
    assert delivery.headers["X-Refluxo-Dispatch-Token"] == "s3cret"
    assert delivery.headers["Content-Type"] == "application/json"  # ours wins
    assert delivery.headers["X-Cloudtasks-Taskname"] == task_id(message.key)
    assert delivery.headers["X-Cloudtasks-Queuename"] == tasks_emulator.queue_path


# --------------------------------------------------------------------------- #
# A fake client, for what the emulator cannot show
# --------------------------------------------------------------------------- #


class FakeCloudTasks:
    """Records ``create_task`` requests and, like Cloud Tasks, refuses a name seen before."""

    def __init__(self, error: Exception | None = None) -> None:
        self.requests: list[tasks_v2.CreateTaskRequest] = []
        self.names: set[str] = set()
        self.error = error

    async def create_task(
        self, request: tasks_v2.CreateTaskRequest, **kwargs: Any
    ) -> tasks_v2.Task:
        self.requests.append(request)
        if self.error is not None:
            raise self.error
        if request.task.name in self.names:
            raise gexc.AlreadyExists(f"Requested entity already exists: {request.task.name}")
        self.names.add(request.task.name)
        return request.task

    @property
    def tasks(self) -> list[tasks_v2.Task]:
        return [r.task for r in self.requests]


class DeliveringFakeCloudTasks(FakeCloudTasks):
    """The fake, delivering too: each new task's message arrives at its schedule_time.

    Like Cloud Tasks, a name is refused for good once used (Cloud Tasks keeps it about an
    hour after the task ran), so a late duplicate collapses as well.
    """

    def __init__(self) -> None:
        super().__init__()
        self.delivered: asyncio.Queue[DispatchMessage] = asyncio.Queue()
        self._timers: list[asyncio.TimerHandle] = []

    async def create_task(
        self, request: tasks_v2.CreateTaskRequest, **kwargs: Any
    ) -> tasks_v2.Task:
        task = await super().create_task(request, **kwargs)
        message = DispatchMessage.model_validate_json(task.http_request.body)
        delay_s = 0.0
        if "schedule_time" in task:
            delay_s = max(task.schedule_time.timestamp() * 1000 - now_ms(), 0) / 1000
        loop = asyncio.get_running_loop()
        self._timers.append(loop.call_later(delay_s, self.delivered.put_nowait, message))
        return task

    def close(self) -> None:
        for timer in self._timers:
            timer.cancel()


class TestCloudTasksSchedulerOnAFakeThatDeduplicates(SchedulerContract):
    """The contract again, with a fake Cloud Tasks that has the name deduplication the
    emulator lacks: the adapter's collapse of a repeated key, end to end."""

    @pytest.fixture
    def fake(self) -> Iterator[DeliveringFakeCloudTasks]:
        fake = DeliveringFakeCloudTasks()
        yield fake
        fake.close()

    @pytest.fixture
    def scheduler(self, fake: DeliveringFakeCloudTasks) -> CloudTasksScheduler:
        return fake_scheduler(fake)

    @pytest.fixture
    def scheduler_capabilities(self) -> frozenset[str]:
        return frozenset({"deduplicates"})

    @pytest.fixture
    def next_delivery(self, fake: DeliveringFakeCloudTasks) -> NextDelivery:
        async def next_delivery(timeout_s: float) -> DispatchMessage | None:
            try:
                return await asyncio.wait_for(fake.delivered.get(), max(timeout_s, 0))
            except TimeoutError:
                return None

        return next_delivery


def fake_scheduler(fake: FakeCloudTasks, **kwargs: Any) -> CloudTasksScheduler:
    kwargs.setdefault("url", "https://europe-west1-proj.cloudfunctions.net/refluxo/_dispatch")
    return CloudTasksScheduler(cast(Any, fake), queue=QUEUE, **kwargs)


async def test_a_repeated_schedule_collapses_when_cloud_tasks_answers_already_exists() -> None:
    """The emulator lacks task-name deduplication, so a fake plays Cloud Tasks here.

    Scheduling the same key again (pending or already run) makes Cloud Tasks answer
    ALREADY_EXISTS for the same task name; the adapter counts that as success.
    """
    fake = FakeCloudTasks()
    scheduler = fake_scheduler(fake)
    message = DispatchMessage(run_id="run-1", version=5)
    await scheduler.schedule(message)
    await scheduler.schedule(message)
    await scheduler.schedule(message, at=now_ms() + 60_000)
    await scheduler.schedule(DispatchMessage(run_id="run-1", version=5, hop=1))
    names = [task.name for task in fake.tasks]
    assert len(names) == 4
    assert names[0] == names[1] == names[2] != names[3]
    assert len(fake.names) == 2  # two tasks exist: one per key


async def test_the_task_carries_an_oidc_token_for_the_service_account() -> None:
    """The emulator sends no OIDC token, so the token settings are checked on the Task itself."""
    fake = FakeCloudTasks()
    account = "refluxo-tasks@proj.iam.gserviceaccount.com"
    await fake_scheduler(fake, service_account=account).schedule(
        DispatchMessage(run_id="r", version=0)
    )
    token = fake.tasks[0].http_request.oidc_token
    assert token.service_account_email == account
    # By default the audience is the function's URL: the dispatch URL without "/_dispatch".
    assert token.audience == "https://europe-west1-proj.cloudfunctions.net/refluxo"
    assert "Authorization" not in fake.tasks[0].http_request.headers

    await fake_scheduler(fake, service_account=account, audience="https://custom").schedule(
        DispatchMessage(run_id="r", version=1)
    )
    assert fake.tasks[1].http_request.oidc_token.audience == "https://custom"

    await fake_scheduler(fake).schedule(DispatchMessage(run_id="r", version=2))
    assert "oidc_token" not in fake.tasks[2].http_request  # no account, no token


@pytest.mark.parametrize(
    ("url", "audience"),
    [
        ("https://svc-abc-ew.a.run.app/_dispatch", "https://svc-abc-ew.a.run.app"),
        ("https://r-p.cloudfunctions.net/fn/_dispatch/", "https://r-p.cloudfunctions.net/fn"),
        ("https://host/base/_dispatch?x=1", "https://host/base"),
        ("https://host/other", "https://host/other"),
    ],
)
def test_the_default_audience_is_the_url_the_function_is_served_at(url: str, audience: str) -> None:
    assert default_audience(url) == audience


async def test_the_task_posts_the_message_json_to_the_url() -> None:
    fake = FakeCloudTasks()
    scheduler = fake_scheduler(fake, headers={"X-Refluxo-Dispatch-Token": "t"})
    message = DispatchMessage(run_id="run-9", version=3, hop=2)
    await scheduler.schedule(message)
    request = fake.requests[0]
    assert request.parent == QUEUE
    http = request.task.http_request
    assert http.http_method == tasks_v2.HttpMethod.POST
    assert http.url == "https://europe-west1-proj.cloudfunctions.net/refluxo/_dispatch"
    assert dict(http.headers) == {
        "X-Refluxo-Dispatch-Token": "t",
        "Content-Type": "application/json",
    }
    assert DispatchMessage.model_validate_json(http.body) == message


async def test_schedule_time_is_at_to_the_millisecond_and_absent_for_now_or_the_past(
    clock: Any,
) -> None:
    fake = FakeCloudTasks()
    scheduler = fake_scheduler(fake, clock=clock)
    at = clock.now + 1_234_567
    await scheduler.schedule(DispatchMessage(run_id="r", version=0), at=at)
    await scheduler.schedule(DispatchMessage(run_id="r", version=1), at=None)
    await scheduler.schedule(DispatchMessage(run_id="r", version=2), at=clock.now - 5)
    await scheduler.schedule(DispatchMessage(run_id="r", version=3), at=clock.now)
    timed, *immediate = fake.tasks
    assert int(timed.schedule_time.timestamp() * 1000) == at
    assert timed.schedule_time.microsecond % 1000 == 0
    for task in immediate:
        assert "schedule_time" not in task


async def test_at_beyond_max_delay_is_refused_before_any_call(clock: Any) -> None:
    fake = FakeCloudTasks()
    scheduler = fake_scheduler(fake, clock=clock)
    assert scheduler.max_delay_ms == MAX_DELAY_MS <= 30 * 24 * 3600 * 1000
    await scheduler.schedule(DispatchMessage(run_id="r", version=0), at=clock.now + MAX_DELAY_MS)
    with pytest.raises(ValueError, match="maximum"):
        await scheduler.schedule(
            DispatchMessage(run_id="r", version=1), at=clock.now + MAX_DELAY_MS + 1
        )
    assert len(fake.requests) == 1


KEYS = [
    "run-1.0.0",
    "Run_2.a:b-" + "r" * 128 + ".41.3",
    ".",
    "__x__.1.0",
    "a.b.0",
    "a:b.0",
    "a_b.0",
    "a-b.0",
    "A.B.0",
    "naïve 你好/..0",
    "x" * 5000,
]


def test_task_names_are_valid_deterministic_and_distinct_per_key() -> None:
    ids = [task_id(key) for key in KEYS]
    for key, tid in zip(KEYS, ids, strict=True):
        assert TASK_ID.fullmatch(tid), (key, tid)
        assert task_id(key) == tid  # deterministic
    # Keys that sanitize to the same readable text still get different names.
    assert len(set(ids)) == len(KEYS)
    # Hash first: names of sequential run ids do not share a sequential prefix.
    assert len({task_id(f"run-{i:04d}.0.0")[:4] for i in range(50)}) > 40
    # The readable part is there for people reading the queue.
    assert ids[0].endswith("-run-1_0_0")


def test_task_name_is_under_the_queue() -> None:
    scheduler = fake_scheduler(FakeCloudTasks())
    message = DispatchMessage(run_id="run-1", version=2, hop=0)
    assert scheduler.task_name(message) == f"{QUEUE}/tasks/{task_id('run-1.2.0')}"
    # The same message gets the same name from another instance (another function instance).
    assert fake_scheduler(FakeCloudTasks()).task_name(message) == scheduler.task_name(message)


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (gexc.ServiceUnavailable("down"), True),
        (gexc.DeadlineExceeded("slow"), True),
        (gexc.ResourceExhausted("quota"), True),
        (gexc.InternalServerError("oops"), True),
        (gexc.Aborted("contention"), True),
        (gexc.PermissionDenied("no actAs on the service account"), False),
        (gexc.NotFound("no such queue"), False),
        (gexc.InvalidArgument("bad schedule_time"), False),
        (gexc.FailedPrecondition("queue disabled"), False),
        (gexc.RetryError("retries exhausted", cause=gexc.ServiceUnavailable("down")), True),
        (auth_exc.TransportError("metadata server unreachable"), True),
        (auth_exc.RefreshError("invalid_grant"), False),
    ],
)
async def test_backend_errors_become_scheduler_errors_raised_from_the_original(
    error: Exception, transient: bool
) -> None:
    scheduler = fake_scheduler(FakeCloudTasks(error=error))
    with pytest.raises(SchedulerError) as raised:
        await scheduler.schedule(DispatchMessage(run_id="r", version=0))
    assert raised.value.transient is transient
    assert raised.value.__cause__ is error


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"queue": "refluxo"}, "queue"),
        ({"url": "/_dispatch"}, "url"),
        ({"url": "ftp://host/_dispatch"}, "url"),
        ({"audience": "https://x"}, "service_account"),
        (
            {"service_account": "sa@p.iam.gserviceaccount.com", "headers": {"authorization": "x"}},
            "Authorization",
        ),
    ],
)
def test_misconfiguration_is_refused_at_construction(kwargs: dict[str, Any], match: str) -> None:
    args: dict[str, Any] = {"queue": QUEUE, "url": "https://host/_dispatch", **kwargs}
    with pytest.raises(ValueError, match=match):
        CloudTasksScheduler(cast(Any, FakeCloudTasks()), **args)


def test_importing_refluxo_gcp_loads_no_google_library() -> None:
    code = (
        "import sys\n"
        "before = set(sys.modules)\n"  # a .pth file may set up the google namespace
        "import refluxo.gcp\n"
        "loaded = [m for m in set(sys.modules) - before if m.startswith(('google', 'grpc'))]\n"
        "assert not loaded, loaded\n"
        "assert refluxo.gcp.CloudTasksScheduler.__name__ == 'CloudTasksScheduler'\n"
        "assert refluxo.gcp.FirestoreStateStore.__name__ == 'FirestoreStateStore'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
