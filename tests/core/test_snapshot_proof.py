"""Snapshot.to_json proves only what is not known to read back, and still refuses what would not.

Results loaded from JSON, or proven by an earlier ``to_json``, are not proven again; any result
that is new, replaced, or copied with changes is, where it sits in the snapshot.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import pytest

from refluxo.core import NodeResult, NotStrictJson, Snapshot
from refluxo.core.model import WHOLE_PROOF_BELOW


def deep(levels: int) -> Any:
    value: Any = "bottom"
    for _ in range(levels):
        value = [value]
    return value


@pytest.fixture(params=["small", "large"], autouse=True)
def size(request: pytest.FixtureRequest) -> Iterator[str]:
    """Every test runs on a snapshot proven whole and on one proven in parts."""
    global PAD
    PAD = "" if request.param == "small" else "x" * WHOLE_PROOF_BELOW
    yield request.param
    PAD = ""


PAD = ""


def proven_snapshot(n: int = 3) -> Snapshot:
    results = [NodeResult(output={"i": i, "pad": PAD}, timestamp=1000 + i) for i in range(n)]
    snap = Snapshot(run_id="r1", status="active", current_node_id="a", context={"a": results})
    return Snapshot.from_json(snap.to_json())


BAD_OUTPUTS = {
    "nested past the parser's limit where it sits": lambda: deep(197),
    "colliding keys": lambda: {1: "a", "1": "b"},
    "NaN": lambda: math.nan,
    "Infinity": lambda: {"x": -math.inf},
    "a lone surrogate": lambda: "\ud800",
}


@pytest.mark.parametrize("kind", sorted(BAD_OUTPUTS))
def test_a_new_result_that_would_not_read_back_is_refused_after_proven_ones(kind: str) -> None:
    snap = proven_snapshot()
    snap.to_json()
    bad = NodeResult(output=BAD_OUTPUTS[kind](), timestamp=2000)
    stepped = snap.model_copy(update={"context": {"a": [*snap.context["a"], bad]}})
    with pytest.raises(NotStrictJson):
        stepped.to_json()


@pytest.mark.parametrize("kind", sorted(BAD_OUTPUTS))
def test_a_proven_result_copied_with_a_bad_output_is_proven_again(kind: str) -> None:
    snap = proven_snapshot()
    snap.to_json()
    first, *rest = snap.context["a"]
    changed = first.model_copy(update={"output": BAD_OUTPUTS[kind]()})
    with pytest.raises(NotStrictJson):
        snap.model_copy(update={"context": {"a": [changed, *rest]}}).to_json()


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydantic's, about the int key
def test_context_keys_that_collide_in_json_are_refused() -> None:
    snap = proven_snapshot()
    results = snap.context["a"]
    colliding = snap.model_copy(update={"context": {1: results, "1": results}})
    with pytest.raises(NotStrictJson):
        colliding.to_json()


def test_a_field_outside_the_context_is_proven_on_every_encoding() -> None:
    snap = proven_snapshot()
    snap.to_json()
    for bad in (deep(250), {1: "a", "1": "b"}, math.nan):
        with pytest.raises(NotStrictJson):
            snap.model_copy(update={"metadata": {"x": bad}}).to_json()


def test_a_result_as_deep_as_the_parser_reads_where_it_sits_is_kept() -> None:
    snap = proven_snapshot()
    deepest = NodeResult(output=deep(196), timestamp=2000)
    stepped = snap.model_copy(update={"context": {"a": [*snap.context["a"], deepest]}})
    assert Snapshot.from_json(stepped.to_json()) == stepped


def test_a_loaded_result_holding_a_nan_word_in_a_string_still_encodes() -> None:
    result = NodeResult(output={"note": "NaN and Infinity are words here"}, timestamp=1)
    snap = Snapshot(run_id="r1", status="active", current_node_id="a", context={"a": [result]})
    again = Snapshot.from_json(snap.to_json())
    assert again == snap
    assert Snapshot.from_json(again.to_json()) == snap


def test_snapshots_that_differ_only_in_what_was_proven_are_equal() -> None:
    snap = proven_snapshot()
    fresh = Snapshot.model_validate(snap.to_dict())
    assert fresh == snap
    snap.to_json()
    assert fresh == snap


@pytest.mark.parametrize("kind", sorted(BAD_OUTPUTS))
def test_a_bad_result_after_the_oldest_were_trimmed_is_refused(kind: str) -> None:
    snap = proven_snapshot(5)
    snap.to_json()
    bad = NodeResult(output=BAD_OUTPUTS[kind](), timestamp=2000)
    trimmed = snap.model_copy(update={"context": {"a": [*snap.context["a"][2:], bad]}})
    with pytest.raises(NotStrictJson):
        trimmed.to_json()


def test_a_bad_result_appended_in_place_to_a_proven_list_is_refused() -> None:
    snap = proven_snapshot()
    snap.to_json()
    snap.context["a"].append(NodeResult(output=math.nan, timestamp=2000))
    with pytest.raises(NotStrictJson):
        snap.to_json()
