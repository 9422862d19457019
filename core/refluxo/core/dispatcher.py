"""The single-step dispatcher every runtime runs: load, execute one step, save, schedule.

Queues deliver at least once and sometimes late or early, invocations race, and a process can
die between saving and scheduling. The rules that make that safe:

* A message names a run and the version it was scheduled for. A message for any other version
  is a duplicate or stale and does nothing, except that when the stored run is exactly one
  version ahead and still needs a delivery, it is scheduled again: a crash between saving and
  scheduling does not strand the run (a scheduler that deduplicates collapses the copy).
* A message that arrives before the run is due (a retry, a sleep, an event timeout) schedules
  itself again for the due time; delays longer than the scheduler allows take several hops.
* A save that loses the optimistic-locking race means another invocation won: the result is
  dropped and nothing is scheduled.
* A paused run moves only through an event or its own deadline, never a duplicate message.
  Events are kept in the run's inbox until a node waits for them, so an early event is not lost.
* An event moves the run's ``version`` but not its ``step_version``: a delivery for the step
  version still runs the step, and a step whose save finds only new events in its way keeps
  them and saves again. Events nobody waits for never throw away work in flight.
* A run whose definition is not deployed (changed incompatibly, or gone) is refused: the
  refusal is recorded in its ``metadata.refused`` and the delivery comes back every
  ``refused_retry_ms``, so redeploying the definition resumes it.
* A run with parallel branches steps each branch on its own deliveries (``branch`` names it;
  ``version`` is the branch's). A branch step whose save finds that only other branches (or
  events) moved re-applies its result on the stored run, without executing again; a step
  whose own branch moved was a duplicate, and is dropped.
* Executors run at least once per step: side effects should be idempotent.
"""

from __future__ import annotations

import importlib
import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Literal, cast

from .codec import Limits, check_text, strict_json
from .engine import _REMEMBERED_EVENT_IDS, DEFAULT_STEP_TIMEOUT_S, WorkflowEngine
from .errors import (
    DefinitionError,
    InboxFull,
    NodeNotFound,
    NotRetryable,
    NotStrictJson,
    PayloadTooLarge,
    RunFinished,
    RunNotFound,
    StoreError,
    VersionConflict,
    WorkflowMismatch,
    WorkflowNotFound,
)
from .expressions import Transform
from .model import (
    BranchState,
    DefinitionRef,
    DispatchMessage,
    Event,
    NodeResult,
    Snapshot,
    WorkflowDefinition,
    now_ms,
)
from .nodes import NodeDefinition
from .plugins import PluginHooks
from .ports import DueRuns, ResultArchive, Scheduler, StateStore
from .subflows import (
    MAX_REMEMBERED_CHILDREN,
    SUBWORKFLOW_NODE,
    SUBWORKFLOW_TYPE,
    StepScope,
    child_event,
    reset_scope,
    set_scope,
)

if TYPE_CHECKING:
    from .schedules import Schedule

Reapply = Callable[[Snapshot, Snapshot, Snapshot], "Snapshot | None"]
"""How a step's result is applied again on the stored run after a conflict:
``(stored, previously expected, new) -> new snapshot``, or None when the step lost."""

logger = logging.getLogger("refluxo.steps")


def with_events(
    loaded: Snapshot, stored: Snapshot, previous: Snapshot, new: Snapshot
) -> Snapshot | None:
    """A step's snapshot ``new`` applied again on ``stored``, when only events moved the run.

    ``loaded`` is the run the step ran on, ``previous`` the version its save expected. If the
    stored run took steps since ``loaded`` (its step version moved), ended, or has branches,
    the step lost: None. Otherwise the events added to the inbox since ``previous`` join
    ``new``'s inbox, and the result is the version after ``stored``'s.
    """
    if (
        stored.is_terminal
        or stored.branches
        or stored.last_step_version != loaded.last_step_version
    ):
        return None
    added = (stored.inbox or [])[len(previous.inbox or []) :]
    inbox = [*(new.inbox or []), *added] or None
    return new.model_copy(update={"inbox": inbox, "version": stored.version + 1})


Outcome = Literal[
    "stepped",  # one step executed and saved
    "stale",  # a duplicate or an old message: nothing to do
    "recovered",  # the run was one version ahead and unscheduled: scheduled again
    "conflict",  # another invocation saved first: this result was dropped
    "early",  # not due yet: scheduled again for the due time (or the next hop)
    "waiting",  # paused with nothing to resume it: an event or a deadline will
    "finished",  # the run is completed or failed
    "unknown_run",  # no such run
    "refused",  # the run's definition is not the deployed one
]

RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
"""What a run id may be, matched whole: safe as a document id, a key and a task name on every
platform."""

WORKFLOW_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
"""What a workflow name may be, matched whole."""

_MAX_CONFLICT_RETRIES = 5
_MAX_BRANCH_REAPPLIES = 64  # a save losing to other branches this often is delivered again
_MAX_EVENT_MERGES = 64  # a step's save losing to incoming events this often is delivered again
_AGAIN_HOP = 1 << 42  # hops of deliveries sent again start here: never a step's own hop count
_MAX_REASON_CHARS = 1000

DEFAULT_DELIVERY_BUDGET_MS = 1000
"""How long one delivery may run consecutive steps of an active run: far below any platform's
limit on a request (read when a :class:`RunService` is built, not when it is defined)."""

DEFAULT_REFUSED_RETRY_MS = 10 * 60 * 1000
"""How often a refused run's delivery comes back to see whether its definition is deployed."""


_EXHAUSTED = Snapshot(run_id="-", status="failed", current_node_id=None)
"""What :meth:`Dispatcher._save_step` answers when every re-application lost its save."""


def check_run_id(run_id: str) -> str:
    """Return ``run_id`` if it is valid, else raise ValueError saying what a run id may be."""
    if not RUN_ID.fullmatch(run_id) or run_id in (".", ".."):
        raise ValueError(
            "a run id is 1 to 128 letters, digits, '.', '_', ':' or '-', starting with a "
            f"letter or digit; got {run_id!r}"
        )
    return run_id


DEFAULT_RETENTION = 100
"""How many results per node a :class:`Workflow`'s snapshots keep unless it says otherwise."""


class Workflow:
    """A named workflow a deployment hosts: its definition and the code behind its nodes.

    Args:
        name: the name runs are started under (``POST /workflows/{name}/runs``).
        definition: the graph, or its plain JSON form.
        nodes: node type -> :class:`NodeDefinition`.
        plugins, transforms, retention, step_timeout: passed to
            :class:`WorkflowEngine`. ``step_timeout`` (seconds, default 240) bounds each
            executor call whose node sets no ``timeout``; keep it below the platform's limit
            on one delivery.
            ``retention=N`` keeps the newest N results per node in the snapshot, so a run's
            snapshot (and each step's write) stays the same size however long the run is.
            The default keeps :data:`DEFAULT_RETENTION` (100); ``retention=None`` keeps every
            result (each step then writes the whole history: O(n) per step, O(n^2) per run).
            An expression reading ``.all`` or ``.first`` of a node whose results were trimmed
            fails the node, without retries, saying so.
        transform_engines: deprecated name of ``transforms``.
        archive: with a retention, keep the trimmed results in the store (which must then
            be a :class:`~refluxo.core.ports.ResultArchive`) instead of dropping them. None
            (the default) archives where the store keeps an archive and drops them elsewhere;
            False always drops them.
        start: the start node; defaults to the one node without incoming edges.
        secrets: the names of the deployment's globals this workflow may use: its
            expressions and executors see only these. None (the default) gives it all.
        schedules: start a run at each tick of these (see :mod:`refluxo.core.schedules`).
    """

    def __init__(
        self,
        name: str,
        definition: WorkflowDefinition | Mapping[str, Any],
        nodes: Mapping[str, NodeDefinition],
        *,
        plugins: Sequence[PluginHooks] = (),
        transforms: Sequence[Transform] | None = None,
        transform_engines: Sequence[Transform] | None = None,
        retention: int | None = DEFAULT_RETENTION,
        archive: bool | None = None,
        start: str | None = None,
        clock: Callable[[], int] = now_ms,
        step_timeout: float | timedelta | None = DEFAULT_STEP_TIMEOUT_S,
        secrets: Iterable[str] | None = None,
        schedules: Sequence[Schedule] = (),
    ) -> None:
        if isinstance(secrets, str):
            raise DefinitionError("secrets is a list of names, not one name")
        if archive and retention is None:
            raise DefinitionError("archive=True needs a retention limit: nothing is trimmed")
        if not WORKFLOW_NAME.fullmatch(name):
            raise DefinitionError(f"invalid workflow name {name!r}: letters, digits, '_', '-'")
        self.name = name
        if SUBWORKFLOW_TYPE not in nodes:
            nodes = {**nodes, SUBWORKFLOW_TYPE: SUBWORKFLOW_NODE}
        self.engine = WorkflowEngine(
            definition,
            nodes,
            plugins,
            transforms=transforms,
            transform_engines=transform_engines,
            retention=retention,
            clock=clock,
            step_timeout=step_timeout,
        )
        self.archive = archive
        self.secrets = None if secrets is None else frozenset(secrets)
        self.start = start or self.engine.start_node_id
        self.engine.node(self.start)  # raises KeyError early for a bad start node
        self.ref = DefinitionRef(name=name, hash=self.engine.workflow.shape_hash())
        self.schedules: dict[str, Schedule] = {}
        if schedules:  # the schedules module (and cronsim) load only for a workflow with some
            from .schedules import named

            self.schedules = named(list(schedules))


def load_workflows(spec: str) -> list[Workflow]:
    """The workflows named by ``module`` or ``module:attribute`` (default ``workflows``).

    The attribute is a :class:`Workflow`, a list of them, or a function returning either:
    how every runtime finds the workflows it hosts (``refluxo dev --app``, ``REFLUXO_APP``).

    Raises:
        DefinitionError: the module cannot be imported or does not name workflows.
    """
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise DefinitionError(f"workflows {spec!r}: cannot import {module_name!r}: {exc}") from exc
    target: Any = getattr(module, attr or "workflows", None)
    if callable(target) and not isinstance(target, Workflow):
        target = target()
    found = [target] if isinstance(target, Workflow) else list(target or [])
    if not found or not all(isinstance(w, Workflow) for w in found):
        raise DefinitionError(f"workflows {spec!r} does not name a Workflow or a list of them")
    return found


@dataclass(frozen=True)
class DispatchResult:
    """What one delivery did, for the HTTP layer and the logs."""

    outcome: Outcome
    run_id: str
    version: int | None = None
    status: str | None = None
    detail: str | None = None


def _downstream(definition: WorkflowDefinition, node_id: str) -> set[str]:
    """``node_id`` and every node an edge path leads to from it."""
    targets: dict[str, list[str]] = {}
    for edge in definition.edges:
        targets.setdefault(edge.source, []).append(edge.target)
    seen, stack = {node_id}, [node_id]
    while stack:
        for target in targets.get(stack.pop(), []):
            if target not in seen:
                seen.add(target)
                stack.append(target)
    return seen


def _trimmed(snapshot: Snapshot, *, keep_outputs: bool) -> Snapshot:
    """``snapshot`` with only the newest result of each node (their outputs, or none)."""
    context = {
        node_id: [r if keep_outputs else r.model_copy(update={"output": None}) for r in rs[-1:]]
        for node_id, rs in snapshot.context.items()
    }
    metadata = {**snapshot.metadata, "trimmedToCancel": True}
    return snapshot.model_copy(update={"context": context, "metadata": metadata})


class RunService:
    """The service layer of runs: starts them, takes their events and cancels, and delivers
    their steps (:meth:`dispatch`, one step per message), over a :class:`StateStore` and a
    :class:`Scheduler`. Every front door (the HTTP API, the CLI, a queue handler) calls it.

    Args:
        workflows: the workflows this deployment hosts.
        store: where runs live.
        scheduler: how the next step gets delivered.
        globals: the deployment's secrets, a JSON object: passed to every executor and transform
            (only the names a workflow's ``secrets`` lists, when it has such a list), and
            masked in every output and error a step records (see :mod:`refluxo.core.secrets`).
        clock: epoch milliseconds.
        limits: what a run accepts: JSON depth, inbox size, text lengths (see :class:`Limits`).
        refused_retry_ms: how long a run refused for its definition waits before the next try.
        delivery_budget_ms: how long one delivery may go on running consecutive steps of an
            ``active`` run (each saved under compare-and-set, as a step of its own would be)
            before it schedules the next delivery; it stops at once at anything else (a wait,
            a retry, branches, the end). 0 runs one step per delivery; None (the default)
            takes :data:`DEFAULT_DELIVERY_BUDGET_MS`.
    """

    def __init__(
        self,
        workflows: Iterable[Workflow],
        store: StateStore,
        scheduler: Scheduler,
        *,
        globals: Any = None,
        clock: Callable[[], int] = now_ms,
        limits: Limits | None = None,
        refused_retry_ms: int = DEFAULT_REFUSED_RETRY_MS,
        delivery_budget_ms: int | None = None,
    ) -> None:
        if delivery_budget_ms is None:
            delivery_budget_ms = DEFAULT_DELIVERY_BUDGET_MS
        if delivery_budget_ms < 0:
            raise ValueError("delivery_budget_ms is 0 (one step per delivery) or more")
        self.delivery_budget_ms = delivery_budget_ms
        self.workflows = {w.name: w for w in workflows}
        archiving = [w.name for w in self.workflows.values() if w.archive]
        self._archiving = {
            w.name
            for w in self.workflows.values()
            if w.archive
            or (
                w.archive is None
                and w.engine.retention is not None
                and isinstance(store, ResultArchive)
            )
        }
        if archiving and not isinstance(store, ResultArchive):
            raise DefinitionError(
                f"workflow(s) {', '.join(archiving)} archive trimmed results, but "
                f"{type(store).__name__} keeps no archive; choose a store that does or drop "
                "archive=True"
            )
        self.store = store
        self.scheduler = scheduler
        self.globals = globals
        self.clock = clock
        self.limits = limits or Limits()
        self.refused_retry_ms = refused_retry_ms
        for workflow in self.workflows.values():
            self._scope(workflow)  # a scope on globals that are not an object fails here
            self._check_children(workflow)

    def _check_children(self, workflow: Workflow) -> None:
        """Refuse a sub-workflow node that names a workflow this deployment does not host."""
        engine = workflow.engine
        for node in engine.workflow.nodes:
            if engine.node_definitions[node.type] is not SUBWORKFLOW_NODE:
                continue
            name = node.data.get("workflow") if isinstance(node.data, Mapping) else None
            if not isinstance(name, str):
                raise DefinitionError(
                    f"workflow {workflow.name!r}: subworkflow node {node.id!r} needs a "
                    "'workflow' name in its data"
                )
            if "{{" not in name and name not in self.workflows:
                raise DefinitionError(
                    f"workflow {workflow.name!r}: subworkflow node {node.id!r} starts workflow "
                    f"{name!r}, which this deployment does not host"
                )

    def _scope(self, workflow: Workflow) -> Any:
        if workflow.secrets is None or self.globals is None:
            return self.globals
        if not isinstance(self.globals, Mapping):
            raise DefinitionError(
                f"workflow {workflow.name!r} lists the secrets it may use, but globals is not "
                "an object of named secrets"
            )
        return {k: v for k, v in self.globals.items() if k in workflow.secrets}

    # --- public operations (the HTTP API maps onto these) ----------------------------------

    def workflow(self, name: str) -> Workflow:
        """The workflow registered as ``name``; raises WorkflowNotFound."""
        try:
            return self.workflows[name]
        except KeyError:
            raise WorkflowNotFound(name) from None

    async def start(
        self,
        workflow: str,
        *,
        run_id: str | None = None,
        input: Any = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> tuple[Snapshot, bool]:
        """Start a run of ``workflow``; the first step gets ``input`` as its external payload.

        ``metadata`` is the new run's first metadata: sub-workflow nodes set ``parent`` (the
        parent's ``runId``, ``node`` and ``depth``; the parent is told when the run finishes),
        schedules set ``schedule``.

        Returns:
            The run's snapshot, and True if it was created now. The same ``run_id`` again
            returns the existing run and starts nothing (but re-sends its first delivery if
            the run never took a step, in case the first call died before scheduling it).

        Raises:
            WorkflowNotFound, ValueError (bad run id), WorkflowMismatch
            when the id belongs to a run of another workflow; NotStrictJson when ``input``
            breaks the JSON rule (see :mod:`refluxo.core.codec`); store and scheduler errors.
        """
        wf = self.workflow(workflow)
        run_id = check_run_id(run_id) if run_id is not None else os.urandom(16).hex()
        input = strict_json(input, max_depth=self.limits.max_depth, what="input")
        snapshot = wf.engine.create_initial_snapshot(
            run_id, wf.start, input=input, definition=wf.ref
        )
        if metadata is not None:
            snapshot.metadata.update(metadata)
        if await self.store.create(snapshot):
            await self._schedule_next(snapshot)
            return snapshot, True
        existing = await self.store.load(run_id)
        if existing.definition is not None and existing.definition.name != workflow:
            raise WorkflowMismatch(
                f"run {run_id!r} exists already as a run of workflow {existing.definition.name!r}"
            )
        if existing.last_step_version == 0 and existing.status == "active":
            await self._schedule_next(existing)
        return existing, False

    async def fire_tick(self, workflow: str, schedule: str, tick_ms: int) -> tuple[Snapshot, bool]:
        """Start the run of ``schedule``'s tick at ``tick_ms`` (once: its id derives from both).

        Returns:
            As :meth:`start`: the run, and True if this call created it.

        Raises:
            WorkflowNotFound; LookupError (no such schedule); store and scheduler errors.
        """
        wf = self.workflow(workflow)
        try:
            plan = wf.schedules[schedule]
        except KeyError:
            raise LookupError(f"workflow {workflow!r} has no schedule {schedule!r}") from None
        from .schedules import tick_run_id

        run_id = tick_run_id(workflow, schedule, tick_ms)
        mark = {"schedule": {"name": schedule, "tick": tick_ms}}
        return await self.start(workflow, run_id=run_id, input=plan.input, metadata=mark)

    def schedules(self) -> list[tuple[str, str, Schedule]]:
        """Every schedule of the hosted workflows: (workflow, schedule name, schedule)."""
        return [
            (wf.name, name, plan)
            for wf in self.workflows.values()
            for name, plan in wf.schedules.items()
        ]

    async def fire_due(self, checked: Mapping[str, int], now: int | None = None) -> dict[str, int]:
        """Start the runs of the ticks since each schedule was last checked; for a timer.

        ``checked`` maps ``workflow.schedule`` to the time (epoch ms) up to which its ticks
        were started; a schedule missing from it starts from ``now`` (a new schedule does not
        start the ticks before it was deployed). A schedule with ``catch_up`` starts each
        tick since (the newest :data:`~refluxo.core.schedules.MAX_CATCH_UP`); without, only
        the ticks at most :data:`~refluxo.core.schedules.ON_TIME_MS` old. A tick's run starts
        once however often this runs, so the caller may save the returned marks after the
        runs started, and a crash in between only starts nothing twice.

        Returns:
            The new marks (``workflow.schedule`` -> ``now``) for every hosted schedule.

        Raises:
            Store and scheduler errors (the runs started so far stay started).
        """
        from .schedules import MAX_CATCH_UP, ON_TIME_MS, ticks_between

        now = self.clock() if now is None else now
        marks: dict[str, int] = {}
        for workflow, name, plan in self.schedules():
            key = f"{workflow}.{name}"
            since = checked.get(key)
            if since is not None and since < now:
                if plan.catch_up:
                    ticks = ticks_between(plan, since, now, newest=MAX_CATCH_UP)
                else:
                    ticks = ticks_between(plan, max(since, now - ON_TIME_MS - 1), now)
                for tick in ticks:
                    await self.fire_tick(workflow, name, tick)
            marks[key] = max(now, since or now)
        return marks

    async def get(self, run_id: str) -> Snapshot:
        """The run's snapshot; raises RunNotFound."""
        return await self.store.load(run_id)

    async def send_event(
        self, run_id: str, payload: Any, name: str | None = None, *, event_id: str | None = None
    ) -> Snapshot:
        """Deliver an external event to a run; a waiting node consumes it, else it is kept.

        ``event_id`` makes a retried call safe: an event whose id is in the run's inbox, or
        among the last ids the run consumed (even once the run finished), is not added twice
        and the call answers as the first one did; the delivery that resumes the run is sent
        again (in case the first call died between saving the event and scheduling it).

        An event moves the run's version but not the step in flight: a step running while
        events arrive still saves, keeping them (see the module's docstring).

        Raises:
            RunNotFound, RunFinished (the run is completed or failed); NotStrictJson (the
            payload breaks the JSON rule, or the name or id is too long); PayloadTooLarge (the
            event alone is over ``max_inbox_bytes``, or the run would be over the store's
            limit); InboxFull (the inbox holds ``max_inbox_events`` events, or
            ``max_inbox_bytes``, and the run does not wait for this event now); store errors.
        """
        limits = self.limits
        payload = strict_json(payload, max_depth=limits.max_depth, what="payload")
        if name is not None:
            check_text(name, "the event name", limits.max_text_chars)
        if event_id is not None:
            check_text(event_id, "the event id", limits.max_text_chars)
        event = Event(payload=payload, name=name, received_at=self.clock(), id=event_id)
        size = len(event.to_json().encode("utf-8"))
        if size > limits.max_inbox_bytes:
            raise PayloadTooLarge("the event (max_inbox_bytes)", size, limits.max_inbox_bytes)
        for _ in range(_MAX_CONFLICT_RETRIES):
            current = await self.store.load(run_id)
            if event_id is not None and (
                any(e.id == event_id for e in current.inbox or [])
                or event_id in (current.consumed_events or [])
            ):
                await self._schedule_next(current, events_only=True)
                return current
            if current.is_terminal:
                raise RunFinished(f"run {run_id!r} is {current.status}; it takes no events")
            inbox = current.inbox or []
            # An event the run waits for now is taken even when the inbox is full: the next
            # step consumes it at once, and junk must not lock out the awaited event.
            probe = current.model_copy(update={"inbox": [event]})
            awaited = probe.next_event() is not None or any(
                probe.branch_view(b).next_event() is not None for b in probe.branches or {}
            )
            if not awaited and len(inbox) >= limits.max_inbox_events:
                raise InboxFull(
                    f"run {run_id!r} holds {len(inbox)} unconsumed events, the limit "
                    f"(max_inbox_events); it takes more once a node consumes some",
                    "max_inbox_events",
                )
            held = sum(len(e.to_json().encode("utf-8")) for e in inbox)
            if not awaited and held + size > limits.max_inbox_bytes:
                raise InboxFull(
                    f"run {run_id!r} holds {held} bytes of unconsumed events; this one "
                    f"({size} bytes) would pass the limit of {limits.max_inbox_bytes} "
                    "(max_inbox_bytes)",
                    "max_inbox_bytes",
                )
            updated = current.model_copy(
                update={
                    "inbox": [*inbox, event],
                    "version": current.version + 1,
                    "step_version": current.last_step_version,
                }
            )
            try:
                await self.store.save(updated, expected_version=current.version)
            except VersionConflict:
                continue
            if updated.next_event() is not None or updated.branches:
                await self._schedule_next(updated, events_only=True)
            return updated
        raise VersionConflict(run_id, -1, None)

    async def cancel(self, run_id: str, reason: str | None = None) -> Snapshot:
        """Cancel a run: it ends ``failed`` with the reason in its metadata; no step runs after.

        The reason is cut to its first 1000 characters. The run's unconsumed events are
        dropped (their ids are remembered, so a retried event call still answers 202), which
        with the room every store keeps free means a run of any size can be cancelled. A run
        stored before stores kept that room may still be too large: then only the newest
        result of each node is kept (and, if need be, without its output), and
        ``metadata.trimmedToCancel`` says so.

        Raises:
            RunNotFound, RunFinished (already completed or failed), NotStrictJson (the reason
            holds a lone surrogate), store errors.
        """
        if reason is not None:
            reason = check_text(reason[:_MAX_REASON_CHARS], "the reason", _MAX_REASON_CHARS)
        for _ in range(_MAX_CONFLICT_RETRIES):
            current = await self.store.load(run_id)
            if current.is_terminal:
                raise RunFinished(f"run {run_id!r} is already {current.status}")
            why = reason or "cancelled"
            cancelled = self._failed(current, f"cancelled: {why}")
            cancelled.metadata.update(cancelled=True, cancelledAt=self.clock())
            for keep_outputs in (None, True, False):
                if keep_outputs is not None:
                    cancelled = _trimmed(cancelled, keep_outputs=keep_outputs)
                try:
                    await self.store.save(cancelled, expected_version=current.version)
                except PayloadTooLarge:
                    if keep_outputs is False:
                        raise
                except VersionConflict:
                    break
                else:
                    await self._cancel_children(current, f"parent {run_id!r} cancelled: {why}")
                    await self._notify_parent(cancelled)
                    return cancelled
        raise VersionConflict(run_id, -1, None)

    async def retry(
        self,
        run_id: str,
        *,
        reason: str | None = None,
        force: bool = False,
        by: str | None = None,
    ) -> Snapshot:
        """Continue a failed run from the node that failed, with its attempts reset.

        The run's results are kept; ``metadata.retries`` gains ``{"at", "by", "reason",
        "failedReason"}``. A run refused for its definition (``metadata.refused``) is
        delivered again at once. A cancelled run is retried only with ``force``; a run moved
        to another deployment never is (it runs there).

        Raises:
            RunNotFound; NotRetryable (completed, running normally, cancelled without
            ``force``, moved, or failed before any node); NotStrictJson (the reason or label
            holds a lone surrogate); store and scheduler errors.
        """
        if reason is not None:
            reason = check_text(reason[:_MAX_REASON_CHARS], "the reason", _MAX_REASON_CHARS)
        if by is not None:
            by = check_text(by[:200], "the caller's label", 200)
        for _ in range(_MAX_CONFLICT_RETRIES):
            current = await self.store.load(run_id)
            metadata = dict(current.metadata)
            entry: dict[str, Any] = {"at": self.clock(), "by": by, "reason": reason}
            if current.status == "failed":
                if metadata.get("movedTo") is not None:
                    raise NotRetryable(
                        f"run {run_id!r} moved to {metadata['movedTo']!r}; it runs there"
                    )
                if metadata.get("cancelled") and not force:
                    raise NotRetryable(f"run {run_id!r} was cancelled; retry it with force")
                node_id = current.current_node_id
                if node_id is None:
                    raise NotRetryable(f"run {run_id!r} failed before any node; start it again")
                entry["failedReason"] = metadata.pop("failedReason", None)
                for key in ("cancelled", "cancelledAt", "refused"):
                    metadata.pop(key, None)
                first = not any(r.error is None for r in current.results(node_id))
                pending = True if current.input is not None and first else None
                pending = pending if node_id == self._start_of(current) else None
                update: dict[str, Any] = {"status": "active", "input_pending": pending}
            elif "refused" in metadata and not current.is_terminal:
                entry["refused"] = metadata.pop("refused")
                update = {}
            else:
                raise NotRetryable(
                    f"run {run_id!r} is {current.status}; only failed or refused runs are retried"
                )
            retries = metadata.get("retries")
            metadata["retries"] = [*(retries if isinstance(retries, list) else []), entry]
            update.update(
                metadata=metadata,
                version=current.version + 1,
                step_version=None,
                retry_state=None,
                wait=None if current.status == "failed" else current.wait,
            )
            retried = current.model_copy(update=update)
            try:
                await self.store.save(retried, expected_version=current.version)
            except VersionConflict:
                continue
            await self._schedule_next(retried)
            return retried
        raise VersionConflict(run_id, -1, None)

    def _start_of(self, snapshot: Snapshot) -> str | None:
        try:
            return self._workflow_of(snapshot).start
        except (WorkflowMismatch, WorkflowNotFound):
            return None

    async def rerun(
        self,
        run_id: str,
        from_node: str,
        *,
        input: Any = None,
        new_id: str | None = None,
        by: str | None = None,
    ) -> Snapshot:
        """Start a new run at ``from_node`` with the source run's results up to that point.

        The new run holds every result the source recorded before ``from_node`` first ran
        (all of them when it never ran; none of ``from_node``'s own), so ``{{ }}``
        expressions see what they saw in the source; ``input``, when given, goes to
        ``from_node`` as a run's input goes to its first node (from the start node without
        one, the source's input does). ``metadata.rerunOf`` of the
        new run names the source; the source's ``metadata.reruns`` gains the new run (the
        source's state is otherwise unchanged, and a step in flight on it still saves).

        Raises:
            RunNotFound (the source); NodeNotFound; WorkflowNotFound or WorkflowMismatch (the
            source's workflow is not deployed as it was); WorkflowMismatch (``new_id`` is
            taken); ValueError (bad ``new_id``); NotStrictJson; store and scheduler errors.
        """
        source = await self.store.load(run_id)
        workflow = self._workflow_of(source)
        try:
            workflow.engine.node(from_node)
        except KeyError:
            raise NodeNotFound(f"workflow {workflow.name!r} has no node {from_node!r}") from None
        new_id = check_run_id(new_id) if new_id is not None else os.urandom(16).hex()
        if input is None and from_node == workflow.start:
            input = source.input  # a rerun from the start is the same run again
        input = strict_json(input, max_depth=self.limits.max_depth, what="input")
        ran = [r.timestamp for r in source.results(from_node)]
        cut = min(ran) if ran else None
        # Timestamps are milliseconds: a result of the same millisecond as the node's first
        # run counts as before it unless its node comes after ``from_node`` in the graph.
        after = _downstream(workflow.engine.workflow, from_node)

        def before(node: str, result: NodeResult) -> bool:
            if cut is None:
                return True
            return result.timestamp < cut or (result.timestamp == cut and node not in after)

        context = {
            node: kept
            for node, results in source.context.items()
            if node != from_node or cut is None
            if (kept := [r for r in results if before(node, r)])
        }
        now = self.clock()
        link = {"run": run_id, "from": from_node, "at": now, "by": by}
        snapshot = workflow.engine.create_initial_snapshot(
            new_id, from_node, input=input, definition=workflow.ref
        ).model_copy(update={"context": context, "metadata": {"rerunOf": link}})
        if not await self.store.create(snapshot):
            raise WorkflowMismatch(f"a run with id {new_id!r} exists already")
        await self._schedule_next(snapshot)
        entry = {"run": new_id, "from": from_node, "at": now, "by": by}
        for _ in range(_MAX_CONFLICT_RETRIES):
            current = await self.store.load(run_id)
            reruns = current.metadata.get("reruns")
            metadata = {
                **current.metadata,
                "reruns": [*(reruns if isinstance(reruns, list) else []), entry],
            }
            # Like an event: the version moves, the step in flight keeps its own.
            linked = current.model_copy(
                update={
                    "metadata": metadata,
                    "version": current.version + 1,
                    "step_version": current.last_step_version,
                }
            )
            try:
                await self.store.save(linked, expected_version=current.version)
                break
            except VersionConflict:
                continue
            except PayloadTooLarge:
                break  # the link lives in the new run alone
        return snapshot

    async def export_run(self, run_id: str, *, version: int, to: str) -> Snapshot:
        """Hand a run over to another deployment: it ends here ``failed`` with reason ``moved``.

        Only when its stored version is still ``version`` (the one the caller read), so that
        nothing the caller did not see is lost. ``metadata.movedTo`` names ``to``; such a run
        is never retried here, so it cannot run twice. A step in flight here loses its save.

        Returns:
            The snapshot as it was before (what the other deployment imports).

        Raises:
            RunNotFound; RunFinished (completed or failed); VersionConflict (it changed since
            ``version``: read it again); NotStrictJson (``to`` holds a lone surrogate);
            store errors.
        """
        to = check_text(to[:2000], "the target", 2000)
        current = await self.store.load(run_id)
        if current.is_terminal:
            raise RunFinished(f"run {run_id!r} is {current.status}; there is nothing to move")
        if current.version != version:
            raise VersionConflict(run_id, version, current.version)
        moved = self._failed(current, "moved")
        moved.metadata.update(movedTo=to, movedAt=self.clock())
        await self.store.save(moved, expected_version=current.version)
        return current

    async def import_run(self, snapshot: Snapshot, *, source: str | None = None) -> Snapshot:
        """Continue here a run exported from another deployment (see :meth:`export_run`).

        The run keeps its id, results, wait and inbox; ``metadata.movedFrom`` records where
        it came from; its next delivery is scheduled as after a step. A run that moved away
        from here (``failed`` with ``metadata.movedTo``) may come back: its record is replaced.

        Raises:
            RunFinished (the snapshot is of a finished run); WorkflowNotFound or
            WorkflowMismatch (this deployment does not host its workflow with the same shape:
            the message says why, or the id is taken here); ValueError (a bad run id);
            PayloadTooLarge, NotStrictJson; store and scheduler errors.
        """
        if snapshot.is_terminal:
            raise RunFinished(
                f"run {snapshot.run_id!r} is {snapshot.status}; only a run that "
                "is active, waiting or paused can move"
            )
        check_run_id(snapshot.run_id)
        if snapshot.definition is None:
            raise WorkflowMismatch(
                f"run {snapshot.run_id!r} does not record its workflow, so its shape cannot "
                "be checked"
            )
        self._workflow_of(snapshot)
        metadata = {k: v for k, v in snapshot.metadata.items() if k != "refused"}
        moved_from: dict[str, Any] = {"at": self.clock()}
        if source is not None:
            moved_from["from"] = check_text(source[:2000], "the source", 2000)
        metadata["movedFrom"] = moved_from
        imported = snapshot.model_copy(
            update={"metadata": metadata, "version": snapshot.version + 1, "step_version": None}
        )
        if not await self.store.create(imported):
            # A run that moved away from here may come back: its record here is replaced.
            existing = await self.store.load(snapshot.run_id)
            if existing.status != "failed" or not existing.metadata.get("movedTo"):
                raise WorkflowMismatch(f"a run with id {snapshot.run_id!r} exists here already")
            version = max(existing.version, snapshot.version) + 1
            imported = imported.model_copy(update={"version": version})
            try:
                await self.store.save(imported, expected_version=existing.version)
            except VersionConflict:
                raise WorkflowMismatch(
                    f"run {snapshot.run_id!r} changed here while it was imported"
                ) from None
        await self._schedule_next(imported)
        return imported

    async def dispatch(self, message: DispatchMessage) -> DispatchResult:
        """Handle one scheduler delivery: at most one step of the run it names.

        Raises:
            BackendError: a store or scheduler failure; when ``transient``, deliver again.
        """
        try:
            snapshot = await self.store.load(message.run_id)
        except RunNotFound:
            return self._result("unknown_run", message.run_id)
        if message.branch is not None or snapshot.branches:
            return await self._dispatch_branch(message, snapshot)
        if message.version not in snapshot.accepted_versions:
            moved_on = (
                snapshot.last_step_version == message.version + 1
                or snapshot.chained_from == message.version
            )
            if moved_on and self._needs_delivery(snapshot):
                await self._schedule_next(snapshot)
                return self._result("recovered", message.run_id, snapshot)
            if snapshot.is_terminal:
                # The step that finished it may have died before telling its parent.
                await self._notify_parent(snapshot)
            return self._result("stale", message.run_id, snapshot)
        if snapshot.is_terminal:
            await self._notify_parent(snapshot)
            return self._result("finished", message.run_id, snapshot)

        not_due = await self._not_due(snapshot, message)
        if not_due is not None:
            return not_due
        try:
            workflow = self._workflow_of(snapshot)
        except (WorkflowMismatch, WorkflowNotFound) as exc:
            return await self._refuse(snapshot, message, str(exc))

        deadline = time.perf_counter() + self.delivery_budget_ms / 1000
        saved = await self._step(workflow, snapshot, chained_from=None)
        if saved is None:
            return self._result("conflict", message.run_id, snapshot)
        while self._chains(saved) and time.perf_counter() < deadline:
            # Each step of the chain is saved under compare-and-set like the first; a save
            # that loses stops the chain (whoever won schedules what follows).
            following = await self._step(workflow, saved, chained_from=message.version)
            if following is None:
                return self._result("stepped", message.run_id, saved)
            saved = following
        await self._schedule_next(saved)
        await self._notify_parent(saved)
        return self._result("stepped", message.run_id, saved)

    def _chains(self, snapshot: Snapshot) -> bool:
        """Whether a delivery may run the next step of ``snapshot`` itself (when time allows)."""
        return (
            self.delivery_budget_ms > 0
            and snapshot.status == "active"
            and not snapshot.branches
            and snapshot.current_node_id is not None
        )

    async def _step(
        self, workflow: Workflow, snapshot: Snapshot, *, chained_from: int | None
    ) -> Snapshot | None:
        """Run and save one step of ``snapshot``; the saved snapshot, or None when it lost."""
        base = snapshot
        if "refused" in base.metadata:
            metadata = {k: v for k, v in base.metadata.items() if k != "refused"}
            base = base.model_copy(update={"metadata": metadata})
        node_id = base.current_node_id
        started = time.perf_counter()
        scope = StepScope(
            snapshot=base, node_id=node_id or "", start=self.start, load=self.store.load
        )
        token = set_scope(scope)
        try:
            new = await workflow.engine.advance(
                base, self._scope(workflow), max_depth=self.limits.max_depth
            )
        finally:
            reset_scope(token)
        duration_ms = (time.perf_counter() - started) * 1000
        new = self._link_children(new, scope.started, node_id)
        if new.branches:
            new = self._settle(workflow, new)
        if new.chained_from != chained_from:
            new = new.model_copy(update={"chained_from": chained_from})
        if workflow.name in self._archiving and node_id is not None:
            await self._archive_trimmed(base, new, node_id)
        saved = await self._save_step(
            snapshot, new, node_id, self._merge_events(snapshot), retries=_MAX_EVENT_MERGES
        )
        if saved is _EXHAUSTED:
            # Only events moved the run, but so often that every merge lost: deliver the step
            # again rather than drop it (nothing else would schedule the run).
            raise StoreError(
                f"run {snapshot.run_id!r}: the step of node {node_id!r} lost "
                f"{_MAX_EVENT_MERGES} saves in a row to incoming events; deliver it again",
                transient=True,
            )
        if saved is None:
            self._log_step(new, node_id, "conflict", duration_ms)
            return None
        self._log_step(saved, node_id, "stepped", duration_ms)
        return saved

    async def _not_due(self, view: Snapshot, message: DispatchMessage) -> DispatchResult | None:
        """The outcome of a delivery for a run (or branch) that is not due yet, else None."""
        now = self.clock()
        due: int | None = None
        if view.status == "paused" and view.next_event() is None:
            due = view.due_at()
            if due is None:
                return self._result("waiting", message.run_id, view)
        elif view.status == "error":
            due = view.due_at() or 0
        if due is not None and due > now:
            await self._schedule_one(view, hop=message.hop + 1, branch=message.branch)
            return self._result("early", message.run_id, view)
        return None

    async def _dispatch_branch(
        self, message: DispatchMessage, snapshot: Snapshot
    ) -> DispatchResult:
        """One delivery for a run with branches: at most one step of the branch it names."""
        run_id = message.run_id
        if snapshot.is_terminal:
            await self._notify_parent(snapshot)
            return self._result("finished", run_id, snapshot)
        bid = message.branch
        branch = None if bid is None else (snapshot.branches or {}).get(bid)
        if bid is None or branch is None:
            # A delivery for the run from before it forked, or for a branch that ended: when
            # the step that forked or ended it was saved and its deliveries perhaps not sent,
            # send them (the copies a scheduler does not collapse find nothing to do).
            forked = bid is None and snapshot.last_step_version == message.version + 1
            ended = bid is not None and (snapshot.branches or snapshot.joined is not None)
            if (forked or ended) and self._needs_delivery(snapshot):
                await self._schedule_next(snapshot)
                return self._result("recovered", run_id, snapshot)
            return self._result("stale", run_id, snapshot)
        view = snapshot.branch_view(bid)
        if message.version != branch.version:
            if branch.version == message.version + 1 and self._needs_delivery(view):
                await self._schedule_one(view, branch=bid)
                return self._result("recovered", run_id, view)
            return self._result("stale", run_id, view)
        if view.is_terminal:
            return self._result("stale", run_id, view)
        not_due = await self._not_due(view, message)
        if not_due is not None:
            return not_due
        try:
            workflow = self._workflow_of(snapshot)
        except (WorkflowMismatch, WorkflowNotFound) as exc:
            return await self._refuse(snapshot, message, str(exc))
        node_id = view.current_node_id
        engine = workflow.engine
        started = time.perf_counter()
        wait = view.wait
        out_of_join: Snapshot | None = None
        if (
            wait is not None
            and wait.kind == "sleep"
            and view.joined is None
            and engine.join_mode(node_id) is not None
        ):
            # Slept on the way to a join: it joins without running the join node.
            out_of_join = view.model_copy(
                update={"status": "active", "wait": None, "version": view.version + 1}
            )
        scope = StepScope(
            snapshot=view, node_id=node_id or "", start=self.start, load=self.store.load
        )
        if out_of_join is None:
            token = set_scope(scope)
            try:
                out = await engine.advance(
                    view, self._scope(workflow), max_depth=self.limits.max_depth, branch=True
                )
            finally:
                reset_scope(token)
        else:
            out = out_of_join
        duration_ms = (time.perf_counter() - started) * 1000
        if workflow.name in self._archiving and node_id is not None:
            await self._archive_trimmed(view, out, node_id)

        def reapply(stored: Snapshot, _previous: Snapshot, _new: Snapshot) -> Snapshot | None:
            applied = self._apply_branch(workflow, stored, bid, view, out, node_id)
            if applied is None or not scope.started:
                return applied
            return self._link_children(applied, scope.started, None)

        new = reapply(snapshot, snapshot, snapshot)
        saved = None
        if new is not None:
            saved = await self._save_step(
                snapshot, new, node_id, reapply, retries=_MAX_BRANCH_REAPPLIES
            )
            if saved is _EXHAUSTED:
                raise StoreError(
                    f"run {run_id!r}: the step of branch {bid!r} lost "
                    f"{_MAX_BRANCH_REAPPLIES} saves in a row to other branches; deliver it again",
                    transient=True,
                )
        if saved is None:
            self._log_step(out, node_id, "conflict", duration_ms)
            return self._result("conflict", run_id, view)
        self._log_step(out, node_id, "stepped", duration_ms)
        if saved.status == "completed":  # every branch ended without a join
            await engine._hook("on_run_complete", lambda p: p.on_run_complete(saved))
        if saved.branches:
            started_ids = [b for b in saved.branches if b not in (snapshot.branches or {})]
            await self._schedule_next(saved, only=[bid, *started_ids])
        else:
            await self._schedule_next(saved)
        await self._notify_parent(saved)
        return self._result("stepped", run_id, saved)

    def _apply_branch(
        self,
        workflow: Workflow,
        fresh: Snapshot,
        bid: str,
        view: Snapshot,
        out: Snapshot,
        node_id: str | None,
    ) -> Snapshot | None:
        """Branch ``bid``'s step (``view`` -> ``out``) applied to the stored run ``fresh``.

        None when the branch moved since ``view`` was taken (another delivery stepped it) or
        an event the step consumed is gone: the step lost and is dropped.
        """
        branch = (fresh.branches or {}).get(bid)
        if fresh.is_terminal or branch is None or branch.version != view.version:
            return None
        retention = workflow.engine.retention
        context = dict(fresh.context)
        counts = None if fresh.counts is None and out.counts is None else dict(fresh.counts or {})
        succeeded = False
        for nid, results in out.context.items():
            added = out.execution_count(nid) - view.execution_count(nid)
            if added <= 0:
                continue
            merged = [*context.get(nid, []), *results[-added:]]
            if counts is not None:
                counts[nid] = fresh.execution_count(nid) + added
            if retention is not None and len(merged) > retention:
                merged = merged[-retention:]
            context[nid] = merged
            succeeded = succeeded or (nid == node_id and results[-1].error is None)
        inbox = list(fresh.inbox or [])
        consumed_events = fresh.consumed_events
        before, after = view.inbox or [], out.inbox or []
        if len(after) < len(before):
            i = next(
                (i for i, (a, b) in enumerate(zip(before, after, strict=False)) if a != b),
                len(after),
            )
            event = before[i]
            if event not in inbox:
                return None  # another branch consumed it first
            inbox.remove(event)
            if event.id is not None:
                seen = [*(consumed_events or []), event.id]
                consumed_events = seen[-_REMEMBERED_EVENT_IDS:]
        metadata = {k: v for k, v in fresh.metadata.items() if k != "refused"}
        branches = dict(fresh.branches or {})
        base = fresh.model_copy(
            update={
                "context": context,
                "counts": counts,
                "inbox": inbox or None,
                "consumed_events": consumed_events,
                "metadata": metadata,
                "step_version": None,
                "last_started_at": out.last_started_at,
                "total_execution_time": (fresh.total_execution_time or 0)
                + (out.total_execution_time or 0)
                - (view.total_execution_time or 0),
            }
        )
        if out.status == "failed":
            reason = str(out.metadata.get("failedReason", "failed"))
            if branch.on_failure != "continue":
                return self._failed(base, f"branch {bid}: {reason}")
            branches[bid] = branch.model_copy(
                update={
                    "status": "failed",
                    "node_id": node_id,
                    "version": out.version,
                    "error": reason,
                    "wait": None,
                    "retry_state": None,
                    "joined": None,
                }
            )
        elif out.branches:
            # Named after the save that adds them: unique in the run, and short.
            del branches[bid]
            for i, child in enumerate(out.branches.values()):
                branches[f"{fresh.version + 1}-{i}"] = child.model_copy(
                    update={"on_failure": child.on_failure or branch.on_failure}
                )
        else:
            branches[bid] = BranchState(
                node_id=out.current_node_id,
                status=out.status,
                version=out.version,
                source=node_id if succeeded else branch.source,
                wait=out.wait,
                retry_state=out.retry_state,
                joined=out.joined,
                on_failure=branch.on_failure,
            )
        stepped = base.model_copy(update={"branches": branches, "version": fresh.version + 1})
        return self._settle(workflow, stepped)

    def _settle(self, workflow: Workflow, snapshot: Snapshot) -> Snapshot:
        """Park branches that reached a join node, and release the joins they complete.

        An ``any`` join is released by the first branch that reaches it, and stops every
        other branch. Once no branch can step any more, each ``all`` join that branches
        reached runs with their results (one join goes on as the run itself; several go on
        as new branches); a run whose branches all ended without a join completes.
        """
        engine = workflow.engine
        branches = dict(snapshot.branches or {})
        for bid, b in branches.items():
            mode = engine.join_mode(b.node_id)
            if b.status != "active" or b.joined is not None or mode is None:
                continue
            branches[bid] = b = b.model_copy(update={"status": "joined"})
            if mode == "any":
                return self._release(snapshot, [b.node_id or ""], {bid: b})
        if any(b.status in ("active", "paused", "error") for b in branches.values()):
            return snapshot.model_copy(update={"branches": branches})
        joins = list(
            dict.fromkeys(b.node_id or "" for b in branches.values() if b.status == "joined")
        )
        return self._release(snapshot, joins, branches)

    def _release(
        self, snapshot: Snapshot, joins: list[str], branches: Mapping[str, BranchState]
    ) -> Snapshot:
        failures = {
            b.node_id or bid: {"error": b.error}
            for bid, b in branches.items()
            if b.status == "failed"
        }
        common: dict[str, Any] = {
            "branches": None,
            "wait": None,
            "retry_state": None,
            "step_version": None,
        }
        if not joins:
            return snapshot.model_copy(
                update={**common, "status": "completed", "current_node_id": None}
            )
        payloads: list[dict[str, Any]] = []
        for join in joins:
            payload: dict[str, Any] = {}
            for b in branches.values():
                if b.status == "joined" and b.node_id == join and b.source is not None:
                    last = snapshot.results(b.source)
                    payload[b.source] = last[-1].output if last else None
            payloads.append({**payload, **failures})
        if len(joins) == 1:
            return snapshot.model_copy(
                update={
                    **common,
                    "status": "active",
                    "current_node_id": joins[0],
                    "joined": payloads[0],
                }
            )
        released = {
            f"{snapshot.version}-j{i}": BranchState(node_id=join, status="active", joined=payload)
            for i, (join, payload) in enumerate(zip(joins, payloads, strict=True))
        }
        return snapshot.model_copy(update={"branches": released})

    async def reconcile(
        self, *, now: int | None = None, grace_ms: int = 300_000, limit: int = 100
    ) -> list[str]:
        """Schedule again the runs whose delivery was lost: due for longer than ``grace_ms``.

        A queue can drop a run's only delivery (a message dead-lettered after its retries, a
        task deleted after its attempts); the run then waits forever. This asks the store
        (which must be a :class:`~refluxo.core.ports.DueRuns`) for runs due before
        ``now - grace_ms`` and schedules each one's next delivery as a step would. A run that
        still has a delivery in flight gets a duplicate, which is harmless: one of the two
        finds the run moved on and does nothing. Call it periodically (a cron trigger, Cloud
        Scheduler, the embedded runtime's timer).

        Returns:
            The ids of the runs it scheduled.

        Raises:
            TypeError: the store cannot find due runs.
            BackendError: a store or scheduler failure (the runs scheduled so far stay so).
        """
        if not isinstance(self.store, DueRuns):
            raise TypeError(f"{type(self.store).__name__} cannot find due runs (no due_runs)")
        now = self.clock() if now is None else now
        found = await self.store.due_runs(due_before=now - grace_ms, limit=limit)
        scheduled: list[str] = []
        for run_id in found:
            if await self._deliver_again(run_id):
                scheduled.append(run_id)
        if scheduled:
            logger.warning(
                "reconcile: %d run(s) had lost their delivery and were scheduled again",
                len(scheduled),
                extra={"refluxo": {"reconciled": scheduled}},
            )
        return scheduled

    async def dead_lettered(self, message: DispatchMessage, reason: str) -> bool:
        """Handle a delivery that the platform gave up on (a dead-letter queue's message).

        Schedules the run's next delivery again if the run still needs one (the decision
        :meth:`reconcile` makes for one run), else does nothing; the run is never dropped.

        Returns:
            True when a delivery was scheduled.

        Raises:
            BackendError: a store or scheduler failure (deliver the dead letter again).
        """
        scheduled = await self._deliver_again(message.run_id)
        logger.warning(
            "dead-lettered delivery %s (%s): %s",
            message.key,
            reason,
            "scheduled again" if scheduled else "nothing to schedule",
            extra={"refluxo": {"run": message.run_id, "deadLetter": reason}},
        )
        return scheduled

    async def _deliver_again(self, run_id: str) -> bool:
        try:
            snapshot = await self.store.load(run_id)
        except RunNotFound:
            return False
        if not self._needs_delivery(snapshot):
            return False
        # A fresh key: the lost delivery's key may still be remembered by a deduplicating
        # scheduler (Cloud Tasks keeps a task's name for a while after deleting it), which
        # would collapse the new delivery into the lost one. Copies made within one second
        # still collapse.
        await self._schedule_next(snapshot, hop=_AGAIN_HOP + self.clock() // 1000)
        return True

    # --- internals ---------------------------------------------------------------------------

    def _link_children(self, new: Snapshot, started: list[str], node_id: str | None) -> Snapshot:
        """Record the children a step started (parent side) and a child's last node."""
        metadata = new.metadata
        if started:
            known = metadata.get("children")
            children = [c for c in known if isinstance(c, str)] if isinstance(known, list) else []
            children += [c for c in started if c not in children]
            metadata = {**metadata, "children": children[-MAX_REMEMBERED_CHILDREN:]}
        if new.status == "completed" and "parent" in metadata and node_id is not None:
            metadata = {**metadata, "lastNode": node_id}
        if metadata is new.metadata:
            return new
        return new.model_copy(update={"metadata": metadata})

    async def _notify_parent(self, child: Snapshot) -> None:
        """Tell a finished child's parent run (idempotent: the event's id is the child's)."""
        parent = child.metadata.get("parent")
        if not child.is_terminal or not isinstance(parent, dict):
            return
        parent_id = parent.get("runId")
        if not isinstance(parent_id, str):
            return
        name = child_event(child.run_id)
        payload = {"runId": child.run_id, "status": child.status}
        try:
            await self.send_event(parent_id, payload, name, event_id=name)
        except (RunNotFound, RunFinished):
            pass  # the parent is gone or finished (cancelled): nobody waits

    async def _cancel_children(self, parent: Snapshot, reason: str) -> None:
        children = parent.metadata.get("children")
        for child_id in children if isinstance(children, list) else []:
            if not isinstance(child_id, str):
                continue
            try:
                await self.cancel(child_id, reason)
            except (RunNotFound, RunFinished):
                pass

    def _merge_events(self, loaded: Snapshot) -> Reapply:
        """Re-applies a run's step after events alone moved it (its step version did not)."""

        def reapply(stored: Snapshot, previous: Snapshot, new: Snapshot) -> Snapshot | None:
            return with_events(loaded, stored, previous, new)

        return reapply

    async def _save_step(
        self,
        loaded: Snapshot,
        new: Snapshot,
        node_id: str | None,
        reapply: Reapply,
        *,
        retries: int = _MAX_CONFLICT_RETRIES,
    ) -> Snapshot | None:
        """Save a step's snapshot; the saved snapshot, or None when another step won.

        On a conflict, ``reapply`` applies the step's result again on the stored run: for a
        run's step when only events were added meanwhile (they join the step's inbox), for a
        branch's step when only other branches or events moved. It answers None when the step
        really lost. A snapshot the store refuses (too large, or not readable back) fails the
        run instead, keeping the state it had; retrying could not change the step's result.
        After ``retries`` re-applications that all lost, :data:`_EXHAUSTED`.
        """
        current, failure = loaded, None
        for _ in range(retries + 1):
            try:
                await self.store.save(new, expected_version=current.version)
                return new
            except (PayloadTooLarge, NotStrictJson) as exc:
                if failure is not None:
                    raise
                why = "is too large" if isinstance(exc, PayloadTooLarge) else "would not read back"
                failure = f"the snapshot after node {node_id!r} {why}: {exc}"
                new = self._failed(current, failure)
            except VersionConflict:
                stored = await self.store.load(loaded.run_id)
                again = reapply(stored, current, new)
                if again is None:
                    return None
                new = again if failure is None else self._failed(stored, failure)
                current = stored
        return _EXHAUSTED

    async def _refuse(
        self, snapshot: Snapshot, message: DispatchMessage, reason: str
    ) -> DispatchResult:
        """Record why the run cannot step here, and come back later: a redeploy resumes it."""
        logger.error("%s", reason, extra={"refluxo": {"run": snapshot.run_id}})
        now = self.clock()
        target, hop = snapshot, message.hop + 1
        recorded = snapshot.metadata.get("refused")
        if not isinstance(recorded, dict) or recorded.get("reason") != reason:
            marked = snapshot.model_copy(
                update={
                    "metadata": {**snapshot.metadata, "refused": {"reason": reason, "at": now}},
                    "version": snapshot.version + 1,
                    "step_version": None,
                }
            )
            try:
                await self.store.save(marked, expected_version=snapshot.version)
                target, hop = marked, 0
            except VersionConflict:
                return self._result("stale", message.run_id, snapshot)
            except (PayloadTooLarge, NotStrictJson):
                pass  # not recorded, but still retried
        delay = min(self.refused_retry_ms, self.scheduler.max_delay_ms)
        version = target.version
        if message.branch is not None:
            version, hop = message.version, message.hop + 1
        retry = DispatchMessage(
            run_id=target.run_id, version=version, hop=hop, branch=message.branch
        )
        await self.scheduler.schedule(retry, at=now + delay)
        return self._result("refused", message.run_id, target, reason)

    def _failed(self, snapshot: Snapshot, reason: str) -> Snapshot:
        """``snapshot`` failed for ``reason``: no wait, no retry, no inbox (ids remembered)."""
        inbox = snapshot.inbox or []
        seen = [*(snapshot.consumed_events or []), *(e.id for e in inbox if e.id is not None)]
        if len(reason) > _MAX_REASON_CHARS:
            reason = reason[: _MAX_REASON_CHARS - 1] + "…"
        return snapshot.model_copy(
            update={
                "status": "failed",
                "version": snapshot.version + 1,
                "step_version": None,
                "input_pending": None,
                "wait": None,
                "retry_state": None,
                "inbox": None,
                "branches": None,
                "joined": None,
                "consumed_events": seen[-_REMEMBERED_EVENT_IDS:] or None,
                "metadata": {**snapshot.metadata, "failedReason": reason},
            }
        )

    async def _archive_trimmed(self, old: Snapshot, new: Snapshot, node_id: str) -> None:
        # Archived before the save: a save that then loses its race leaves entries that the
        # winner writes again identically (they are results both loaded, never the new one).
        before = old.context.get(node_id, [])
        appended = new.execution_count(node_id) - old.execution_count(node_id)
        dropped = len(before) + appended - len(new.context.get(node_id, []))
        trimmed = before[:dropped] if dropped > 0 else []
        if trimmed:
            first_index = old.execution_count(node_id) - len(before)
            # Only workflows of a store that archives get here (checked when built): no
            # isinstance of the runtime-checkable protocol on every step.
            archive = cast(ResultArchive, self.store)
            await archive.archive_results(old.run_id, node_id, first_index, trimmed)

    def _workflow_of(self, snapshot: Snapshot) -> Workflow:
        ref = snapshot.definition
        if ref is None:
            if len(self.workflows) == 1:
                return next(iter(self.workflows.values()))
            raise WorkflowMismatch(f"run {snapshot.run_id!r} does not record its workflow")
        workflow = self.workflow(ref.name)
        if workflow.ref.hash != ref.hash:
            raise WorkflowMismatch(
                f"run {snapshot.run_id!r} was started on definition {ref.hash} of workflow "
                f"{ref.name!r}, but {workflow.ref.hash} is deployed and their nodes or edges "
                "differ; redeploy a compatible definition to continue it"
            )
        return workflow

    def _needs_delivery(self, snapshot: Snapshot) -> bool:
        if snapshot.is_terminal:
            return False
        if snapshot.branches:
            return any(self._needs_delivery(snapshot.branch_view(b)) for b in snapshot.branches)
        if snapshot.status == "paused" and snapshot.next_event() is not None:
            return True
        return snapshot.due_at() is not None

    async def _schedule_next(
        self,
        snapshot: Snapshot,
        *,
        hop: int = 0,
        only: Iterable[str] | None = None,
        events_only: bool = False,
    ) -> None:
        """Send the run's next delivery, or one per branch that needs one (those in ``only``;
        with ``events_only``, those with an event to take)."""
        if not snapshot.branches:
            await self._schedule_one(snapshot, hop=hop)
            return
        for bid in snapshot.branches if only is None else only:
            if bid not in snapshot.branches:
                continue
            view = snapshot.branch_view(bid)
            if not events_only or view.next_event() is not None:
                await self._schedule_one(view, hop=hop, branch=bid)

    async def _schedule_one(
        self, snapshot: Snapshot, *, hop: int = 0, branch: str | None = None
    ) -> None:
        if not self._needs_delivery(snapshot):
            return
        now = self.clock()
        due = 0 if snapshot.next_event() is not None else (snapshot.due_at() or 0)
        at: int | None = None
        if due > now:
            limit = self.scheduler.max_delay_ms
            # Hop targets are aligned on the due time, so duplicates pick the same one.
            hops_left = (due - now - 1) // limit
            at = due - hops_left * limit
        message = DispatchMessage(
            run_id=snapshot.run_id, version=snapshot.version, hop=hop, branch=branch
        )
        await self.scheduler.schedule(message, at=at)

    def _result(
        self,
        outcome: Outcome,
        run_id: str,
        snapshot: Snapshot | None = None,
        detail: str | None = None,
    ) -> DispatchResult:
        return DispatchResult(
            outcome=outcome,
            run_id=run_id,
            version=None if snapshot is None else snapshot.version,
            status=None if snapshot is None else snapshot.status,
            detail=detail,
        )

    def _log_step(
        self, new: Snapshot, node_id: str | None, outcome: str, duration_ms: float
    ) -> None:
        results = new.context.get(node_id or "", [])
        last = results[-1] if results else None
        fields = {
            "run": new.run_id,
            "workflow": new.definition.name if new.definition else None,
            "version": new.version,
            "node": node_id,
            "outcome": outcome,
            "status": new.status,
            "attempt": last.attempt if last is not None else None,
            "durationMs": round(duration_ms, 3),
        }
        if last is not None and last.error and outcome == "stepped":
            fields["error"] = last.error
        level = logging.WARNING if new.status in ("error", "failed") else logging.INFO
        logger.log(
            level,
            "run %s v%s %s -> %s (%s)",
            new.run_id,
            new.version,
            node_id or "-",
            new.status,
            outcome,
            extra={"refluxo": fields},
        )


Dispatcher = RunService
"""Deprecated name of :class:`RunService` (its delivery half, :meth:`RunService.dispatch`,
keeps the name "dispatch"). Kept without a warning while code written against it is moved."""
