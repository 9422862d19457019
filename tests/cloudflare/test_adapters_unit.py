"""refluxo.cloudflare's pure-Python parts on the host, with fakes: no Node, no Pyodide.

Error translation, the Worker's configuration, message decoding, request conversion, the
scheduler's delay arithmetic and the deploy script's commands. Everything that touches a
real binding is tested inside Pyodide (test_cloudflare_in_pyodide.py, test_worker_e2e.py).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest

from refluxo.cloudflare import D1StateStore, KVStateStore, QueuesScheduler
from refluxo.cloudflare._errors import is_transient
from refluxo.cloudflare.store import D1_SCHEMA
from refluxo.cloudflare.worker import (
    ConfigurationError,
    RefluxoWorker,
    WorkerSettings,
    configure_worker_logging,
    decode_message,
    to_http_request,
)
from refluxo.core import MemoryStateStore, RunService, SchedulerError, StoreError
from refluxo.core.http import HttpRequest, HttpResponse
from refluxo.core.model import DispatchMessage
from refluxo.demo import workflows as demo_workflows
from tests.dispatcher.longrun import loop_workflow

REPO = Path(__file__).resolve().parents[2]


class JsError(Exception):
    """What a failing binding call raises inside Pyodide (a JsException: name, message)."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name
        self.message = message


@pytest.mark.parametrize(
    ("name", "message", "transient"),
    [
        ("Error", "KV PUT failed: 429 Too Many Requests", True),
        ("Error", "KV GET failed: 503 Service Unavailable", True),
        ("Error", "D1_ERROR: Network connection lost.", True),
        ("Error", "D1_ERROR: Internal error in D1 DB storage caused object to be reset.", True),
        ("Error", "D1 DB is overloaded. Requests queued for too long.", True),
        ("Error", "Queue send failed: Too Many Requests", True),
        ("Error", "D1_ERROR: no such column: version: SQLITE_ERROR", False),
        ("Error", "KV PUT failed: 413 Value length of 26214401 exceeds limit of 26214400.", False),
        ("TypeError", "Queue send failed: message too large", False),
        ("Error", "something nobody has seen before", False),
    ],
)
def test_js_errors_are_transient_only_when_trying_again_may_help(
    name: str, message: str, transient: bool
) -> None:
    assert is_transient(JsError(name, message)) is transient


class FailingKV:
    def __init__(self, error: Exception) -> None:
        self.error = error

    async def get(self, key: str, /, **options: Any) -> Any:
        raise self.error

    async def getWithMetadata(self, key: str, /, **options: Any) -> Any:
        raise self.error

    async def put(self, key: str, value: str, /, **options: Any) -> Any:
        raise self.error


async def test_kv_failures_become_store_errors_from_the_js_error() -> None:
    error = JsError("Error", "KV GET failed: 429 Too Many Requests")
    with pytest.raises(StoreError) as raised:
        await KVStateStore(FailingKV(error)).load("run-1")
    assert raised.value.transient is True
    assert raised.value.__cause__ is error
    assert "Workers KV failed to load run 'run-1'" in str(raised.value)


def test_stores_refuse_limits_over_the_platform_s() -> None:
    with pytest.raises(ValueError, match="KV's value limit"):
        KVStateStore(FailingKV(RuntimeError()), max_bytes=26 * 1024 * 1024)
    with pytest.raises(ValueError, match="row limit"):
        D1StateStore(object(), max_bytes=2_000_001)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="table name"):
        D1StateStore(object(), table="runs; DROP TABLE x")  # type: ignore[arg-type]


class RecordingKV:
    """A dict with KV's get/getWithMetadata/put: a fake for host tests of key layout only.

    Real KV (Miniflare's) runs the store's contract suite inside Pyodide (contracts.py).
    """

    def __init__(self) -> None:
        self.data: dict[str, tuple[str, Any]] = {}

    async def get(self, key: str, /, **options: Any) -> Any:
        found = self.data.get(key)
        return None if found is None else found[0]

    async def getWithMetadata(self, key: str, /, **options: Any) -> Any:
        value, metadata = self.data.get(key, (None, None))
        return {"value": value, "metadata": metadata}

    async def put(self, key: str, value: str, /, **options: Any) -> None:
        self.data[key] = (value, options.get("metadata"))


class RecordingQueue:
    def __init__(self, error: Exception | None = None) -> None:
        self.sent: list[tuple[Any, dict[str, Any]]] = []
        self.error = error

    async def send(self, body: Any, /, **options: Any) -> None:
        if self.error is not None:
            raise self.error
        self.sent.append((body, options))


@pytest.mark.parametrize(
    ("ahead_ms", "options"),
    [
        (None, {}),
        (-5000, {}),
        (0, {}),
        (1, {"delaySeconds": 1}),
        (1000, {"delaySeconds": 1}),
        (1001, {"delaySeconds": 2}),
        (24 * 3600 * 1000, {"delaySeconds": 86400}),
    ],
)
async def test_queues_scheduler_rounds_delays_up_to_whole_seconds(
    ahead_ms: int | None, options: dict[str, Any]
) -> None:
    queue = RecordingQueue()
    scheduler = QueuesScheduler(queue, clock=lambda: 1_000_000)
    at = None if ahead_ms is None else 1_000_000 + ahead_ms
    await scheduler.schedule(DispatchMessage(run_id="r", version=2, hop=1), at=at)
    assert queue.sent == [({"runId": "r", "version": 2, "hop": 1}, options)]


async def test_queues_scheduler_refuses_more_than_24_hours_and_translates_errors() -> None:
    scheduler = QueuesScheduler(RecordingQueue(), clock=lambda: 0)
    assert scheduler.max_delay_ms == 24 * 3600 * 1000
    with pytest.raises(ValueError, match="86400"):
        await scheduler.schedule(DispatchMessage(run_id="r", version=0), at=86_400_001)
    failing = QueuesScheduler(RecordingQueue(JsError("Error", "Queue send failed: 500 Internal")))
    with pytest.raises(SchedulerError) as raised:
        await failing.schedule(DispatchMessage(run_id="r", version=0))
    assert raised.value.transient is True


def test_worker_settings_come_from_vars_with_defaults() -> None:
    settings = WorkerSettings.from_env(SimpleNamespace(REFLUXO_APP="refluxo.demo"))
    assert (settings.store, settings.d1_binding, settings.queue_binding) == ("d1", "DB", "STEPS")
    assert settings.api_token is None and settings.globals is None
    env = SimpleNamespace(
        REFLUXO_APP="my.app",
        REFLUXO_STORE="KV",
        REFLUXO_API_TOKEN="t",
        REFLUXO_GLOBALS='{"k": 1}',
        REFLUXO_MAX_BODY_BYTES="1000",
        REFLUXO_RETRY_MAX_SECONDS="60",
        REFLUXO_DEAD_LETTER_QUEUE="steps-dlq",
        REFLUXO_RECONCILE_GRACE_SECONDS="600",
        REFLUXO_RECONCILE_LIMIT="50",
    )
    settings = WorkerSettings.from_env(env)
    assert (settings.store, settings.api_token, settings.globals) == ("kv", "t", {"k": 1})
    assert (settings.max_body_bytes, settings.retry_max_seconds) == (1000, 60)
    assert settings.dead_letter_queue == "steps-dlq"
    assert (settings.reconcile_grace_seconds, settings.reconcile_limit) == (600, 50)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "REFLUXO_APP"),
        ({"REFLUXO_APP": "a", "REFLUXO_STORE": "redis"}, "REFLUXO_STORE"),
        ({"REFLUXO_APP": "a", "REFLUXO_GLOBALS": "{"}, "REFLUXO_GLOBALS"),
        ({"REFLUXO_APP": "a", "REFLUXO_MAX_BODY_BYTES": "lots"}, "REFLUXO_MAX_BODY_BYTES"),
        ({"REFLUXO_APP": "a", "REFLUXO_RETRY_MAX_SECONDS": "99999"}, "between 0 and 86400"),
        ({"REFLUXO_APP": "a", "REFLUXO_RECONCILE_LIMIT": "0"}, "REFLUXO_RECONCILE_LIMIT"),
        ({"REFLUXO_APP": "a", "REFLUXO_RECONCILE_GRACE_SECONDS": "-1"}, "RECONCILE_GRACE"),
    ],
)
def test_worker_settings_name_what_is_wrong(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        WorkerSettings.from_env(SimpleNamespace(**env))


def test_a_missing_binding_is_named() -> None:
    with pytest.raises(ConfigurationError, match="D1 database binding named 'DB'"):
        RefluxoWorker.from_env(SimpleNamespace(REFLUXO_APP="refluxo.demo", STEPS=object()))


@pytest.mark.parametrize(
    "body",
    [
        {"runId": "r", "version": 3, "hop": 1},
        '{"runId": "r", "version": 3, "hop": 1}',
        b'{"runId": "r", "version": 3, "hop": 1}',
    ],
)
def test_decode_message_takes_objects_text_and_bytes(body: Any) -> None:
    assert decode_message(body) == DispatchMessage(run_id="r", version=3, hop=1)


@pytest.mark.parametrize("body", [{"runId": "r"}, "{not json", 42, None, ["r", 1]])
def test_decode_message_refuses_what_is_not_a_dispatch_message(body: Any) -> None:
    with pytest.raises(ValueError, match="not a dispatch message"):
        decode_message(body)


def test_backoff_doubles_from_the_base_up_to_the_cap() -> None:
    dispatcher = RunService([], MemoryStateStore(), QueuesScheduler(RecordingQueue()))
    worker = RefluxoWorker(
        dispatcher, WorkerSettings(app="x", retry_base_seconds=1, retry_max_seconds=20)
    )
    assert [worker.backoff_seconds(a, transient=True) for a in range(1, 8)] == [
        1,
        2,
        4,
        8,
        16,
        20,
        20,
    ]
    assert worker.backoff_seconds(1, transient=False) == 20
    assert worker.backoff_seconds(10_000, transient=True) == 20


class FakeRequest:
    def __init__(self, method: str, url: str, headers: dict[str, str], body: bytes) -> None:
        self.method = method
        self.url = url
        self.headers = headers
        self._body = body
        self.read = False

    async def bytes(self) -> bytes:
        self.read = True
        return self._body


async def test_requests_convert_with_path_query_headers_and_body() -> None:
    req = FakeRequest(
        "post", "https://w.example/runs/r1/events?x=1", {"X-A": "b", "Content-Length": "2"}, b"{}"
    )
    converted = await to_http_request(req, 100)
    assert not isinstance(converted, HttpResponse)
    assert (converted.method, converted.path, converted.body) == (
        "POST",
        "/runs/r1/events?x=1",
        b"{}",
    )
    assert converted.header("x-a") == "b"


async def test_a_body_over_the_limit_is_refused_by_its_content_length_unread() -> None:
    req = FakeRequest(
        "POST", "https://w.example/workflows/demo/runs", {"Content-Length": "101"}, b""
    )
    answer = await to_http_request(req, 100)
    assert isinstance(answer, HttpResponse) and answer.status == 413
    assert answer.json_body()["error"]["code"] == "payload_too_large"
    assert req.read is False


class FakeStream:
    """A ReadableStream's reader protocol over chunks, counting what was read (a fake: the
    Node harness's requests carry a Content-Length)."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = list(chunks)
        self.read_chunks = 0
        self.cancelled = False

    def getReader(self) -> FakeStream:
        return self

    async def read(self) -> Any:
        if not self.chunks:
            return SimpleNamespace(done=True, value=None)
        self.read_chunks += 1
        return SimpleNamespace(done=False, value=self.chunks.pop(0))

    async def cancel(self) -> None:
        self.cancelled = True


async def test_a_chunked_body_is_read_only_up_to_the_limit() -> None:
    stream = FakeStream([b"x" * 64] * 1000)  # 64,000 bytes, no Content-Length
    req = FakeRequest("POST", "https://w.example/workflows/demo/runs", {}, b"")
    req.body = stream  # type: ignore[attr-defined]
    answer = await to_http_request(req, 100)
    assert isinstance(answer, HttpResponse) and answer.status == 413
    assert stream.read_chunks == 2 and stream.cancelled and req.read is False


async def test_a_chunked_body_under_the_limit_is_read_whole() -> None:
    req = FakeRequest("POST", "https://w.example/workflows/demo/runs", {}, b"")
    req.body = FakeStream([b'{"id"', b': "c-1"}'])  # type: ignore[attr-defined]
    converted = await to_http_request(req, 100)
    assert isinstance(converted, HttpRequest) and converted.body == b'{"id": "c-1"}'


def test_importing_the_adapter_needs_no_runtime_module() -> None:
    code = (
        "import sys, json; before = set(sys.modules); import refluxo.cloudflare, "
        "refluxo.cloudflare.worker; print(json.dumps(sorted(set(sys.modules) - before)))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    loaded = {name.split(".")[0] for name in json.loads(out.stdout)}
    allowed = {
        "refluxo",
        "pydantic",
        "pydantic_core",
        "typing_extensions",
        "annotated_types",
        "typing_inspection",
    }
    third_party = {m for m in loaded if m not in sys.stdlib_module_names and not m.startswith("_")}
    assert third_party <= allowed, third_party - allowed


def test_a_cold_worker_does_not_import_what_its_first_request_does_not_need() -> None:
    # The Worker's entry imports the adapter and the app at start-up: schedules (cron
    # parsing), the memory adapters and the html escapes of secrets wait until used.
    code = (
        "import sys, json; import refluxo.cloudflare.worker, refluxo.demo; "
        "print(json.dumps(sorted(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    loaded = set(json.loads(out.stdout))
    assert {"refluxo.core.dispatcher", "refluxo.cloudflare.store"} <= loaded
    assert not loaded & {"refluxo.core.schedules", "refluxo.core.memory", "html.entities"}
    assert "refluxo.cloudflare.delivery" not in loaded  # KV's alone, loaded when KV is chosen


# --------------------------------------------------------------------------- deploy.py


@pytest.fixture(scope="module")
def deploy() -> Iterator[ModuleType]:
    spec = importlib.util.spec_from_file_location("cf_deploy", REPO / "deploy/cloudflare/deploy.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look themselves up there
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[spec.name]


def test_deploy_creates_the_same_schema_as_the_store(deploy: ModuleType) -> None:
    def normal(sql: str) -> str:
        return re.sub(r"\s*([(),;])\s*", r"\1", " ".join(sql.split()))

    ours = "; ".join(s.format(table="refluxo_runs") for s in D1_SCHEMA)
    assert normal(deploy.d1_schema_sql()) == normal(ours)


def test_deploy_dry_run_prints_every_command_and_runs_none(
    deploy: ModuleType,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("REFLUXO_API_TOKEN", "t0ken")
    deploy.main(["--create", "--dry-run", "--out", str(tmp_path / "b"), "--name", "wf"])
    commands = [line[2:] for line in capsys.readouterr().out.splitlines() if line.startswith("+ ")]
    assert commands[:4] == [
        "npx wrangler queues info refluxo-steps",
        "npx wrangler queues create refluxo-steps",
        "npx wrangler queues info refluxo-steps-dlq",
        "npx wrangler queues create refluxo-steps-dlq",
    ]
    assert "npx wrangler d1 create refluxo" in commands
    assert any(c.startswith("npx wrangler d1 execute refluxo --remote --command") for c in commands)
    assert f"(cd {tmp_path / 'b'} && uv run pywrangler deploy)" in commands
    assert commands[-1].startswith("npx wrangler secret put REFLUXO_API_TOKEN --name wf")
    assert 'database_id = "<D1_DATABASE_ID>"' in (tmp_path / "b" / "wrangler.toml").read_text()


def test_deploy_bundles_an_app_of_your_own(deploy: ModuleType, tmp_path: Path) -> None:
    app = tmp_path / "shop"
    app.mkdir()
    (app / "__init__.py").write_text("def workflows():\n    return []\n")
    out = tmp_path / "bundle"
    deploy.main(["--build-only", "--out", str(out), "--app", "shop", "--app-src", str(app)])
    assert (out / "src" / "shop" / "__init__.py").is_file()
    assert not (out / "src" / "refluxo" / "demo").exists()
    text = (out / "wrangler.toml").read_text()
    assert 'REFLUXO_APP = "shop"' in text and "REFLUXO_GLOBALS" not in text


def test_worker_logs_are_json_lines_info_on_stdout_warnings_on_stderr(
    capsys: pytest.CaptureFixture[str],
) -> None:
    root = logging.getLogger("refluxo")
    level, propagate = root.level, root.propagate
    configure_worker_logging("INFO")
    try:
        logging.getLogger("refluxo.steps").info("step", extra={"refluxo": {"run": "r1"}})
        logging.getLogger("refluxo.steps").warning("retry")
        logging.getLogger("refluxo.steps").debug("hidden")
    finally:
        for handler in [h for h in root.handlers if getattr(h, "_refluxo", False)]:
            root.removeHandler(handler)
        root.setLevel(level)
        root.propagate = propagate
    out, err = capsys.readouterr()
    assert [json.loads(line)["message"] for line in out.splitlines()] == ["step"]
    assert json.loads(out)["run"] == "r1"
    assert [json.loads(line)["severity"] for line in err.splitlines()] == ["WARNING"]


def test_workflows_that_archive_results_cannot_run_on_kv() -> None:
    env = SimpleNamespace(REFLUXO_APP="x", REFLUXO_STORE="kv", STATE=object(), STEPS=object())
    archiving = loop_workflow(3, retention=2, archive=True)
    with pytest.raises(ConfigurationError, match="KVStateStore keeps no archive"):
        RefluxoWorker.from_env(env, workflows=[archiving])
    env.REFLUXO_STORE = "d1"
    env.DB = object()
    assert RefluxoWorker.from_env(env, workflows=[archiving]).settings.store == "d1"


# --------------------------------------------------------------------------- open by default


def test_deploy_refuses_without_a_token_unless_the_api_is_declared_public(
    deploy: ModuleType,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("REFLUXO_API_TOKEN", raising=False)
    out = tmp_path / "b"
    with pytest.raises(SystemExit, match="--public-api"):
        deploy.main(["--dry-run", "--out", str(out)])
    assert "pywrangler deploy" not in capsys.readouterr().out
    deploy.main(["--dry-run", "--public-api", "--out", str(out)])
    commands = capsys.readouterr().out
    assert "pywrangler deploy" in commands and "secret put" not in commands
    text = (out / "wrangler.toml").read_text()
    assert 'REFLUXO_PUBLIC_API = "1"' in text


def worker(**settings: Any) -> RefluxoWorker:
    dispatcher = RunService(demo_workflows(), MemoryStateStore(), QueuesScheduler(RecordingQueue()))
    return RefluxoWorker(dispatcher, WorkerSettings(app="refluxo.demo", **settings))


def public_request(method: str, path: str, body: bytes = b"", **headers: str) -> FakeRequest:
    return FakeRequest(method, f"https://w.example{path}", headers, body)


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/workflows/demo/runs"), ("GET", "/runs/r"), ("POST", "/runs/r/cancel")],
)
async def test_a_worker_without_a_token_refuses_the_public_routes(method: str, path: str) -> None:
    answer = await worker().answer(public_request(method, path, b"{}"))
    assert answer.status == 403
    assert answer.json_body()["error"]["code"] == "api_not_configured"


async def test_a_worker_without_a_token_still_answers_health() -> None:
    assert (await worker().answer(public_request("GET", "/healthz"))).status == 200


async def test_a_worker_serves_a_public_api_only_when_told_to() -> None:
    env = SimpleNamespace(REFLUXO_APP="refluxo.demo", REFLUXO_PUBLIC_API="1")
    assert WorkerSettings.from_env(env).public_api is True
    answer = await worker(public_api=True).answer(
        public_request("POST", "/workflows/demo/runs", b'{"id": "p-1"}')
    )
    assert answer.status == 201


async def test_a_worker_with_a_token_requires_it() -> None:
    guarded = worker(api_token="t0ken")
    request = public_request("POST", "/workflows/demo/runs", b"{}")
    assert (await guarded.answer(request)).status == 401
    ok = public_request("POST", "/workflows/demo/runs", b"{}", Authorization="Bearer t0ken")
    assert (await guarded.answer(ok)).status == 201


# --------------------------------------------------------------------------- KV prefixes


@pytest.mark.parametrize("prefix", ["run:staging:", "t1:", "", "run", "a\n/", "run:/x"])
def test_kv_prefixes_that_could_overlap_are_refused(prefix: str) -> None:
    with pytest.raises(ValueError, match="KV prefix"):
        KVStateStore(RecordingKV(), prefix=prefix)


def test_kv_prefix_var_is_checked_when_the_worker_starts() -> None:
    env = SimpleNamespace(
        REFLUXO_APP="refluxo.demo",
        REFLUXO_STORE="kv",
        REFLUXO_KV_PREFIX="run:staging:",
        STATE=RecordingKV(),
        STEPS=RecordingQueue(),
    )
    with pytest.raises(ConfigurationError, match="KV prefix"):
        RefluxoWorker.from_env(env)


async def test_two_deployments_with_nested_prefixes_cannot_read_each_other() -> None:
    kv = RecordingKV()
    prod = KVStateStore(kv, prefix="run/")
    staging = KVStateStore(kv, prefix="run/staging/")
    from refluxo.core import RunNotFound, Snapshot

    await staging.create(Snapshot(run_id="x", status="active", current_node_id=None))
    assert (await staging.load("x")).run_id == "x"
    with pytest.raises(RunNotFound):
        await prod.load("staging/x")  # the key staging keeps run x under
    assert KVStateStore(kv, prefix="run:").prefix == "run:"  # the former default still loads


async def test_kv_metadata_stays_within_kv_s_1024_bytes_whatever_the_run_holds() -> None:
    import json

    from refluxo.core.model import Snapshot

    kv = RecordingKV()
    store = KVStateStore(kv, prefix="m/")  # type: ignore[arg-type]
    run = Snapshot.model_validate(
        {
            "workflowId": "big",
            "status": "failed",
            "currentNodeId": "\x01" * 200,
            "definition": {"name": "w" * 64, "hash": "0123456789abcdef"},
            "metadata": {"failedReason": "你\x02" * 500},
        }
    )
    assert await store.create(run)
    metadata = kv.data["m/big"][1]
    assert len(json.dumps(metadata).encode()) <= 1024
    assert metadata["s"] == "failed" and metadata["f"].startswith("你")


def test_the_d1_driver_implements_the_sql_driver_protocol() -> None:
    from refluxo.cloudflare.store import D1Driver
    from refluxo.core.sql import SqlDriver

    assert isinstance(D1Driver(object()), SqlDriver)  # type: ignore[arg-type]


def test_the_worker_takes_a_store_and_scheduler_handed_in() -> None:
    from refluxo.core import MemoryScheduler

    store, scheduler = MemoryStateStore(), MemoryScheduler()
    # No binding at all: nothing is looked up when both are handed in.
    worker = RefluxoWorker.from_env(
        SimpleNamespace(REFLUXO_APP="refluxo.demo"), store=store, scheduler=scheduler
    )
    assert worker.dispatcher.store is store and worker.dispatcher.scheduler is scheduler
    assert worker.api.dispatcher is worker.dispatcher


class _QueueMessage:
    """A queue message as the SDK hands it over (a fake: no queue runs in this test)."""

    def __init__(self, body: Any, attempts: int = 1) -> None:
        self.id, self.body, self.attempts = "m-1", body, attempts
        self.calls: list[tuple[str, Any]] = []

    def ack(self) -> None:
        self.calls.append(("ack", None))

    def retry(self, *, delaySeconds: int) -> None:
        self.calls.append(("retry", delaySeconds))


async def test_a_delivery_that_raises_is_retried_after_the_longest_delay_with_its_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    broken = worker(retry_base_seconds=1, retry_max_seconds=40)

    async def explode(message: DispatchMessage) -> Any:
        raise RuntimeError("a bug in the step")

    broken.dispatcher.dispatch = explode  # type: ignore[method-assign]
    message = _QueueMessage({"runId": "r", "version": 0}, attempts=2)
    with caplog.at_level(logging.ERROR, logger="refluxo.cloudflare"):
        assert await broken.handle_message(message) == "retry"
    assert message.calls == [("retry", 40)]
    [record] = [r for r in caplog.records if "raised" in r.getMessage()]
    assert record.exc_info is not None and "a bug in the step" in str(record.exc_info[1])


async def test_a_transient_backend_failure_is_retried_with_backoff() -> None:
    busy = worker(retry_base_seconds=1, retry_max_seconds=40)

    async def unavailable(message: DispatchMessage) -> Any:
        raise StoreError("D1 reset", transient=True)

    busy.dispatcher.dispatch = unavailable  # type: ignore[method-assign]
    message = _QueueMessage({"runId": "r", "version": 0}, attempts=3)
    assert await busy.handle_message(message) == "retry"
    assert message.calls == [("retry", 4)]
    malformed = _QueueMessage("{not json")
    assert await busy.handle_message(malformed) == "ack"
    assert malformed.calls == [("ack", None)]


# ------------------------------------------------------------- KV: one write per delivery


class CountingKV(RecordingKV):
    """RecordingKV counting its puts, and able to let another writer in mid-delivery."""

    def __init__(self) -> None:
        super().__init__()
        self.puts: list[str] = []

    async def put(self, key: str, value: str, /, **options: Any) -> None:
        self.puts.append(key)
        await super().put(key, value, **options)


def kv_worker(kv: CountingKV, queue: RecordingQueue, budget_ms: int) -> RefluxoWorker:
    env = SimpleNamespace(
        REFLUXO_APP="refluxo.demo",
        REFLUXO_STORE="kv",
        REFLUXO_DELIVERY_BUDGET_MS=str(budget_ms),
        STATE=kv,
        STEPS=queue,
    )
    return RefluxoWorker.from_env(env, workflows=[loop_workflow(5)])


async def deliver_all(worker: RefluxoWorker, queue: RecordingQueue) -> list[str]:
    decisions = []
    while queue.sent:
        body, _ = queue.sent.pop(0)
        decisions.append(await worker.handle_message(_QueueMessage(body)))
    return decisions


async def test_on_kv_a_delivery_that_chains_steps_writes_the_run_once() -> None:
    kv, queue = CountingKV(), RecordingQueue()
    worker = kv_worker(kv, queue, budget_ms=60_000)
    await worker.dispatcher.start("loop", run_id="fast")
    assert kv.puts == ["run:fast"]  # the start
    assert await deliver_all(worker, queue) == ["ack"]  # every step in one delivery
    done = await worker.dispatcher.get("fast")
    assert done.status == "completed" and len(done.context["tick"]) == 5
    assert kv.puts == ["run:fast", "run:fast"]  # and one write for all of them


async def test_on_kv_without_a_budget_each_delivery_writes_its_one_step() -> None:
    kv, queue = CountingKV(), RecordingQueue()
    worker = kv_worker(kv, queue, budget_ms=0)
    await worker.dispatcher.start("loop", run_id="slow")
    decisions = await deliver_all(worker, queue)
    done = await worker.dispatcher.get("slow")
    assert done.status == "completed"
    assert len(kv.puts) == 1 + len(decisions)  # the start, then one write per delivery


async def test_on_kv_a_run_changed_during_a_delivery_keeps_the_change_and_is_redelivered() -> None:
    kv, queue = CountingKV(), RecordingQueue()
    worker = kv_worker(kv, queue, budget_ms=60_000)
    await worker.dispatcher.start("loop", run_id="raced")
    [(body, _)] = queue.sent
    queue.sent.clear()
    held = worker.held
    assert held is not None
    real_save = held.kv.save

    async def event_lands_first(snapshot: Any, *, expected_version: int) -> None:
        # Another invocation adds an event to the run just before this delivery writes.
        stored = await held.kv.load("raced")
        await real_save(stored.model_copy(update={"version": stored.version + 1}),
                        expected_version=stored.version)  # fmt: skip
        await real_save(snapshot, expected_version=expected_version)

    held.kv.save = event_lands_first  # type: ignore[method-assign]
    message = _QueueMessage(body)
    assert await worker.handle_message(message) == "retry"
    assert [call for call, _ in message.calls] == ["retry"]
    assert queue.sent == []  # nothing the delivery scheduled was sent
    stored = await held.kv.load("raced")
    assert stored.status == "active" and "tick" not in stored.context  # its steps not written


async def test_on_kv_a_child_made_in_a_delivery_is_delivered_though_its_parent_lost() -> None:
    from refluxo.cloudflare.delivery import HeldWrites
    from refluxo.core.model import Snapshot

    kv, queue = CountingKV(), RecordingQueue()
    store = KVStateStore(kv)
    held = HeldWrites(store, QueuesScheduler(queue))

    def snapshot(run_id: str, version: int) -> Snapshot:
        return Snapshot.model_validate(
            {"workflowId": run_id, "status": "active", "currentNodeId": "a", "version": version}
        )

    await store.create(snapshot("parent", 0))
    with pytest.raises(StoreError, match="changed in KV") as raised:
        async with held.delivery():
            parent = await held.store.load("parent")
            await held.store.save(snapshot("parent", 1), expected_version=parent.version)
            await held.scheduler.schedule(DispatchMessage(run_id="parent", version=1))
            assert await held.store.create(snapshot("child", 0))  # written at once
            await held.scheduler.schedule(DispatchMessage(run_id="child", version=0))
            await store.save(snapshot("parent", 1), expected_version=0)  # an event lands
    assert raised.value.transient
    assert [body["runId"] for body, _ in queue.sent] == ["child"]


async def test_on_kv_an_event_sent_during_a_delivery_joins_the_run_with_the_delivery_s_steps() -> (
    None
):
    import asyncio
    import contextvars

    kv, queue = CountingKV(), RecordingQueue()
    worker = kv_worker(kv, queue, budget_ms=60_000)
    await worker.dispatcher.start("loop", run_id="busy")
    [(body, _)] = queue.sent
    queue.sent.clear()
    held = worker.held
    assert held is not None
    real_save = held.kv.save
    sent: list[bool] = []

    async def event_lands_first(snapshot: Any, *, expected_version: int) -> None:
        if not sent:
            sent.append(True)
            # Another request the isolate serves meanwhile: a task of its own, outside the
            # delivery, so its event is written at once, not held with the delivery's steps.
            request = worker.dispatcher.send_event("busy", {"n": 1}, "ping")
            await asyncio.create_task(request, context=contextvars.Context())
            assert [e.payload for e in (await held.kv.load("busy")).inbox or []] == [{"n": 1}]
        await real_save(snapshot, expected_version=expected_version)

    held.kv.save = event_lands_first  # type: ignore[method-assign]
    assert await worker.handle_message(_QueueMessage(body)) == "ack"  # not delivered again
    stored = await held.kv.load("busy")
    assert stored.status == "completed" and len(stored.context["tick"]) == 5
    assert [e.payload for e in stored.inbox or []] == [{"n": 1}]  # the event is kept


async def test_on_kv_what_a_delivery_scheduled_names_the_version_written_with_new_events() -> None:
    from refluxo.cloudflare.delivery import HeldWrites
    from refluxo.core.model import Event, Snapshot

    kv, queue = CountingKV(), RecordingQueue()
    store = KVStateStore(kv)
    held = HeldWrites(store, QueuesScheduler(queue))
    start = Snapshot.model_validate(
        {"workflowId": "r", "status": "active", "currentNodeId": "a", "version": 0}
    )
    await store.create(start)
    async with held.delivery():
        loaded = await held.store.load("r")
        await held.store.save(loaded.model_copy(update={"version": 1}), expected_version=0)
        await held.scheduler.schedule(DispatchMessage(run_id="r", version=1))
        # An event lands (version 1, step version still 0), written by another request.
        event = Event(payload="hi", received_at=1)
        await store.save(
            start.model_copy(update={"version": 1, "step_version": 0, "inbox": [event]}),
            expected_version=0,
        )
    stored = await store.load("r")
    assert stored.version == 2 and [e.payload for e in stored.inbox or []] == ["hi"]
    assert [body["version"] for body, _ in queue.sent] == [2]
