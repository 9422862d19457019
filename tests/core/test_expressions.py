"""The `{{ ... }}` evaluator: what it reads, and what it refuses."""

from __future__ import annotations

from typing import Any

import pytest

from refluxo.core import ExpressionError, NodeResult
from refluxo.core.expressions import evaluate, resolve
from refluxo.core.nodes import Context

CTX = Context(
    {
        "fetch": [
            NodeResult(output={"name": "Ada", "n": 2}, timestamp=1, attempt=1),
            NodeResult(output={"name": "Grace", "n": 5, "items": [1, 2, 3]}, timestamp=2),
        ],
        "my-node": [NodeResult(output="dash", timestamp=3)],
    },
    counts={"fetch": 9},
)


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("fetch.last.data.name", "Grace"),
        ("fetch.first.data.name", "Ada"),
        ("fetch.last.data['name']", "Grace"),
        ("fetch.last.data.items[1]", 2),
        ("fetch.all", [{"name": "Ada", "n": 2}, {"name": "Grace", "n": 5, "items": [1, 2, 3]}]),
        ("fetch.count", 9),
        ("fetch.last.attempt", 1),
        ("nodes['my-node'].last.data", "dash"),
        ("fetch", {"name": "Grace", "n": 5, "items": [1, 2, 3]}),
        ("fetch.last.data.n * 2 + 1", 11),
        ("fetch.last.data.n > 3 and fetch.first.data.n < 3", True),
        ("'big' if fetch.last.data.n > 3 else 'small'", "big"),
        ("len(fetch.all)", 2),
        ("upper(fetch.last.data.name)", "GRACE"),
        ("globals.region", "eu"),
        ("[fetch.last.data.n, 1]", [5, 1]),
        ("{'k': fetch.first.data.n}", {"k": 2}),
        ("'a' in 'cat'", True),
        ("None", None),
        ("get(globals, 'region', 'us')", "eu"),
        ("get(globals, 'zone', 'z1')", "z1"),
        ("get(fetch.last.data, 'n')", 5),
    ],
)
def test_expressions_read_results_and_globals(expr: str, expected: Any) -> None:
    assert evaluate(expr, CTX, {"region": "eu"}) == expected


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("fetch.__class__", "'_'"),
        ("fetch.last.data.__class__", "'_'"),
        ("globals['__builtins__']", "'__'"),
        ("__import__('os').system('true')", "not allowed"),
        ("open('/etc/passwd')", "not allowed"),
        ("(lambda: 1)()", "not allowed"),
        ("[x for x in fetch.all]", "not allowed"),
        ("'a' * 10**9", "not allowed"),
        ("fetch.last.data.name.upper()", "not allowed"),
        ("missing.last", "unknown name 'missing'"),
        ("fetch.last.data.nope", "no key 'nope'"),
        ("fetch.last.data.items[10]", "out of range"),
        ("fetch.newest", "not 'newest'"),
        ("fetch.last +", "invalid expression"),
        ("1 / 0", "division by zero"),
        ("x" * 1001, "longer than"),
    ],
)
def test_anything_outside_the_allow_list_is_refused(expr: str, message: str) -> None:
    with pytest.raises(ExpressionError, match=message):
        evaluate(expr, CTX, {})


def test_resolve_walks_structures_and_keeps_types_of_whole_expressions() -> None:
    data = {
        "n": "{{ fetch.last.data.n }}",
        "s": "n={{ fetch.last.data.n }} of {{ fetch.count }}",
        "obj": "x {{ fetch.first.data }}",
        "plain": "no braces",
        "list": ["{{ fetch.first.data.name }}", 3, None],
    }
    assert resolve(data, CTX, {}) == {
        "n": 5,
        "s": "n=5 of 9",
        "obj": 'x {"name":"Ada","n":2}',
        "plain": "no braces",
        "list": ["Ada", 3, None],
    }
