"""A second shipped example: a scheduled digest that hands its summary to a sub-workflow.

``digest`` starts on weekday mornings in Lisbon (a :class:`~refluxo.core.Schedule`), or by
hand; ``collect`` gathers the day's items, ``summarize`` runs the ``summary`` workflow as a
child run (a ``subworkflow`` node) and outputs the child's result, and ``publish`` writes the
line a team would read. The executors are stateless and deterministic, so the example behaves
the same on every runtime: ``python -m refluxo.local.cli dev --app refluxo.examples``, the
Cloud Function (``--app refluxo.examples``) or the Worker.
"""

from __future__ import annotations

from typing import Any

from refluxo.core import Context, NodeDefinition, Schedule, Workflow, WorkflowDefinition

DIGEST = WorkflowDefinition.model_validate(
    {
        "nodes": [
            {"id": "collect", "type": "collect"},
            {
                "id": "summarize",
                "type": "subworkflow",
                "data": {
                    "workflow": "summary",
                    "input": {
                        "team": "{{ collect.last.data.team }}",
                        "items": "{{ collect.last.data.items }}",
                    },
                },
            },
            {
                "id": "publish",
                "type": "publish",
                "data": {"summary": "{{ summarize.last.data }}"},
            },
        ],
        "edges": [
            {"id": "d1", "source": "collect", "target": "summarize"},
            {"id": "d2", "source": "summarize", "target": "publish"},
        ],
    }
)

SUMMARY = WorkflowDefinition.model_validate(
    {"nodes": [{"id": "count", "type": "count"}], "edges": []}
)

WEEKDAY_MORNINGS = Schedule(
    cron="0 9 * * 1-5", timezone="Europe/Lisbon", input={"team": "ops"}, name="weekdays"
)


def collect(data: Any, context: Context, payload: Any, globals: Any) -> dict[str, Any]:
    """The day's items of the team the run's input names."""
    team = payload.get("team", "ops") if isinstance(payload, dict) else "ops"
    return {"team": team, "items": [f"{team}-ticket-{i}" for i in (3, 1, 2)]}


def count(data: Any, context: Context, payload: Any, globals: Any) -> dict[str, Any]:
    """Runs in the child: how many items, and the first one in order."""
    items = sorted(payload.get("items", [])) if isinstance(payload, dict) else []
    team = payload.get("team") if isinstance(payload, dict) else None
    return {"team": team, "count": len(items), "first": items[0] if items else None}


def publish(data: Any, context: Context, payload: Any, globals: Any) -> dict[str, Any]:
    summary = data.get("summary") or {}
    return {
        "text": f"{summary.get('team')}: {summary.get('count')} open, first {summary.get('first')}"
    }


NODES = {
    "collect": NodeDefinition(executor=collect, thread=False),
    "count": NodeDefinition(executor=count, thread=False),
    "publish": NodeDefinition(executor=publish, thread=False),
}


def workflows() -> list[Workflow]:
    """The example's two workflows: ``digest`` (scheduled) and its child ``summary``."""
    return [
        Workflow("digest", DIGEST, NODES, schedules=[WEEKDAY_MORNINGS]),
        Workflow("summary", SUMMARY, NODES),
    ]
