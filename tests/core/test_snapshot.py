"""The snapshot's wire format: camelCase JSON, epoch milliseconds, lossless round-trips."""

from __future__ import annotations

import json

from refluxo.core import Snapshot, WorkflowDefinition

# A snapshot as the TypeScript engine writes it (a run waiting for a retry).
TS_SNAPSHOT = {
    "workflowId": "run-1",
    "status": "error",
    "currentNodeId": "fetch",
    "context": {
        "start": [{"output": {"name": "Ada"}, "timestamp": 1700000000000, "attempt": 1}],
        "fetch": [
            {"output": None, "timestamp": 1700000000500, "error": "Error: boom", "attempt": 1}
        ],
    },
    "version": 2,
    "lastStartedAt": 1700000000400,
    "totalExecutionTime": 120,
    "metadata": {"pausedReason": "Retry attempt 1"},
    "retryState": {"nodeId": "fetch", "attempts": 1, "nextRetryAt": 1700000001500},
}


def test_a_typescript_snapshot_loads_with_snake_case_attributes() -> None:
    snap = Snapshot.model_validate(TS_SNAPSHOT)
    assert snap.workflow_id == "run-1"
    assert snap.current_node_id == "fetch"
    assert snap.retry_state is not None and snap.retry_state.next_retry_at == 1700000001500
    assert snap.context["fetch"][0].error == "Error: boom"
    assert snap.context["start"][0].output == {"name": "Ada"}


def test_a_typescript_snapshot_dumps_back_to_the_same_json() -> None:
    snap = Snapshot.from_json(json.dumps(TS_SNAPSHOT))
    assert json.loads(snap.to_json()) == TS_SNAPSHOT
    assert snap.to_dict() == TS_SNAPSHOT


def test_unknown_fields_are_kept_at_every_level() -> None:
    raw = json.loads(json.dumps(TS_SNAPSHOT))
    raw["tenant"] = {"id": 7}
    raw["futureField"] = None
    raw["context"]["start"][0]["durationMs"] = 12
    raw["retryState"]["lastError"] = "x"
    again = json.loads(Snapshot.from_json(json.dumps(raw)).to_json())
    assert again == raw


def test_null_outputs_stay_null_and_unset_optionals_stay_out() -> None:
    snap = Snapshot(workflow_id="r", status="active", current_node_id="a")
    out = snap.to_dict()
    assert out == {
        "workflowId": "r",
        "status": "active",
        "currentNodeId": "a",
        "context": {},
        "version": 0,
        "metadata": {},
    }
    assert "error" not in out
    failed = Snapshot.model_validate(TS_SNAPSHOT).to_dict()
    assert failed["context"]["fetch"][0]["output"] is None


def test_a_definition_loads_from_plain_json_with_handles() -> None:
    definition = WorkflowDefinition.model_validate_json(
        json.dumps(
            {
                "nodes": [
                    {"id": "a", "type": "t", "data": {"x": 1}},
                    {"id": "b", "type": "t", "data": None, "metadata": {"label": "B"}},
                ],
                "edges": [{"id": "e", "source": "a", "target": "b", "sourceHandle": "yes"}],
            }
        )
    )
    assert definition.edges[0].source_handle == "yes"
    assert definition.nodes[1].metadata == {"label": "B"}
    assert definition.to_dict()["edges"][0]["sourceHandle"] == "yes"


def test_the_shape_hash_ignores_node_data_but_not_wiring() -> None:
    base = {
        "nodes": [{"id": "a", "type": "t", "data": 1}, {"id": "b", "type": "t"}],
        "edges": [{"id": "e", "source": "a", "target": "b"}],
    }
    h = WorkflowDefinition.model_validate(base).shape_hash()
    changed_data = json.loads(json.dumps(base))
    changed_data["nodes"][0]["data"] = 2
    assert WorkflowDefinition.model_validate(changed_data).shape_hash() == h
    rewired = json.loads(json.dumps(base))
    rewired["edges"][0]["sourceHandle"] = "yes"
    assert WorkflowDefinition.model_validate(rewired).shape_hash() != h
    retyped = json.loads(json.dumps(base))
    retyped["nodes"][1]["type"] = "other"
    assert WorkflowDefinition.model_validate(retyped).shape_hash() != h


def test_a_stored_snapshot_that_is_not_valid_decodes_to_a_store_error_without_its_content() -> None:
    import pytest

    from refluxo.core.errors import StoreError
    from refluxo.core.model import decode_snapshot

    raw = '{"workflowId": "r1", "status": "card 4111 1111 1111 1111", "currentNodeId": "a"}'
    for stored in (raw, raw.encode(), b"\xff\xfe card 4111", 4111):
        with pytest.raises(StoreError) as raised:
            decode_snapshot("r1", stored, "table 'runs'")
        assert raised.value.transient is False
        assert "4111" not in str(raised.value) and "table 'runs'" in str(raised.value)
    assert decode_snapshot("r1", json.dumps(TS_SNAPSHOT)).workflow_id == "run-1"


def test_an_archived_result_that_is_not_valid_decodes_to_a_store_error_without_its_content() -> (
    None
):
    import pytest

    from refluxo.core.errors import StoreError
    from refluxo.core.model import NodeResult, decode_result

    with pytest.raises(StoreError) as raised:
        decode_result("r1", '{"output": "card 4111", "timestamp": "card 4111"}', "archive")
    assert raised.value.transient is False and "4111" not in str(raised.value)
    kept = NodeResult(output={"a": 1}, timestamp=5)
    assert decode_result("r1", kept.to_json()) == kept
