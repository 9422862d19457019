"""Secrets (``globals``): read one at a time, never inspected, masked in what a step records."""

from __future__ import annotations

import base64
import json
from typing import Any
from urllib.parse import quote

import pytest

from refluxo.core import (
    ExpressionError,
    MemoryScheduler,
    MemoryStateStore,
    NodeDefinition,
    NodeResult,
    RunService,
    Snapshot,
    Workflow,
    WorkflowEngine,
)
from refluxo.core.expressions import evaluate
from refluxo.core.nodes import Context
from refluxo.testing import run_to_end

KEY = "sk-live-123456"


async def echo(data: Any, ctx: Any, payload: Any, g: Any) -> Any:
    return data


def raising(message: Any) -> Any:
    async def executor(data: Any, ctx: Any, payload: Any, g: Any) -> Any:
        raise RuntimeError(message(g))

    return executor


async def run_one(data: Any, globals: Any, executor: Any = echo) -> Snapshot:
    engine = WorkflowEngine(
        {"nodes": [{"id": "a", "type": "t", "data": data}]}, {"t": NodeDefinition(executor)}
    )
    return await engine.execute_step(engine.create_initial_snapshot("r", "a"), globals=globals)


def leaks(snap: Snapshot, *secrets: str) -> list[str]:
    text = snap.to_json().lower()
    return [s for s in secrets if s.lower() in text]


# --- the ways the earlier redaction was bypassed, one test each ---------------------------------


async def test_the_whole_globals_mapping_cannot_be_read() -> None:
    snap = await run_one("{{ json(globals) }}", {"api_key": KEY, "db": "pg-pass"})
    assert snap.status == "failed"
    assert "read one at a time" in (snap.context["a"][0].error or "")
    assert leaks(snap, KEY, "pg-pass") == []


async def test_an_upper_cased_secret_in_an_expression_error_is_not_shown() -> None:
    snap = await run_one("{{ int(upper(globals.api_key)) }}", {"api_key": KEY})
    assert snap.status == "failed"
    assert "not inspected" in (snap.context["a"][0].error or "")
    assert leaks(snap, KEY) == []


async def test_a_computed_key_into_globals_is_refused() -> None:
    snap = await run_one("{{ globals[upper(globals.api_key)] }}", {"api_key": KEY})
    assert snap.status == "failed"
    assert "not a computed one" in (snap.context["a"][0].error or "")
    assert leaks(snap, KEY) == []


async def test_a_secret_shorter_than_four_characters_is_masked() -> None:
    snap = await run_one("x", {"pin": "q7z"}, raising(lambda g: f"pin {g['pin']} rejected"))
    assert snap.context["a"][0].error == "RuntimeError: pin *** rejected"


async def test_a_numeric_secret_is_masked_in_errors_and_outputs() -> None:
    snap = await run_one("x", {"pin": 987654}, raising(lambda g: f"pin {g['pin']} rejected"))
    assert snap.context["a"][0].error == "RuntimeError: pin *** rejected"

    async def as_number(data: Any, ctx: Any, payload: Any, g: Any) -> Any:
        return {"pin": int(g["code"]), "other": 5}

    snap = await run_one("x", {"code": "4711"}, as_number)
    assert snap.context["a"][0].output == {"pin": "***", "other": 5}


async def test_a_secret_escaped_by_repr_is_masked() -> None:
    secret = "ab\\cd'ef\n"
    snap = await run_one("x", {"k": secret}, raising(lambda g: f"bad key {g['k']!r}"))
    error = snap.context["a"][0].error or ""
    assert "ab\\\\cd" not in error and error.startswith("RuntimeError: bad key")


async def test_a_url_encoded_secret_in_an_http_error_is_masked() -> None:
    secret = "p@ss w/rd+1"
    snap = await run_one(
        "x",
        {"k": secret},
        raising(lambda g: f"GET https://api.test/v1?key={quote(g['k'], safe='')} -> 401"),
    )
    assert snap.context["a"][0].error == "RuntimeError: GET https://api.test/v1?key=*** -> 401"


async def test_a_json_escaped_secret_is_masked() -> None:
    secret = 'he said "hi" \u00e9 ok'
    snap = await run_one("x", {"k": secret}, raising(lambda g: f"body {json.dumps(g)} refused"))
    assert snap.context["a"][0].error == 'RuntimeError: body {"k": "***"} refused'


async def test_upper_and_lower_cased_secrets_are_masked() -> None:
    snap = await run_one(
        "x", {"k": KEY}, raising(lambda g: f"{g['k'].upper()} / {g['k'].lower()} / {g['k']}")
    )
    assert snap.context["a"][0].error == "RuntimeError: *** / *** / ***"


async def test_a_base64_encoded_secret_is_masked_also_inside_a_basic_credential() -> None:
    basic = base64.b64encode(f"user:{KEY}".encode()).decode()
    alone = base64.b64encode(KEY.encode()).decode()
    snap = await run_one("x", {"k": KEY}, raising(lambda g: f"Basic {basic} and {alone}"))
    error = snap.context["a"][0].error or ""
    assert alone not in error and basic not in error
    assert base64.b64encode(KEY.encode()).decode()[:8] not in error


async def test_a_secret_an_executor_echoes_is_masked_in_the_snapshot() -> None:
    snap = await run_one(
        {"auth": "Bearer {{ globals.api_key }}", "key": "{{ globals.api_key }}"}, {"api_key": KEY}
    )
    assert snap.status == "completed"
    assert snap.context["a"][0].output == {"auth": "Bearer ***", "key": "***"}


# --- secrets are passed on, never inspected -----------------------------------------------------


CTX = Context({"fetch": [NodeResult(output={"i": 0}, timestamp=1)]})
SECRETS = {"key": KEY, "db": {"password": "pg-secret", "hosts": ["h1", "h2"]}, "pin": 1234}


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("globals.key", KEY),
        ("globals['key']", KEY),
        ("'Bearer ' + globals.key", f"Bearer {KEY}"),
        ("upper(globals.key)", KEY.upper()),
        ("globals.db.password", "pg-secret"),
        ("globals.db['hosts'][1]", "h2"),
        ("json(globals.db)", json.dumps(SECRETS["db"], separators=(",", ":"))),
        ("str(globals.pin)", "1234"),
        ("[globals.key, 1]", [KEY, 1]),
        ("{'k': globals.key}", {"k": KEY}),
        ("get(globals, 'key', 'd')", KEY),
        ("get(globals, 'missing', 'd')", "d"),
        ("get(globals.db, 'password')", "pg-secret"),
    ],
)
def test_a_secret_is_read_by_name_and_passed_on(expr: str, expected: Any) -> None:
    assert evaluate(expr, CTX, SECRETS) == expected


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("globals", "one at a time"),
        ("len(globals)", "one at a time"),
        ("get(globals, 'k' + 'ey')", "not a computed one"),
        ("globals['k' + 'ey']", "not a computed one"),
        ("len(globals.key)", "len\\(\\) of a value read from globals"),
        ("globals.key == 'sk'", "comparing"),
        ("'sk' in globals.key", "comparing"),
        ("1 if globals.key else 2", "testing"),
        ("globals.key and 1", "testing"),
        ("not globals.key", "testing"),
        ("globals.key[0]", "indexing into the text"),
        ("globals.db.hosts[fetch.last.data.i]", "computed key"),
        ("'%.1s' % globals.key", "formatting"),
        ("int(globals.pin)", "int\\(\\) of"),
        ("globals.pin + 1", "arithmetic"),
        ("-globals.pin", "arithmetic"),
        ("fetch.last.data[globals.key]", "as a key"),
        ("{globals.key: 1}", "as a key"),
        ("get(fetch.last.data, globals.key)", "as a key"),
        ("len([globals.key])", "len\\(\\) of"),
        ("globals.nope", "no secret named 'nope'"),
    ],
)
def test_a_secret_cannot_be_inspected(expr: str, message: str) -> None:
    with pytest.raises(ExpressionError, match=message) as info:
        evaluate(expr, CTX, SECRETS)
    assert KEY not in str(info.value) and "1234" not in str(info.value)


# --- scope: a deployment gives each workflow only the secrets it names ------------------------


async def test_a_workflow_sees_only_the_secrets_it_lists() -> None:
    seen: list[Any] = []

    async def use(data: Any, ctx: Any, payload: Any, g: Any) -> Any:
        seen.append((data, g))
        return {"ok": True}

    definition = {
        "nodes": [
            {"id": "a", "type": "use", "data": "{{ globals.mail }}"},
            {"id": "b", "type": "use", "data": "{{ globals.billing }}"},
        ],
        "edges": [{"id": "e", "source": "a", "target": "b"}],
    }
    store = MemoryStateStore()
    scheduler = MemoryScheduler()
    wf = Workflow("mailer", definition, {"use": NodeDefinition(use)}, secrets=["mail"])
    dispatcher = RunService(
        [wf], store, scheduler, globals={"mail": "m-token", "billing": "b-token"}
    )
    await dispatcher.start("mailer", run_id="r1")
    await run_to_end(dispatcher, scheduler)
    snap = await store.load("r1")
    assert seen == [("m-token", {"mail": "m-token"})]
    assert snap.status == "failed"
    assert "no secret named 'billing'" in (snap.context["b"][0].error or "")


def test_redaction_leaves_values_without_secrets_alone() -> None:
    from refluxo.core.secrets import redactor

    value = {"a": [1, "text", None, True], "b": {"c": 2.5}}
    assert redactor({"k": KEY}).value(value) is value
    assert redactor(None).text("anything") == "anything"


async def test_executors_receive_texts_made_from_a_secret_marked_as_secret() -> None:
    from refluxo.core.secrets import Secret

    seen: list[Any] = []

    async def look(data: Any, ctx: Any, payload: Any, g: Any) -> Any:
        seen.append(data)
        return {"ok": True}

    data = {
        "auth": "Bearer {{ globals.api_key }}",
        "key": "{{ globals.api_key }}",
        "db": "{{ globals.db }}",
        "plain": "n={{ 1 + 1 }}",
        "one": "{{ 'x' }}",
    }
    await run_one(data, {"api_key": KEY, "db": {"user": "u", "port": 5432}}, look)
    (got,) = seen
    assert got == {
        "auth": f"Bearer {KEY}",
        "key": KEY,
        "db": {"user": "u", "port": 5432},
        "plain": "n=2",
        "one": "x",
    }
    assert isinstance(got["auth"], Secret) and isinstance(got["key"], Secret)
    assert isinstance(got["db"]["user"], Secret)
    assert not isinstance(got["plain"], Secret) and not isinstance(got["one"], Secret)
    assert repr(got["key"]) == "'***'" and KEY not in repr(got)
    assert type(got["key"].upper()) is str  # what the executor computes is a plain text
