"""The Google Cloud composition root: settings from the environment, and what bootstrap() wires.

Nothing here talks to a service: the clients bootstrap() builds connect lazily, and the
requests below are refused (or rejected as malformed) before any store or queue is touched.
"""

from __future__ import annotations

import io
import os
from collections.abc import AsyncIterator
from typing import Any
from unittest import mock

import pytest

from refluxo.core import Workflow
from refluxo.core.http import DEFAULT_MAX_BODY_BYTES, HttpApi, HttpRequest
from refluxo.gcp.auth import DISPATCH_TOKEN_HEADER, OidcVerifier
from refluxo.gcp.bootstrap import ConfigurationError, GcpSettings, bootstrap, load_app
from refluxo.gcp.function import FunctionApp
from refluxo.gcp.scheduler import CloudTasksScheduler

SERVICE_ACCOUNT = "refluxo-runner@p-1.iam.gserviceaccount.com"
REQUIRED = {
    "REFLUXO_APP": "refluxo.demo",
    "REFLUXO_PROJECT": "p-1",
    "REFLUXO_LOCATION": "europe-west1",
    "REFLUXO_QUEUE": "steps",
    "REFLUXO_FUNCTION_URL": "https://europe-west1-p-1.cloudfunctions.net/refluxo/",
}


def env(**changes: str | None) -> dict[str, str]:
    """The required variables plus a dispatch credential, with ``changes`` (None: unset)."""
    values: dict[str, str | None] = {
        **REQUIRED,
        "REFLUXO_SERVICE_ACCOUNT": SERVICE_ACCOUNT,
        **changes,
    }
    return {k: v for k, v in values.items() if v is not None}


# --------------------------------------------------------------------------- #
# GcpSettings.from_env
# --------------------------------------------------------------------------- #


def test_settings_from_a_complete_environment() -> None:
    settings = GcpSettings.from_env(
        env(
            REFLUXO_COLLECTION="runs_v2",
            REFLUXO_API_TOKEN="api-secret",
            REFLUXO_GLOBALS='{"order_id": "A-9"}',
            REFLUXO_MAX_BODY_BYTES="1024",
            CLOUD_TASKS_EMULATOR_HOST="127.0.0.1:8123",
        )
    )
    assert settings == GcpSettings(
        app="refluxo.demo",
        project="p-1",
        location="europe-west1",
        queue="steps",
        function_url="https://europe-west1-p-1.cloudfunctions.net/refluxo/",
        collection="runs_v2",
        service_account=SERVICE_ACCOUNT,
        dispatch_token=None,
        api_token="api-secret",
        globals={"order_id": "A-9"},
        max_body_bytes=1024,
        tasks_emulator_host="127.0.0.1:8123",
    )
    assert settings.queue_path == "projects/p-1/locations/europe-west1/queues/steps"
    assert settings.dispatch_url == "https://europe-west1-p-1.cloudfunctions.net/refluxo/_dispatch"


def test_settings_defaults() -> None:
    settings = GcpSettings.from_env(env())
    assert settings.collection == "refluxo_runs"
    assert settings.max_body_bytes == DEFAULT_MAX_BODY_BYTES
    assert settings.globals is None and settings.api_token is None
    assert settings.tasks_emulator_host is None


def test_the_project_falls_back_to_google_cloud_project() -> None:
    settings = GcpSettings.from_env(env(REFLUXO_PROJECT=None, GOOGLE_CLOUD_PROJECT="p-2"))
    assert settings.project == "p-2"


def test_from_env_reads_the_process_environment_by_default() -> None:
    with mock.patch.dict(os.environ, env(), clear=True):
        assert GcpSettings.from_env().queue == "steps"


@pytest.mark.parametrize("name", sorted(REQUIRED))
@pytest.mark.parametrize("value", [None, ""], ids=["unset", "empty"])
def test_a_missing_variable_is_named(name: str, value: str | None) -> None:
    with pytest.raises(ConfigurationError, match=name):
        GcpSettings.from_env(env(**{name: value}))


def test_every_missing_variable_is_named_at_once() -> None:
    with pytest.raises(ConfigurationError) as caught:
        GcpSettings.from_env({"REFLUXO_DISPATCH_TOKEN": "t"})
    message = str(caught.value)
    for name in [*REQUIRED, "GOOGLE_CLOUD_PROJECT"]:
        assert name in message, message


def test_neither_service_account_nor_dispatch_token_is_an_error() -> None:
    with pytest.raises(
        ConfigurationError, match=r"REFLUXO_SERVICE_ACCOUNT.*REFLUXO_DISPATCH_TOKEN"
    ):
        GcpSettings.from_env(env(REFLUXO_SERVICE_ACCOUNT=None))
    with pytest.raises(ConfigurationError, match="REFLUXO_SERVICE_ACCOUNT"):
        GcpSettings.from_env(env(REFLUXO_SERVICE_ACCOUNT="", REFLUXO_DISPATCH_TOKEN=""))


def test_either_dispatch_credential_is_enough() -> None:
    assert GcpSettings.from_env(env()).service_account == SERVICE_ACCOUNT
    token_only = GcpSettings.from_env(
        env(REFLUXO_SERVICE_ACCOUNT=None, REFLUXO_DISPATCH_TOKEN="secret")
    )
    assert token_only.dispatch_token == "secret" and token_only.service_account is None


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("REFLUXO_GLOBALS", "{not json"),
        ("REFLUXO_MAX_BODY_BYTES", "lots"),
        ("REFLUXO_MAX_BODY_BYTES", "0"),
        ("REFLUXO_MAX_BODY_BYTES", "-5"),
    ],
)
def test_a_malformed_value_is_named(name: str, value: str) -> None:
    with pytest.raises(ConfigurationError, match=name):
        GcpSettings.from_env(env(**{name: value}))


def test_configuration_errors_are_value_errors() -> None:
    assert issubclass(ConfigurationError, ValueError)


# --------------------------------------------------------------------------- #
# load_app
# --------------------------------------------------------------------------- #


def test_load_app_finds_the_demo() -> None:
    (workflow,) = load_app("refluxo.demo")
    assert isinstance(workflow, Workflow) and workflow.name == "demo"
    assert [w.name for w in load_app("refluxo.demo:workflows")] == ["demo"]


def test_load_app_refuses_what_is_not_workflows() -> None:
    with pytest.raises(ConfigurationError, match=r"refluxo\.demo:NODES"):
        load_app("refluxo.demo:NODES")


# --------------------------------------------------------------------------- #
# bootstrap
# --------------------------------------------------------------------------- #


@pytest.fixture
async def build() -> AsyncIterator[Any]:
    """bootstrap() on the test's loop; closes the gRPC channels it opened."""
    built: list[HttpApi] = []

    def make(**changes: str | None) -> HttpApi:
        settings = GcpSettings.from_env(env(CLOUD_TASKS_EMULATOR_HOST="127.0.0.1:9", **changes))
        # The emulator variable gives Firestore anonymous credentials: no ADC lookup.
        with mock.patch.dict(os.environ, {"FIRESTORE_EMULATOR_HOST": "127.0.0.1:9"}):
            api = bootstrap(settings)
        built.append(api)
        return api

    yield make
    for api in built:
        scheduler = api.dispatcher.scheduler
        assert isinstance(scheduler, CloudTasksScheduler)
        await scheduler._client.transport.close()


def dispatch(headers: dict[str, str]) -> HttpRequest:
    # Not a DispatchMessage: once authenticated, refused with 400 before the store is read.
    return HttpRequest("POST", "/_dispatch", b'{"runId": 1}', headers)


async def test_bootstrap_with_a_service_account_wires_oidc(build: Any) -> None:
    api: HttpApi = build(REFLUXO_DISPATCH_TOKEN="also-set")
    scheduler = api.dispatcher.scheduler
    assert isinstance(scheduler, CloudTasksScheduler)
    assert scheduler.queue == "projects/p-1/locations/europe-west1/queues/steps"
    assert scheduler.url == "https://europe-west1-p-1.cloudfunctions.net/refluxo/_dispatch"
    assert scheduler.service_account == SERVICE_ACCOUNT
    assert scheduler.audience == "https://europe-west1-p-1.cloudfunctions.net/refluxo/"
    # With OIDC, the shared secret is neither sent with tasks nor accepted.
    assert DISPATCH_TOKEN_HEADER not in {k.lower() for k in scheduler.headers}
    assert isinstance(api._dispatch_auth, OidcVerifier)
    assert api._dispatch_auth.audience == scheduler.audience
    assert api._dispatch_auth.service_account == SERVICE_ACCOUNT
    response = await api.handle(dispatch({DISPATCH_TOKEN_HEADER: "also-set"}))
    assert response.status == 401
    assert [w.name for w in api.dispatcher.workflows.values()] == ["demo"]


async def test_bootstrap_with_a_dispatch_token_uses_the_shared_secret(build: Any) -> None:
    api: HttpApi = build(
        REFLUXO_SERVICE_ACCOUNT=None,
        REFLUXO_DISPATCH_TOKEN="s3cret",
        REFLUXO_GLOBALS='{"order_id": "A-9"}',
        REFLUXO_MAX_BODY_BYTES="100",
    )
    scheduler = api.dispatcher.scheduler
    assert isinstance(scheduler, CloudTasksScheduler)
    assert scheduler.service_account is None and scheduler.audience is None
    assert scheduler.headers[DISPATCH_TOKEN_HEADER] == "s3cret"
    assert api.dispatcher.globals == {"order_id": "A-9"}
    assert api.max_body_bytes == 100
    assert (await api.handle(dispatch({}))).status == 401
    assert (await api.handle(dispatch({DISPATCH_TOKEN_HEADER: "wrong"}))).status == 401
    response = await api.handle(dispatch({DISPATCH_TOKEN_HEADER: "s3cret"}))
    assert response.status == 400 and response.json_body()["error"]["code"] == "invalid_message"


async def test_bootstrap_with_an_api_token_guards_the_public_routes(build: Any) -> None:
    api: HttpApi = build(REFLUXO_API_TOKEN="api-secret")
    unknown = HttpRequest("POST", "/workflows/nope/runs", b"{}")
    assert (await api.handle(unknown)).status == 401
    authorized = HttpRequest(
        "POST", "/workflows/nope/runs", b"{}", {"Authorization": "Bearer api-secret"}
    )
    assert (await api.handle(authorized)).status == 404


# --------------------------------------------------------------------------- #
# FunctionApp's body limit
# --------------------------------------------------------------------------- #


class _Stream(io.RawIOBase):
    """A chunked body that hands out at most ``step`` bytes a read and counts what it gave."""

    def __init__(self, size: int, step: int = 100) -> None:
        self.left = size
        self.step = step
        self.given = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        n = min(self.left, self.step, size if size >= 0 else self.left)
        self.left -= n
        self.given += n
        return b"x" * n


class _Request:
    """What FunctionApp reads of a Flask request."""

    def __init__(self, body: _Stream, content_length: int | None) -> None:
        self.method = "POST"
        self.path = "/workflows/demo/runs"
        self.headers = {"Content-Type": "application/json"}
        self.content_length = content_length
        self.stream = body

    def get_data(self, cache: bool = True) -> bytes:
        chunks = []
        while chunk := self.stream.read():
            chunks.append(chunk)
        return b"".join(chunks)


class _Loop:
    def run(self, coro: Any) -> Any:
        coro.close()
        raise AssertionError("an oversize body reached the API")


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
def test_an_oversize_body_is_refused_without_reading_it_all(declared: bool) -> None:
    app = FunctionApp()
    api = mock.Mock(max_body_bytes=1000)
    stream = _Stream(10_000_000)
    with mock.patch.object(FunctionApp, "_ready", return_value=(_Loop(), api)):
        body, status, headers = app(_Request(stream, 10_000_000 if declared else None))
    assert status == 413 and b"payload_too_large" in body
    assert headers["content-type"] == "application/json"
    assert stream.given <= 1001  # nothing (declared) or one byte past the limit (chunked)


async def test_bootstrap_takes_a_store_and_scheduler_handed_in() -> None:
    from refluxo.core import MemoryScheduler, MemoryStateStore

    store, scheduler = MemoryStateStore(), MemoryScheduler()
    settings = GcpSettings.from_env(env(REFLUXO_SERVICE_ACCOUNT=None, REFLUXO_DISPATCH_TOKEN="t"))
    api = bootstrap(settings, store=store, scheduler=scheduler)
    assert api.dispatcher.store is store and api.dispatcher.scheduler is scheduler
    started = await api.handle(HttpRequest("POST", "/workflows/demo/runs", b'{"id": "r1"}'))
    assert started.status == 201 and await store.load("r1") is not None
    assert len(scheduler.pending()) == 1
