"""strict_json: every rule of the codec's docstring, on values of every shape."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refluxo.core import codec
from refluxo.core.codec import strict_json
from refluxo.core.errors import NotStrictJson


@pytest.mark.parametrize(
    ("value", "rule"),
    [
        ({"a": float("nan")}, "nan"),
        ({"a": [1, float("-inf")]}, "nan"),
        ({"a": "x\ud800"}, "unicode"),
        ({"k\udfff": 1}, "unicode"),
        ([["\ud83d"]], "unicode"),
        ({1: "a", "1": "b"}, "key_collision"),
        ({"a": {1, 2, object()}}, "type"),
        ({"a": {"b": {"c": 1}}}, "max_depth"),
    ],
)
def test_a_value_breaking_a_rule_is_refused_naming_the_rule(value: Any, rule: str) -> None:
    with pytest.raises(NotStrictJson) as raised:
        strict_json(value, max_depth=2)
    assert raised.value.rule == rule


def test_a_value_that_contains_itself_is_refused_as_a_cycle() -> None:
    looped: dict[str, Any] = {"a": 1}
    looped["self"] = looped
    with pytest.raises(NotStrictJson) as raised:
        strict_json(looped)
    assert raised.value.rule == "cycle"


def test_a_plain_value_comes_back_equal_and_as_a_copy() -> None:
    value = {"i": 1, "ok": True, "none": None, "x": 1.5, "s": "é", "list": [1, {"a": "b"}]}
    out = strict_json(value)
    assert out == value
    out["list"][1]["a"] = "changed"
    out["new"] = 1
    assert value["list"] == [1, {"a": "b"}] and "new" not in value


def test_keys_and_containers_become_their_json_form() -> None:
    assert strict_json({2: (1, 2), True: None, None: 0.5}) == {
        "2": [1, 2],
        "true": None,
        "null": 0.5,
    }


def test_the_depth_limit_counts_every_container_level() -> None:
    assert strict_json({"a": [1]}, max_depth=2) == {"a": [1]}
    with pytest.raises(NotStrictJson):
        strict_json({"a": [[1]]}, max_depth=2)
    with pytest.raises(NotStrictJson):
        strict_json({}, max_depth=0)
    assert strict_json("text", max_depth=0) == "text"


scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5)
trees = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text(max_size=3) | st.integers(-2, 2), inner, max_size=3)
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(trees, st.integers(1, 4))
def test_any_json_like_value_is_converted_or_refused_as_the_full_check_says(
    value: Any, depth: int
) -> None:
    try:
        expected: Any = codec._convert(value, depth, "value", 0, set())
    except NotStrictJson as exc:
        with pytest.raises(NotStrictJson) as raised:
            strict_json(value, max_depth=depth)
        assert (raised.value.rule, str(raised.value)) == (exc.rule, str(exc))
    else:
        assert strict_json(value, max_depth=depth) == expected
