"""A second shipped example: a scheduled digest with parallel branches and a sub-workflow.

``digest`` starts on weekday mornings in Lisbon (a :class:`~refluxo.core.Schedule`), or by
hand; ``collect`` fans out to two parallel branches (``open_items`` and ``closed_items``, one
delivery each) that meet at the join ``merge``; ``summarize`` runs the ``summary`` workflow as
a child run (a ``subworkflow`` node) and outputs the child's result, and ``publish`` writes
the line a team would read. The executors are stateless and deterministic, so the example behaves
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
            {"id": "open_items", "type": "pick", "data": {"state": "open"}},
            {"id": "closed_items", "type": "pick", "data": {"state": "closed"}},
            {"id": "merge", "type": "merge", "join": "all"},
            {
                "id": "summarize",
                "type": "subworkflow",
                "data": {
                    "workflow": "summary",
                    "input": {
                        "team": "{{ collect.last.data.team }}",
                        "items": "{{ open_items.last.data.items }}",
                        "closed": "{{ closed_items.last.data.count }}",
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
            {"id": "d1", "source": "collect", "target": "open_items"},  # one handle, two
            {"id": "d2", "source": "collect", "target": "closed_items"},  # edges: a fork
            {"id": "d3", "source": "open_items", "target": "merge"},
            {"id": "d4", "source": "closed_items", "target": "merge"},
            {"id": "d5", "source": "merge", "target": "summarize"},
            {"id": "d6", "source": "summarize", "target": "publish"},
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
    return {"team": team, "open": [f"{team}-ticket-{i}" for i in (3, 1, 2)], "closed": 4}


def pick(data: Any, context: Context, payload: Any, globals: Any) -> dict[str, Any]:
    """A branch: the collected items of one state."""
    collected = context.last("collect") or {}
    if data.get("state") == "open":
        items = list(collected.get("open", []))
        return {"items": items, "count": len(items)}
    return {"items": [], "count": collected.get("closed", 0)}


def merge(data: Any, context: Context, payload: Any, globals: Any) -> dict[str, Any]:
    """The join: receives every branch's output, {branch's last node: its output}."""
    branches = payload if isinstance(payload, dict) else {}
    return {"branches": sorted(branches)}


def count(data: Any, context: Context, payload: Any, globals: Any) -> dict[str, Any]:
    """Runs in the child: how many items, and the first one in order."""
    items = sorted(payload.get("items", [])) if isinstance(payload, dict) else []
    team = payload.get("team") if isinstance(payload, dict) else None
    closed = payload.get("closed") if isinstance(payload, dict) else None
    first = items[0] if items else None
    return {"team": team, "count": len(items), "closed": closed, "first": first}


def publish(data: Any, context: Context, payload: Any, globals: Any) -> dict[str, Any]:
    summary = data.get("summary") or {}
    return {
        "text": f"{summary.get('team')}: {summary.get('count')} open, "
        f"{summary.get('closed')} closed, first {summary.get('first')}"
    }


NODES = {
    "collect": NodeDefinition(executor=collect, thread=False),
    "pick": NodeDefinition(executor=pick, thread=False),
    "merge": NodeDefinition(executor=merge, thread=False),
    "count": NodeDefinition(executor=count, thread=False),
    "publish": NodeDefinition(executor=publish, thread=False),
}


def workflows() -> list[Workflow]:
    """The example's two workflows: ``digest`` (scheduled) and its child ``summary``."""
    return [
        Workflow("digest", DIGEST, NODES, schedules=[WEEKDAY_MORNINGS]),
        Workflow("summary", SUMMARY, NODES),
    ]
