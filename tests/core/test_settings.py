"""The settings every platform reads, the app loader, the API builder and the body reader."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from refluxo.core import MemoryScheduler, MemoryStateStore
from refluxo.core.http import HttpRequest, LimitedBody
from refluxo.core.settings import ConfigurationError, Settings, build_api, load_app


def test_settings_read_a_mapping_and_an_object_alike() -> None:
    values = {
        "REFLUXO_APP": "my.app",
        "REFLUXO_API_TOKEN": "t",
        "REFLUXO_PUBLIC_API": "true",
        "REFLUXO_GLOBALS": '{"k": 1}',
        "REFLUXO_MAX_BODY_BYTES": "1000",
        "REFLUXO_LOG_LEVEL": "debug",
        "REFLUXO_DELIVERY_BUDGET_MS": "0",
    }
    from_mapping = Settings.from_env(values)
    assert from_mapping == Settings.from_env(SimpleNamespace(**values))
    assert from_mapping == Settings(
        app="my.app",
        api_token="t",
        public_api=True,
        globals={"k": 1},
        max_body_bytes=1000,
        log_level="DEBUG",
        delivery_budget_ms=0,
    )


def test_settings_default_what_is_not_set() -> None:
    settings = Settings.from_env({"REFLUXO_APP": "a", "REFLUXO_API_TOKEN": ""})
    assert settings == Settings(app="a")
    assert (settings.api_token, settings.public_api, settings.max_body_bytes) == (
        None,
        False,
        256 * 1024,
    )


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "not set: REFLUXO_APP"),
        ({"REFLUXO_APP": "a", "REFLUXO_GLOBALS": "{"}, "REFLUXO_GLOBALS is not valid JSON"),
        ({"REFLUXO_APP": "a", "REFLUXO_MAX_BODY_BYTES": "lots"}, "must be an integer"),
        ({"REFLUXO_APP": "a", "REFLUXO_MAX_BODY_BYTES": "0"}, "between 1 and 104857600"),
        ({"REFLUXO_APP": "a", "REFLUXO_LOG_LEVEL": "LOUD"}, "REFLUXO_LOG_LEVEL"),
        ({"REFLUXO_APP": "a", "REFLUXO_DELIVERY_BUDGET_MS": "-1"}, "between 0 and 60000"),
    ],
)
def test_settings_name_what_is_wrong(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        Settings.from_env(env)


def test_a_binding_where_a_var_was_expected_is_named() -> None:
    with pytest.raises(ConfigurationError, match="REFLUXO_API_TOKEN must be a plain-text"):
        Settings.from_env(SimpleNamespace(REFLUXO_APP="a", REFLUXO_API_TOKEN=object()))


def test_load_app_wraps_what_is_not_workflows_in_a_configuration_error() -> None:
    assert [w.name for w in load_app("refluxo.demo")] == ["demo"]
    with pytest.raises(ConfigurationError, match="REFLUXO_APP"):
        load_app("refluxo.no_such_module")


async def test_build_api_wires_the_settings_into_the_api_and_dispatcher() -> None:
    store = MemoryStateStore()
    api = build_api(
        load_app("refluxo.demo"),
        store,
        MemoryScheduler(),
        Settings(api_token="s3cret", globals={"g": 1}, max_body_bytes=64),
    )
    assert api.dispatcher.store is store and api.dispatcher.globals == {"g": 1}
    assert api.max_body_bytes == 64
    assert api.dispatcher.delivery_budget_ms == 1000
    refused = await api.handle(HttpRequest("GET", "/runs/x"))
    assert refused.status == 401
    allowed = await api.handle(
        HttpRequest("GET", "/runs/x", headers={"Authorization": "Bearer s3cret"})
    )
    assert allowed.status == 404


def test_the_delivery_budget_reaches_the_dispatcher() -> None:
    settings = Settings.from_env({"REFLUXO_APP": "a", "REFLUXO_DELIVERY_BUDGET_MS": "250"})
    api = build_api(load_app("refluxo.demo"), MemoryStateStore(), MemoryScheduler(), settings)
    assert api.dispatcher.delivery_budget_ms == 250


def _read(body: LimitedBody, chunks: list[bytes]) -> Any:
    for chunk in chunks:
        if not body.add(chunk):
            break
    return body.refusal() or body.bytes()


def test_a_body_declared_over_the_limit_is_refused_before_reading() -> None:
    body = LimitedBody(10, "11")
    refused = body.refusal()
    assert refused is not None and refused.status == 413
    assert refused.json_body()["error"]["code"] == "payload_too_large"


def test_a_body_without_a_length_is_refused_once_past_the_limit() -> None:
    refused = _read(LimitedBody(10, None), [b"12345", b"67890", b"x"])
    assert refused.status == 413
    assert _read(LimitedBody(10, None), [b"12345", b"67890"]) == b"1234567890"
    assert LimitedBody(10, None).wanted == 11


def test_a_length_that_is_not_a_number_is_ignored() -> None:
    body = LimitedBody(10, "ten")
    assert body.declared is None and body.refusal() is None
