"""Readable views of runs and workflows: a run's timeline, a workflow as a Mermaid diagram."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from .model import Snapshot, WorkflowDefinition


def _time(ms: int | None) -> str:
    if ms is None:
        return "--:--:--.---"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%H:%M:%S.%f")[:-3]


def _short(value: Any, width: int = 60) -> str:
    text = json.dumps(value, separators=(",", ":"), default=str)
    return text if len(text) <= width else text[: width - 1] + "…"


def render_timeline(snapshot: Snapshot) -> str:
    """Every recorded step of a run in time order (UTC), then where the run stands now."""
    rows = sorted(
        ((r.timestamp, node, r) for node, results in snapshot.context.items() for r in results),
        key=lambda row: row[0],
    )
    name = snapshot.definition.name if snapshot.definition else "?"
    lines = [f"run {snapshot.run_id} (workflow {name}), version {snapshot.version}"]
    for ts, node, result in rows:
        if result.error:
            what = f"attempt {result.attempt}  error  {result.error}"
        else:
            what = f"attempt {result.attempt}  ok     {_short(result.output)}"
        lines.append(f"  {_time(ts)}  {node:<14} {what}")
    now = f"  now: {snapshot.status}"
    if snapshot.current_node_id:
        now += f" at {snapshot.current_node_id}"
    if snapshot.status == "error" and snapshot.retry_state:
        rs = snapshot.retry_state
        now += f", retry {rs.attempts + 1} at {_time(rs.next_retry_at)}"
    if snapshot.wait is not None:
        if snapshot.wait.kind == "sleep":
            now += f", sleeping until {_time(snapshot.wait.until)}"
        else:
            event = repr(snapshot.wait.event) if snapshot.wait.event else "an event"
            now += f", waiting for {event}"
            if snapshot.wait.until is not None:
                now += f" until {_time(snapshot.wait.until)}"
    elif snapshot.status == "paused":
        now += ", waiting for an event"
    if snapshot.inbox:
        now += f", {len(snapshot.inbox)} event(s) queued"
    if snapshot.status == "failed" and "failedReason" in snapshot.metadata:
        now += f" ({snapshot.metadata['failedReason']})"
    lines.append(now)
    if snapshot.total_execution_time is not None:
        lines.append(f"  time spent in steps: {snapshot.total_execution_time} ms")
    return "\n".join(lines)


def timeline(snapshot: Snapshot) -> dict[str, Any]:
    """A run's timeline as JSON (what ``GET /runs/{id}/timeline`` answers).

    ``steps``: every recorded result in time order (node, attempt, time, ok, output or the
    error's full text); ``now``: where the run stands (status, node, the wait and its
    deadline, the retry pending, why it failed or is refused); ``events``: those received and
    not yet consumed, and the ids of those consumed; ``retries``, ``reruns`` and
    ``rerunOf``, ``movedTo`` and ``movedFrom`` from the run's metadata. Times are epoch ms.
    """
    steps = []
    rows = sorted(
        ((r.timestamp, node, r) for node, results in snapshot.context.items() for r in results),
        key=lambda row: row[0],
    )
    for ts, node, result in rows:
        step: dict[str, Any] = {
            "node": node,
            "attempt": result.attempt,
            "at": ts,
            "ok": result.error is None,
        }
        if result.error is None:
            step["output"] = result.output
        else:
            step["error"] = result.error
        steps.append(step)
    meta = snapshot.metadata
    now: dict[str, Any] = {"status": snapshot.status, "node": snapshot.current_node_id}
    if snapshot.wait is not None:
        now["wait"] = {
            "kind": snapshot.wait.kind,
            "until": snapshot.wait.until,
            "event": snapshot.wait.event,
        }
    if snapshot.retry_state is not None:
        now["retry"] = {
            "node": snapshot.retry_state.node_id,
            "attempts": snapshot.retry_state.attempts,
            "at": snapshot.retry_state.next_retry_at,
        }
    if snapshot.status == "failed":
        now["failedReason"] = meta.get("failedReason")
        now["cancelled"] = bool(meta.get("cancelled"))
    if isinstance(meta.get("refused"), dict):
        now["refused"] = meta["refused"]
    name = snapshot.definition.name if snapshot.definition else None
    return {
        "id": snapshot.run_id,
        "workflow": name,
        "version": snapshot.version,
        "startedAt": rows[0][0] if rows else snapshot.last_started_at,
        "timeInSteps": snapshot.total_execution_time,
        "steps": steps,
        "now": now,
        "events": {
            "received": [e.to_dict() for e in snapshot.inbox or []],
            "consumed": list(snapshot.consumed_events or []),
        },
        "retries": meta.get("retries") if isinstance(meta.get("retries"), list) else [],
        "reruns": meta.get("reruns") if isinstance(meta.get("reruns"), list) else [],
        "rerunOf": meta.get("rerunOf"),
        "movedTo": meta.get("movedTo"),
        "movedFrom": meta.get("movedFrom"),
    }


def _label(text: str) -> str:
    return text.replace('"', "'")


def to_mermaid(definition: WorkflowDefinition) -> str:
    """The workflow as a Mermaid flowchart: one box per node (id and type), edges with handles."""
    ids = {node.id: f"n{i}" for i, node in enumerate(definition.nodes)}
    lines = ["flowchart TD"]
    for node in definition.nodes:
        lines.append(f'    {ids[node.id]}["{_label(node.id)}<br/><i>{_label(node.type)}</i>"]')
    for edge in definition.edges:
        arrow = f"-- {_label(edge.source_handle)} -->" if edge.source_handle else "-->"
        lines.append(f"    {ids[edge.source]} {arrow} {ids[edge.target]}")
    return "\n".join(lines)
