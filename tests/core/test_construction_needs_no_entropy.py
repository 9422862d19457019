"""Building workflows draws no randomness: Python Workers refuse it at their top level."""

from __future__ import annotations

import random

import pytest

from refluxo.core import NodeDefinition, RetryPolicy, Workflow


def test_a_workflow_is_built_without_seeding_a_random_source(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def refuse(self: random.Random, a: object = None, version: int = 2) -> None:
        raise OSError(29, "randomness refused")

    monkeypatch.setattr(random.Random, "seed", refuse)
    workflow = Workflow(
        "w",
        {"nodes": [{"id": "a", "type": "t", "data": {}}], "edges": []},
        {"t": NodeDefinition(executor=lambda *a: None, retry_policy=RetryPolicy(max_attempts=2))},
    )
    assert workflow.name == "w"
    monkeypatch.undo()
    assert 0 <= workflow.engine.rng.random() < 1  # created on first use
