"""The `{{ ... }}` evaluator: what it reads, and what it refuses."""

from __future__ import annotations

from typing import Any

import pytest

from refluxo.core import ExpressionError, NodeResult
from refluxo.core.expressions import ExpressionLimits, ExpressionTransform, evaluate, resolve
from refluxo.core.nodes import Context

CTX = Context(
    {
        "fetch": [
            NodeResult(output={"name": "Ada", "n": 2}, timestamp=1, attempt=1),
            NodeResult(output={"name": "Grace", "n": 5, "items": [1, 2, 3]}, timestamp=2),
        ],
        "my-node": [NodeResult(output="dash", timestamp=3)],
    },
)
TRIMMED = Context(
    {"fetch": [NodeResult(output={"n": 8}, timestamp=8), NodeResult(output={"n": 9}, timestamp=9)]},
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
        ("fetch.count", 2),
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


def test_count_and_last_read_past_results_that_retention_trimmed() -> None:
    assert evaluate("fetch.count", TRIMMED) == 9
    assert evaluate("fetch.last.data.n", TRIMMED) == 9


@pytest.mark.parametrize("expr", ["fetch.all", "fetch.first.data.n", "len(fetch.all)"])
def test_first_and_all_refuse_once_retention_trimmed_results(expr: str) -> None:
    with pytest.raises(ExpressionError, match=r"produced 9 results .* keeps the newest 2"):
        evaluate(expr, TRIMMED)


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
        "s": "n=5 of 2",
        "obj": 'x {"name":"Ada","n":2}',
        "plain": "no braces",
        "list": ["Ada", 3, None],
    }


# --- bounds: every step costs a bounded amount, checked before it is computed ----------------


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        # the attacks: each would freeze the process or allocate hundreds of megabytes
        ("round(1, -100000000)", "ndigits between"),
        ("'%400000000s' % ''", "widths and precisions up to"),
        ("b'x' * 100000000 * 2", "bytes literals are not allowed"),
        ("'x' * 100000000 * 2", "repeating"),
        ("[1] * 100000000", "repeating"),
        ("'%*s' % [400000000, '']", "'*' widths"),
        ("'%.400000000f' % 1.5", "widths and precisions up to"),
        ("'%(a)s' % {'a': 1}" + " + '%(a)s' % {'a': 1}" * 2, ""),
        ("int('9' * 2)", "repeating"),
        ("sum(['a', 'b'], '')", "adds numbers only"),
        ("1" + " + 1" * 150, "nested more than"),
        ("-" * 900 + "1", "nested"),
        ("10 / 0.0", "division by zero"),
        ("int(1e308 * 10)", "OverflowError|infinity"),
        ("{[1]: 2}", "unhashable"),
    ],
)
def test_each_allowed_operation_is_bounded_and_fails_cleanly(expr: str, message: str) -> None:
    if not message:  # a small, legitimate use of the same operation still works
        assert evaluate(expr, CTX, {}) == "111"
        return
    with pytest.raises(ExpressionError, match=message):
        evaluate(expr, CTX, {})


def test_sizes_are_checked_before_a_large_result_is_built() -> None:
    big = "x" * 600_000
    ctx = Context({"big": [NodeResult(output={"s": big, "l": list(range(300_000))}, timestamp=1)]})
    with pytest.raises(ExpressionError, match="concatenation would be 1200000 long"):
        evaluate("big.last.data.s + big.last.data.s", ctx)
    with pytest.raises(ExpressionError, match="over the limit"):
        evaluate("json([big.last.data.s, big.last.data.s, big.last.data.s])", ctx)
    with pytest.raises(ExpressionError, match="over the limit"):
        evaluate("str([big.last.data.s, big.last.data.s])", ctx)
    with pytest.raises(ExpressionError, match="over the limit"):
        evaluate("'%s%s' % [big.last.data.s, big.last.data.s]", ctx)
    with pytest.raises(ExpressionError, match="over the limit"):
        evaluate("upper(big.last.data.s)", ctx)
    with pytest.raises(ExpressionError, match="over the limit"):
        resolve("{{ big.last.data.s }} and {{ big.last.data.s }}", ctx)
    huge = Context({"n": [NodeResult(output=10**1200, timestamp=1)]})
    with pytest.raises(ExpressionError, match="product would have 7974 bits"):
        evaluate("n * n", huge)
    with pytest.raises(ExpressionError, match="int\\(\\) of a text longer"):
        evaluate("int(str(n) + str(n))", huge)
    assert evaluate("len(big.last.data.s + 'y')", ctx) == 600_001  # under the limit: fine


def test_one_nodes_expressions_share_an_operation_budget() -> None:
    data = ["{{ fetch.last.data.n + 1 }}"] * 30_000
    with pytest.raises(ExpressionError, match="budget exceeded: more than 100000 operations"):
        resolve(data, CTX)
    cheap = ExpressionLimits(max_operations=50)
    with pytest.raises(ExpressionError, match="more than 50 operations"):
        resolve(
            {"a": "{{ max(fetch.last.data.items) }}"} | {str(i): "{{ 1 }}" for i in range(40)},
            CTX,
            limits=cheap,
        )
    assert resolve(data[:100], CTX) == [6] * 100


def test_a_total_size_budget_bounds_many_moderate_results() -> None:
    ctx = Context({"t": [NodeResult(output="y" * 100_000, timestamp=1)]})
    data = ["{{ t + t }}"] * 60  # 12 MB in all, each 200 kB
    with pytest.raises(ExpressionError, match="more than 10000000 characters produced"):
        resolve(data, ctx)


async def test_an_expression_over_its_budget_fails_the_node_without_retries() -> None:
    from refluxo.core import NodeDefinition, RetryPolicy, WorkflowEngine

    calls: list[Any] = []

    async def echo(data: Any, ctx: Any, payload: Any, g: Any) -> Any:
        calls.append(data)
        return data

    wf = {"nodes": [{"id": "a", "type": "echo", "data": "{{ round(1, -100000000) }}"}]}
    engine = WorkflowEngine(
        wf, {"echo": NodeDefinition(executor=echo, retry_policy=RetryPolicy(max_attempts=5))}
    )
    snap = await engine.execute_step(engine.create_initial_snapshot("r", "a"))
    assert snap.status == "failed" and calls == []
    assert "ndigits between -400 and 400" in (snap.context["a"][0].error or "")


async def test_limits_are_configured_on_the_transform() -> None:
    transform = ExpressionTransform(ExpressionLimits(max_size=10))
    with pytest.raises(ExpressionError, match="over the limit of 10"):
        await transform.transform("{{ 'abcdef' + 'ghijkl' }}", CTX, None)


# --- template scanning (the adversarial shapes: test_expression_scanning.py) -------------


def test_templates_are_found_as_before() -> None:
    assert resolve("{{ 1 }}{{ 2 }}", CTX) == "12"
    assert resolve("a {{ 1 }} b {{ 'c' }} d {{ e", CTX) == "a 1 b c d {{ e"
    assert resolve("{{ {'a': {'b': 1}} }}", CTX) == {"a": {"b": 1}}
    assert resolve(" {{ fetch.count }} ", CTX) == 2
    assert resolve("}} {{ 1 }}", CTX) == "}} 1"


def test_format_texts_from_results_are_parsed_in_one_pass() -> None:
    ctx = Context({"f": [NodeResult(output={"fmt": "%(" * 4}, timestamp=1)]})
    with pytest.raises(ExpressionError, match="format key needs a"):
        evaluate("f.last.data.fmt % {'a': 1}", ctx)
    emoji = Context({"s": [NodeResult(output="\U0001f600" * 200_000, timestamp=1)]})
    with pytest.raises(ExpressionError, match="formatted text would be 2000004 long"):
        evaluate("'%a' % s", emoji)
    assert evaluate("'%(a)s-%(a)s %%' % {'a': 'x'}", CTX) == "x-x %"
    assert evaluate("'%5.1f|%s' % [2.5, 'y']", CTX) == "  2.5|y"


def test_comparisons_pay_for_the_size_of_what_they_compare() -> None:
    ctx = Context(
        {
            "a": [NodeResult(output="x" * 600_000, timestamp=1)],
            "b": [NodeResult(output="x" * 600_000, timestamp=1)],
            "c": [NodeResult(output={str(i): i for i in range(40_000)}, timestamp=1)],
        }
    )
    with pytest.raises(ExpressionError, match="budget exceeded"):
        resolve(["{{ a == b }}"] * 300, ctx)
    with pytest.raises(ExpressionError, match="budget exceeded"):
        resolve(["{{ c == c }}"] * 100, ctx)
    assert resolve(["{{ a == b }}"] * 2, ctx) == [True, True]


@pytest.mark.parametrize(
    "expr",
    ["f.last.data.d[f.last.data.k]", "('%(' + f.last.data.x + ')s') % {}", "int(f.last.data.k)"],
)
def test_error_messages_stay_short_whatever_the_values(expr: str) -> None:
    # Error messages are stored in the snapshot: a long key must not be copied into it.
    ctx = Context(
        {"f": [NodeResult(output={"k": "(x" * 50_000, "x": "x" * 100_000, "d": {}}, timestamp=1)]}
    )
    with pytest.raises(ExpressionError) as info:
        evaluate(expr, ctx)
    assert len(str(info.value)) < 400
