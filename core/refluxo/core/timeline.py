"""Readable views of runs and workflows: a run's timeline, a workflow as a Mermaid diagram."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from .model import Snapshot, WorkflowDefinition
from .subflows import SUBWORKFLOW_TYPE, child_of_event

STRANDED_AFTER_MS = 300_000
"""A run due for longer than this without a step has most likely lost its delivery."""


def _time(ms: int | None) -> str:
    if ms is None:
        return "--:--:--.---"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%H:%M:%S.%f")[:-3]


def _date(ms: int | None) -> str:
    """A full date and time with its zone (UTC), to the millisecond."""
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC"


def _duration(ms: int) -> str:
    if ms < 1000:
        return f"{ms} ms"
    seconds = ms / 1000
    if seconds < 120:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 120:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def _short(value: Any, width: int = 60) -> str:
    text = json.dumps(value, separators=(",", ":"), default=str)
    return text if len(text) <= width else text[: width - 1] + "…"


def render_timeline(snapshot: Snapshot, *, now: int | None = None) -> str:
    """Every recorded step of a run in time order, then where the run stands at ``now``.

    The first line names the run; the second gives the date of its first step with its time
    zone (UTC); each step shows its time, the time since the first step, the node, the
    attempt and its output or error. A run refused for its definition, and one overdue by
    more than :data:`STRANDED_AFTER_MS` (its delivery most likely lost), are said to be so.
    """
    rows = sorted(
        ((r.timestamp, node, r) for node, results in snapshot.context.items() for r in results),
        key=lambda row: row[0],
    )
    name = snapshot.definition.name if snapshot.definition else "?"
    lines = [f"run {snapshot.run_id} (workflow {name}), version {snapshot.version}"]
    parent = snapshot.metadata.get("parent")
    if isinstance(parent, dict):
        lines.append(f"  child of run {parent.get('runId')} (node {parent.get('node')})")
    children = snapshot.metadata.get("children")
    if isinstance(children, list) and children:
        lines.append(f"  child runs: {', '.join(str(c) for c in children)}")
    first = rows[0][0] if rows else snapshot.last_started_at
    if first is not None:
        lines.append(f"  started {_date(first)}")
    for ts, node, result in rows:
        offset = f"+{_duration(ts - first)}" if first is not None else ""
        if result.error:
            what = f"attempt {result.attempt}  error  {result.error}"
        else:
            what = f"attempt {result.attempt}  ok     {_short(result.output)}"
        lines.append(f"  {_time(ts)}  {offset:>11}  {node:<14} {what}")
    now_line = f"  now: {snapshot.status}"
    if snapshot.current_node_id:
        now_line += f" at {snapshot.current_node_id}"
    if snapshot.status == "error" and snapshot.retry_state:
        rs = snapshot.retry_state
        now_line += f", retry {rs.attempts + 1} at {_date(rs.next_retry_at)}"
    if snapshot.wait is not None:
        if snapshot.wait.kind == "sleep":
            now_line += f", sleeping until {_date(snapshot.wait.until)}"
        else:
            event = repr(snapshot.wait.event) if snapshot.wait.event else "an event"
            child = child_of_event(snapshot.wait.event)
            now_line += f", waiting for child run {child}" if child else f", waiting for {event}"
            if snapshot.wait.until is not None:
                now_line += f" until {_date(snapshot.wait.until)}"
    elif snapshot.status == "paused":
        now_line += ", waiting for an event"
    if snapshot.inbox:
        now_line += f", {len(snapshot.inbox)} event(s) queued"
    if snapshot.status == "failed" and "failedReason" in snapshot.metadata:
        now_line += f" ({snapshot.metadata['failedReason']})"
    lines.append(now_line)
    for bid, branch in (snapshot.branches or {}).items():
        line = f"    branch {bid}: {branch.status} at {branch.node_id or '-'}"
        if branch.status == "error" and branch.retry_state:
            rs = branch.retry_state
            line += f", retry {rs.attempts + 1} at {_time(rs.next_retry_at)}"
        if branch.wait is not None:
            waits = "sleeping" if branch.wait.kind == "sleep" else "waiting for an event"
            line += f", {waits} until {_time(branch.wait.until)}"
        if branch.error:
            line += f" ({branch.error})"
        lines.append(line)
    refused = snapshot.metadata.get("refused")
    if isinstance(refused, dict) and not snapshot.is_terminal:
        lines.append(
            f"  REFUSED since {_date(refused.get('at'))}: {refused.get('reason')} "
            "(redeploy a compatible definition, then retry it)"
        )
    elif now is not None and not snapshot.is_terminal:
        due = snapshot.due_at()
        if due == 0:
            due = snapshot.last_started_at
        if due is not None and now - due > STRANDED_AFTER_MS:
            lines.append(
                f"  STRANDED: due since {_date(due)} ({_duration(now - due)}) without a step; "
                "its delivery was most likely lost (the reconciler schedules it again)"
            )
    for retry in snapshot.metadata.get("retries") or []:
        if isinstance(retry, dict):
            lines.append(
                f"  retried {_date(retry.get('at'))} by {retry.get('by') or '?'}: "
                f"{retry.get('reason') or '-'}"
            )
    rerun_of = snapshot.metadata.get("rerunOf")
    if isinstance(rerun_of, dict):
        lines.append(f"  rerun of {rerun_of.get('run')} from {rerun_of.get('from')}")
    for rerun in snapshot.metadata.get("reruns") or []:
        if isinstance(rerun, dict):
            lines.append(f"  rerun as {rerun.get('run')} from {rerun.get('from')}")
    if snapshot.metadata.get("movedTo"):
        lines.append(f"  moved to {snapshot.metadata['movedTo']}")
    if snapshot.total_execution_time is not None:
        spent = _duration(snapshot.total_execution_time)
        lines.append(f"  time spent in steps: {spent}")
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
    """The workflow as a Mermaid flowchart: one box per node (id and type), edges with handles.

    A fork (several edges for one handle) is marked ``fork`` and its edges drawn thick; a join
    (where branches meet) is a hexagon saying how it waits (``join: all`` or ``join: any``).
    A sub-workflow node names the workflow it runs.
    """
    ids = {node.id: f"n{i}" for i, node in enumerate(definition.nodes)}
    fanout: dict[tuple[str, str | None], int] = {}
    sources: dict[str, set[str]] = {}
    for edge in definition.edges:
        key = (edge.source, edge.source_handle)
        fanout[key] = fanout.get(key, 0) + 1
        sources.setdefault(edge.target, set()).add(edge.source)
    forks = {source for (source, _), n in fanout.items() if n > 1}
    lines = ["flowchart TD"]
    for node in definition.nodes:
        label = f"{_label(node.id)}<br/><i>{_label(node.type)}</i>"
        if node.id in forks:
            label += "<br/>fork"
        child = node.data.get("workflow") if isinstance(node.data, dict) else None
        if node.type == SUBWORKFLOW_TYPE and isinstance(child, str):
            label += f"<br/>runs {_label(child)}"
        join = node.join or ("all" if forks and len(sources.get(node.id, ())) > 1 else None)
        if join is not None:
            lines.append(f'    {ids[node.id]}{{{{"{label}<br/>join: {join}"}}}}')
        else:
            lines.append(f'    {ids[node.id]}["{label}"]')
    for edge in definition.edges:
        parallel = fanout[(edge.source, edge.source_handle)] > 1
        line = "==" if parallel else "--"
        tip = "==>" if parallel else "-->"
        arrow = f"{line} {_label(edge.source_handle)} {tip}" if edge.source_handle else tip
        lines.append(f"    {ids[edge.source]} {arrow} {ids[edge.target]}")
    return "\n".join(lines)
