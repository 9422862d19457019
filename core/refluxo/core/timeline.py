"""Readable views of runs and workflows: a run's timeline, a workflow as a Mermaid diagram."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from .model import Snapshot, WorkflowDefinition
from .subflows import SUBWORKFLOW_TYPE, child_of_event


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
    parent = snapshot.metadata.get("parent")
    if isinstance(parent, dict):
        lines.append(f"  child of run {parent.get('runId')} (node {parent.get('node')})")
    children = snapshot.metadata.get("children")
    if isinstance(children, list) and children:
        lines.append(f"  child runs: {', '.join(str(c) for c in children)}")
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
            child = child_of_event(snapshot.wait.event)
            now += f", waiting for child run {child}" if child else f", waiting for {event}"
            if snapshot.wait.until is not None:
                now += f" until {_time(snapshot.wait.until)}"
    elif snapshot.status == "paused":
        now += ", waiting for an event"
    if snapshot.inbox:
        now += f", {len(snapshot.inbox)} event(s) queued"
    if snapshot.status == "failed" and "failedReason" in snapshot.metadata:
        now += f" ({snapshot.metadata['failedReason']})"
    lines.append(now)
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
    if snapshot.total_execution_time is not None:
        lines.append(f"  time spent in steps: {snapshot.total_execution_time} ms")
    return "\n".join(lines)


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
