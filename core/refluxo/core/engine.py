"""The stateless engine: one snapshot in, one node executed, one new snapshot out."""

from __future__ import annotations

import asyncio
import contextvars
import copy
import logging
import queue
import random
import sys
import threading
import warnings
from collections.abc import Awaitable, Callable, Coroutine, Generator, Mapping, Sequence
from datetime import timedelta
from types import CoroutineType
from typing import Any

from pydantic import BaseModel, ValidationError

from .codec import DEFAULT_MAX_DEPTH, strict_json
from .errors import DefinitionError, ExpressionError, NonRetryableError, NotStrictJson, RunFinished
from .expressions import ExpressionTransform, Transform
from .model import (
    BranchState,
    DefinitionRef,
    JoinMode,
    Node,
    NodeResult,
    RetryState,
    Snapshot,
    WaitState,
    WorkflowDefinition,
    now_ms,
)
from .nodes import Context, Executor, NodeDefinition, StepResult, is_async
from .plugins import NodeContext, PluginHooks, plugin_name
from .secrets import redactor

logger = logging.getLogger("refluxo.engine")

TIMEOUT_HANDLE = "timeout"
"""The ``sourceHandle`` a run follows when an event wait times out."""

DEFAULT_STEP_TIMEOUT_S = 240.0
"""How long an executor may run, in seconds, when neither its node nor its workflow says.

Below the shortest limit on one delivery among the platforms: the Cloud Function's 300 s
timeout (with room to load and save the run), and a Queues consumer's 15 minutes."""

MAX_EXECUTOR_THREADS = 64
"""Plain executors running at once (those past their timeout included) before a step is refused."""

# Pyodide (Cloudflare Workers) has no threads: plain executors run inline there.
_THREADS = sys.platform != "emscripten"

MAX_ERROR_CHARS = 2000
"""How much of an error's message a snapshot keeps (the rest is cut, marked with an ellipsis)."""

_REMEMBERED_EVENT_IDS = 32


class _Keep:
    """Marks an argument left unchanged."""


_KEEP = _Keep()


class _Fail(Exception):
    """An executor outcome that fails the run without retries."""


def _describe(exc: BaseException) -> str:
    if isinstance(exc, _Raised):
        return str(exc)
    if isinstance(exc, ValidationError):
        return f"ValidationError: {exc.error_count()} error(s): " + "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in exc.errors()
        )
    return f"{type(exc).__name__}: {exc}"


def redact(text: str, globals: Any) -> str:
    """``text`` with every secret of ``globals`` masked, in every form :mod:`.secrets` knows.

    Error messages are stored in snapshots and logs; an exception that quotes a secret it was
    given must not carry the secret there.
    """
    return redactor(globals).text(text)


def _seconds(value: float | timedelta | None) -> float | None:
    if value is None:
        return None
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    if not seconds > 0:
        raise ValueError(f"a step timeout must be positive, not {value!r}")
    return seconds


class _Raised(Exception):
    """Carries a BaseException an executor raised (SystemExit, KeyboardInterrupt, ...)
    out of its step, so that it fails the attempt instead of stopping the process."""

    def __init__(self, exc: BaseException) -> None:
        super().__init__(f"{type(exc).__name__}: {exc}")
        self.exc = exc


class _ExecutorThreads:
    """Daemon threads that run plain executors, kept for reuse (a thread start costs more
    than a small step).

    Not a ThreadPoolExecutor: its threads are joined at interpreter exit, so one hung executor
    would keep the process from stopping. A thread cannot be killed: one that runs past its
    step's timeout runs on, and counts against ``limit`` until it returns. A thread idle for
    ``idle_s`` ends.
    """

    def __init__(self, limit: int, idle_s: float = 60.0) -> None:
        self.limit = limit
        self.idle_s = idle_s
        self._jobs: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._busy = 0  # jobs submitted and not yet returned
        self._idle = 0  # threads waiting for a job and not yet promised one

    def submit(self, job: Callable[[], None]) -> None:
        """Run ``job`` in a thread; RuntimeError when ``limit`` jobs are running already."""
        with self._lock:
            if self._busy >= self.limit:
                raise RuntimeError(
                    f"{self._busy} plain executors are still running (some may be past their "
                    "timeout); this step is refused until one returns"
                )
            self._busy += 1
            spawn = self._idle == 0
            if not spawn:
                self._idle -= 1  # promised to this job
        self._jobs.put(job)
        if spawn:
            threading.Thread(target=self._work, name="refluxo-executor", daemon=True).start()

    def _work(self) -> None:
        while True:
            try:
                job = self._jobs.get(timeout=self.idle_s)
            except queue.Empty:
                with self._lock:
                    if self._idle > 0:  # Not promised a job: end.
                        self._idle -= 1
                        return
                continue  # A job was promised to an idle thread: this one takes it.
            try:
                job()
            finally:
                with self._lock:
                    self._busy -= 1
                    self._idle += 1


_executor_threads = _ExecutorThreads(MAX_EXECUTOR_THREADS)


async def _in_thread(executor: Executor, args: tuple[Any, ...]) -> Any:
    """``executor(*args)`` in an executor thread, awaited on the running loop."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()

    def settle(ok: bool, value: Any) -> None:
        if future.done():  # cancelled: the step timed out or the run was cancelled
            return
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)

    def work() -> None:
        try:
            outcome: tuple[bool, Any] = (True, executor(*args))
        except BaseException as exc:  # Handed to the step, which fails.
            outcome = (False, exc if isinstance(exc, Exception) else _Raised(exc))
        try:
            loop.call_soon_threadsafe(settle, *outcome)
        except RuntimeError:  # The loop closed while the executor ran.
            pass

    context = contextvars.copy_context()
    _executor_threads.submit(lambda: context.run(work))
    return await future


def _resume(coro: Coroutine[Any, Any, Any], first: Any) -> Generator[Any, Any, Any]:
    """Go on with ``coro``, already run to its first suspension (which yielded ``first``).

    What ``await coro`` would have done from there: every value it yields goes to the task,
    every value or exception the task sends back goes to ``coro``.
    """
    value = first
    while True:
        try:
            sent = yield value
        except GeneratorExit:
            coro.close()
            raise
        except BaseException as exc:
            try:
                value = coro.throw(exc)
            except StopIteration as stop:
                return stop.value
        else:
            try:
                value = coro.send(sent)
            except StopIteration as stop:
                return stop.value


class _Resumed:
    """An awaitable of a coroutine that has started already (see :func:`_resume`)."""

    __slots__ = ("coro", "first")

    def __init__(self, coro: Coroutine[Any, Any, Any], first: Any) -> None:
        self.coro = coro
        self.first = first

    def __await__(self) -> Generator[Any, Any, Any]:
        return _resume(self.coro, self.first)


async def run_executor(
    executor: Executor,
    args: tuple[Any, ...],
    timeout_s: float | None,
    node_id: str,
    *,
    thread: bool = True,
    executor_is_async: bool | None = None,
) -> Any:
    """Run one executor call to its result, within ``timeout_s`` seconds.

    A plain executor runs in an executor thread when ``thread`` (inline where there are no
    threads), so that blocking I/O does not stop the event loop; an awaitable it returns is
    awaited too. ``executor_is_async`` says whether ``executor`` is async, when the caller
    knows already (:attr:`NodeDefinition.is_async`).

    Raises:
        TimeoutError: the executor ran past ``timeout_s``; the attempt fails (retryable).
        Exception: whatever the executor raised; a BaseException that is not a cancellation
            of this step (SystemExit, KeyboardInterrupt, GeneratorExit, ...) is raised as an
            Exception saying what it was, so that it fails the attempt and nothing more.
        asyncio.CancelledError: the step itself was cancelled (its run was cancelled, or the
            process is stopping).
    """
    task = asyncio.current_task()
    cancelling = task.cancelling() if task is not None else 0
    if executor_is_async is None:
        executor_is_async = is_async(executor)
    # The deadline counts from now, though the timer is set only once the executor waits:
    # an executor that returns without ever waiting cannot be interrupted anyway, and most
    # quick ones never wait, so they skip setting and cancelling a timer.
    when = None if timeout_s is None else asyncio.get_running_loop().time() + timeout_s
    deadline: asyncio.Timeout | None = None
    try:
        if thread and _THREADS and not executor_is_async:
            deadline = asyncio.timeout_at(when)
            async with deadline:
                raw = await _in_thread(executor, args)
                if isinstance(raw, Awaitable):
                    raw = await raw
                return raw
        raw = executor(*args)
        if type(raw) is CoroutineType:
            try:
                first = raw.send(None)
            except StopIteration as stop:
                return stop.value
            raw = _Resumed(raw, first)
        elif not isinstance(raw, Awaitable):
            return raw
        deadline = asyncio.timeout_at(when)
        async with deadline:
            return await raw
    except TimeoutError:
        if deadline is not None and deadline.expired():
            message = f"node {node_id!r} ran past its timeout of {timeout_s:g} s"
            raise TimeoutError(message) from None
        raise
    except asyncio.CancelledError as exc:
        if task is None or task.cancelling() > cancelling:
            raise  # The step itself was cancelled: keep its meaning.
        raise _Raised(exc) from exc
    except (Exception, _Raised):
        raise
    except BaseException as exc:
        raise _Raised(exc) from exc


def _evolve(snapshot: Snapshot, update: dict[str, Any]) -> Snapshot:
    """``snapshot.model_copy(update=update)`` for updates of fields only, in fewer steps.

    The same shallow copy pydantic makes (fields, extra fields, which fields were set, private
    attributes), built directly.
    """
    copied = object.__new__(type(snapshot))
    fields = snapshot.__dict__.copy()
    fields.update(update)
    extra = snapshot.__pydantic_extra__
    object.__setattr__(copied, "__dict__", fields)
    object.__setattr__(copied, "__pydantic_extra__", None if extra is None else extra.copy())
    object.__setattr__(
        copied, "__pydantic_fields_set__", snapshot.__pydantic_fields_set__.union(update)
    )
    private = snapshot.__pydantic_private__
    object.__setattr__(copied, "__pydantic_private__", None if private is None else private.copy())
    return copied


class WorkflowEngine:
    """Executes a workflow one node at a time; holds no state between calls.

    Args:
        workflow: the graph, a :class:`WorkflowDefinition` or its plain JSON form.
        node_definitions: node type -> :class:`NodeDefinition`.
        plugins: lifecycle hooks, called in order.
        transforms: a pipeline run over each node's data before its executor; defaults to
            the built-in ``{{ ... }}`` expressions (pass ``[]`` for none).
        transform_engines: deprecated name of ``transforms``.
        clock: epoch milliseconds; injectable for tests.
        rng: the random source for retry jitter.
        retention: keep at most this many results per node in the snapshot (the newest);
            ``Snapshot.counts`` keeps the totals. None keeps every result.
        step_timeout: how long an executor may run (seconds or a ``timedelta``) when its
            :class:`NodeDefinition` sets no ``timeout``; None sets no limit.

    Several edges leaving one node for the same handle fork the run: each target starts a
    parallel branch (see :class:`~refluxo.model.BranchState`). A node where branches meet (one
    with a ``join`` mode, or with edges from two or more nodes) waits for them.

    Raises:
        DefinitionError: the graph has unknown node types, duplicate ids, dangling edges or two
            edges from one source and handle to one target. The message names the culprit.
    """

    def __init__(
        self,
        workflow: WorkflowDefinition | Mapping[str, Any],
        node_definitions: Mapping[str, NodeDefinition],
        plugins: Sequence[PluginHooks] = (),
        *,
        transforms: Sequence[Transform] | None = None,
        transform_engines: Sequence[Transform] | None = None,
        clock: Callable[[], int] = now_ms,
        rng: random.Random | None = None,
        retention: int | None = None,
        step_timeout: float | timedelta | None = DEFAULT_STEP_TIMEOUT_S,
    ) -> None:
        if not isinstance(workflow, WorkflowDefinition):
            try:
                workflow = WorkflowDefinition.model_validate(workflow)
            except ValidationError as exc:
                raise DefinitionError(f"invalid workflow definition: {exc}") from exc
        if retention is not None and retention < 1:
            raise ValueError("retention keeps at least one result per node")
        self.workflow = workflow
        self.node_definitions = dict(node_definitions)
        self.plugins = list(plugins)
        if transform_engines is not None:
            warnings.warn(
                "transform_engines= is deprecated: use transforms=",
                DeprecationWarning,
                stacklevel=2,
            )
            transforms = transform_engines if transforms is None else transforms
        self.transforms: list[Transform] = (
            [ExpressionTransform()] if transforms is None else list(transforms)
        )
        self.clock = clock
        self._rng = rng
        self.retention = retention
        self.step_timeout = _seconds(step_timeout)
        self._nodes, self._edges = self._index(workflow)
        self._joins = self._join_modes(workflow)
        self._copy_data = not self.transforms

    @property
    def rng(self) -> random.Random:
        """The random source for retry jitter, seeded from the system on first use.

        Not at construction: Python Workers refuse entropy while their top level runs (the
        memory snapshot taken at deploy would repeat it), and workflows are often built there.
        """
        if self._rng is None:
            self._rng = random.Random()
        return self._rng

    def _index(
        self, workflow: WorkflowDefinition
    ) -> tuple[dict[str, Node], dict[tuple[str, str | None], list[str]]]:
        nodes: dict[str, Node] = {}
        for node in workflow.nodes:
            if node.id in nodes:
                raise DefinitionError(f"duplicate node id {node.id!r}")
            if node.type not in self.node_definitions:
                raise DefinitionError(
                    f"node {node.id!r} has type {node.type!r}, which has no node definition"
                )
            nodes[node.id] = node
        edges: dict[tuple[str, str | None], list[str]] = {}
        edge_ids: set[str] = set()
        for edge in workflow.edges:
            if edge.id in edge_ids:
                raise DefinitionError(f"duplicate edge id {edge.id!r}")
            edge_ids.add(edge.id)
            for end in (edge.source, edge.target):
                if end not in nodes:
                    raise DefinitionError(f"edge {edge.id!r} points to unknown node {end!r}")
            targets = edges.setdefault((edge.source, edge.source_handle), [])
            if edge.target in targets:
                handle = "no handle" if edge.source_handle is None else repr(edge.source_handle)
                raise DefinitionError(
                    f"edge {edge.id!r}: node {edge.source!r} already has an edge for {handle} "
                    f"to {edge.target!r}"
                )
            targets.append(edge.target)
        if not nodes:
            raise DefinitionError("a workflow needs at least one node")
        return nodes, edges

    @staticmethod
    def _join_modes(workflow: WorkflowDefinition) -> dict[str, JoinMode]:
        sources: dict[str, set[str]] = {}
        for edge in workflow.edges:
            sources.setdefault(edge.target, set()).add(edge.source)
        return {
            n.id: n.join or "all"
            for n in workflow.nodes
            if n.join is not None or len(sources.get(n.id, ())) > 1
        }

    def join_mode(self, node_id: str | None) -> JoinMode | None:
        """How branches reaching ``node_id`` wait there, or None when it is no join node."""
        return None if node_id is None else self._joins.get(node_id)

    @property
    def start_node_id(self) -> str:
        """The node a run starts at: the one node without incoming edges, else the first."""
        targets = {target for found in self._edges.values() for target in found}
        roots = [n.id for n in self.workflow.nodes if n.id not in targets]
        return roots[0] if len(roots) == 1 else self.workflow.nodes[0].id

    def node(self, node_id: str) -> Node:
        """The node with id ``node_id``; raises KeyError when there is none."""
        return self._nodes[node_id]

    def next_node_id(self, node_id: str, handle: str | None = None) -> str | None:
        """The target of ``node_id``'s (first) edge for ``handle``, or None without one."""
        targets = self._edges.get((node_id, handle))
        return targets[0] if targets else None

    def next_node_ids(self, node_id: str, handle: str | None = None) -> list[str]:
        """Every target of ``node_id``'s edges for ``handle``: more than one forks the run."""
        return list(self._edges.get((node_id, handle), ()))

    def create_initial_snapshot(
        self,
        run_id: str,
        start_node_id: str | None = None,
        *,
        input: Any = None,
        definition: DefinitionRef | None = None,
    ) -> Snapshot:
        """A new ``active`` snapshot at version 0, about to run ``start_node_id``."""
        start = start_node_id or self.start_node_id
        if start not in self._nodes:
            raise DefinitionError(f"start node {start!r} is not in the workflow")
        return Snapshot(
            run_id=run_id,
            status="active",
            current_node_id=start,
            version=0,
            last_started_at=self.clock(),
            total_execution_time=0,
            input=input,
            input_pending=True if input is not None else None,
            definition=definition,
        )

    async def execute(
        self,
        *,
        snapshot: Snapshot,
        external_payload: Any = None,
        step_limit: int = 100,
        globals: Any = None,
    ) -> Snapshot:
        """Run steps until the run is no longer ``active`` (paused, retry pending, finished).

        The first step gets ``external_payload``. After ``step_limit`` steps a still active run
        is returned ``failed`` with the reason in ``metadata["failedReason"]``, and the
        plugins' ``on_run_fail`` hooks are called as for any other failure. A run that forks
        is returned as it forked: its branches step through a :class:`RunService`.
        """
        current = snapshot
        if current.is_terminal:
            return current
        if current.branches:
            raise DefinitionError(
                f"run {current.run_id!r} has parallel branches: step it with a RunService"
            )
        payload = external_payload
        for _ in range(step_limit):
            current = await self.execute_step(current, payload, globals)
            payload = None
            if current.status != "active" or current.branches:
                return current
        failed = current.model_copy(
            update={
                "status": "failed",
                "version": current.version + 1,
                "metadata": {
                    **current.metadata,
                    "failedReason": f"step limit of {step_limit} exceeded",
                },
            }
        )
        await self._hook("on_run_fail", lambda p: p.on_run_fail(failed))
        return failed

    async def advance(
        self,
        snapshot: Snapshot,
        globals: Any = None,
        *,
        max_depth: int = DEFAULT_MAX_DEPTH,
        branch: bool = False,
    ) -> Snapshot:
        """Execute the snapshot's next step with the payload the run holds for it.

        A paused run consumes the first matching event of its inbox (see
        :meth:`Snapshot.next_event`): the node runs again with that event's payload, even a
        null one, and its event id is remembered. Otherwise a run whose input is pending
        (``Snapshot.input_pending``) gives the input to the step; a join node released by its
        branches gets their results (``Snapshot.joined``); else the step gets none.
        ``branch`` says the snapshot is one branch's view (:meth:`Snapshot.branch_view`): the
        run's start and end hooks are not called for it.
        The output must be strict JSON nested at most ``max_depth`` deep (see
        :mod:`refluxo.core.codec`), or the node fails without retries.

        Raises:
            RunFinished, DefinitionError: as :meth:`execute_step`.
        """
        index = snapshot.next_event()
        if index is not None:
            inbox = list(snapshot.inbox or [])
            event = inbox.pop(index)
            update: dict[str, Any] = {"inbox": inbox or None}
            if event.id is not None:
                seen = [*(snapshot.consumed_events or []), event.id]
                update["consumed_events"] = seen[-_REMEMBERED_EVENT_IDS:]
            base = snapshot.model_copy(update=update)
            return await self._step(base, event.payload, globals, True, max_depth, branch)
        payload = snapshot.input if snapshot.input_pending else snapshot.joined
        return await self._step(snapshot, payload, globals, False, max_depth, branch)

    async def execute_step(
        self, snapshot: Snapshot, external_payload: Any = None, globals: Any = None
    ) -> Snapshot:
        """Execute one node and return the next snapshot (``version + 1``); never mutates input.

        ``active``: runs the current node. ``error``: retries the failed node now (the caller
        decides when; see ``Snapshot.due_at``). ``paused``: after a sleep, goes on with the
        next node; otherwise runs the paused node again with ``external_payload``, or takes
        the ``timeout`` edge when an event wait is past its deadline and no payload is given.

        Raises:
            RunFinished: the snapshot is completed or failed.
            DefinitionError: the snapshot's current node is not in this workflow.
        """
        delivered = external_payload is not None
        return await self._step(snapshot, external_payload, globals, delivered, DEFAULT_MAX_DEPTH)

    async def _step(
        self,
        snapshot: Snapshot,
        external_payload: Any,
        globals: Any,
        delivered: bool,
        max_depth: int,
        branch: bool = False,
    ) -> Snapshot:
        if snapshot.is_terminal:
            raise RunFinished(f"run {snapshot.run_id!r} is {snapshot.status}")
        if snapshot.branches:
            raise DefinitionError(
                f"run {snapshot.run_id!r} has parallel branches: step each one "
                "(Snapshot.branch_view) through a RunService"
            )
        start = self.clock()
        plugins = bool(self.plugins)
        if plugins and snapshot.last_step_version == 0 and not branch:
            await self._hook("on_run_start", lambda p: p.on_run_start(snapshot))

        base = snapshot
        payload = external_payload
        wait = snapshot.wait if snapshot.status == "paused" else None
        if wait is not None and wait.kind == "sleep":
            payload = None
        elif (
            wait is not None
            and not delivered
            and wait.until is not None
            and start >= wait.until
            and snapshot.current_node_id is not None
        ):
            return await self._timeout(snapshot, snapshot.current_node_id, start)

        node_id = base.current_node_id
        if node_id is None:
            return self._finish(base, start, status="completed", context=base.context)
        node = self._nodes.get(node_id)
        if node is None:
            raise DefinitionError(
                f"run {snapshot.run_id!r} is at node {node_id!r}, which is not in this workflow"
            )
        definition = self.node_definitions[node.type]
        retry = base.retry_state
        attempt = retry.attempts + 1 if retry is not None and retry.node_id == node_id else 1
        context = Context(base.context, base.counts)
        if plugins:
            ctx = NodeContext(
                node=node,
                definition=definition,
                snapshot=snapshot,
                input=node.data,
                external_payload=payload,
                globals=globals,
                attempt=attempt,
            )
            await self._hook("on_before_node", lambda p: p.on_before_node(ctx))

        data: Any = node.data
        try:
            try:
                data = copy.deepcopy(node.data) if self._copy_data else node.data
                for transform in self.transforms:
                    data = await transform.transform(data, context, globals)
                if definition.input_model is not None:
                    data = definition.input_model.model_validate(data)
            except (ValidationError, ExpressionError) as exc:
                raise _Fail(_describe(exc)) from exc
            raw = await run_executor(
                definition.executor,
                (data, context, payload, globals),
                self.step_timeout if definition.timeout is None else definition.timeout_s,
                node_id,
                thread=definition.thread,
                executor_is_async=definition.is_async,
            )
            if isinstance(raw, StepResult):
                result: StepResult | None = raw
                raw = raw.data
            else:
                result = None  # a plain value: the node's output, the edge without a handle
            output = self._output(definition, raw, node_id, max_depth)
            if globals is not None:
                # What an executor returns is recorded: it must not carry a secret there either.
                output = redactor(globals).value(output)
        except Exception as exc:
            if isinstance(exc, _Fail):
                cause, message, retryable = exc.__cause__ or exc, str(exc), False
            else:
                cause, message = exc, _describe(exc)
                retryable = not isinstance(exc, NonRetryableError)
                if isinstance(exc, _Raised):
                    logger.warning("node %r raised %s; the attempt fails", node_id, exc)
            failed_ctx = NodeContext(
                node=node,
                definition=definition,
                snapshot=snapshot,
                input=data,
                external_payload=payload,
                globals=globals,
                error=cause,
                attempt=attempt,
            )
            return await self._error(base, failed_ctx, message, start, retryable)

        after = (
            NodeContext(
                node=node,
                definition=definition,
                snapshot=snapshot,
                input=data,
                external_payload=payload,
                globals=globals,
                output=output,
                attempt=attempt,
            )
            if plugins
            else None
        )
        wait_request = None if result is None else result.wait
        if (result is not None and result.pause) or (
            wait_request is not None and wait_request.kind == "event"
        ):
            new_wait = None
            if wait_request is not None:
                until = wait_request.until
                if until is None and wait is not None and wait.kind == "event":
                    until = wait.until  # waiting again keeps the deadline it had
                if until is None and wait_request.delay_ms is not None:
                    until = start + wait_request.delay_ms
                new_wait = WaitState(kind="event", event=wait_request.event, until=until)
            if after is not None:
                await self._hook("on_after_node", lambda p: p.on_after_node(after))
            paused = self._finish(base, start, status="paused", context=base.context, wait=new_wait)
            if plugins:
                await self._hook("on_run_pause", lambda p: p.on_run_pause(paused))
            return paused

        entry = NodeResult(output=output, timestamp=self.clock(), attempt=attempt)
        new_context, counts = self._record(base, node_id, entry)
        targets = self.next_node_ids(node_id, None if result is None else result.next_handle)
        next_id = targets[0] if targets else None
        if after is not None:
            await self._hook("on_after_node", lambda p: p.on_after_node(after))
        sleep: WaitState | None = None
        if wait_request is not None:
            until = wait_request.until
            if until is None:
                until = start + (wait_request.delay_ms or 0)
            sleep = WaitState(kind="sleep", until=until)
        if len(targets) > 1:
            forked = self._finish(
                base, start, status="active", context=new_context, counts=counts, current=None
            )
            return forked.model_copy(update={"branches": self._fork(forked, node, targets, sleep)})
        if sleep is not None:
            slept = self._finish(
                base,
                start,
                status="paused",
                context=new_context,
                counts=counts,
                current=next_id,
                wait=sleep,
            )
            await self._hook("on_run_pause", lambda p: p.on_run_pause(slept))
            return slept
        done = self._finish(
            base,
            start,
            status="active" if next_id is not None else "completed",
            context=new_context,
            counts=counts,
            current=next_id,
        )
        if plugins and done.status == "completed" and not branch:
            await self._hook("on_run_complete", lambda p: p.on_run_complete(done))
        return done

    @staticmethod
    def _fork(
        forked: Snapshot, node: Node, targets: list[str], sleep: WaitState | None
    ) -> dict[str, BranchState]:
        """One branch per target, named after the step that forked them (unique in the run)."""
        return {
            f"{forked.version}-{i}": BranchState(
                node_id=target,
                status="paused" if sleep is not None else "active",
                wait=sleep,
                source=node.id,
                on_failure=node.on_branch_failure,
            )
            for i, target in enumerate(targets)
        }

    def _output(self, definition: NodeDefinition, data: Any, node_id: str, max_depth: int) -> Any:
        try:
            if definition.output_model is not None:
                model = (
                    data
                    if isinstance(data, definition.output_model)
                    else definition.output_model.model_validate(data)
                )
                data = model.model_dump(mode="json")
            elif isinstance(data, BaseModel):
                data = data.model_dump(mode="json")
            return strict_json(data, max_depth=max_depth, what="output")
        except ValidationError as exc:
            raise _Fail(f"output of node {node_id!r} is invalid: {_describe(exc)}") from exc
        except NotStrictJson as exc:
            raise _Fail(f"output of node {node_id!r} is not JSON-compatible: {exc}") from exc

    async def _timeout(self, snapshot: Snapshot, node_id: str, start: int) -> Snapshot:
        event = snapshot.wait.event if snapshot.wait else None
        what = f"event {event!r}" if event else "an event"
        target = self.next_node_id(node_id, TIMEOUT_HANDLE)
        entry = NodeResult(
            output=None, timestamp=start, error=f"EventTimeout: no {what} in time", attempt=1
        )
        new_context, counts = self._record(snapshot, node_id, entry)
        if target is None:
            failed = self._finish(
                snapshot,
                start,
                status="failed",
                context=new_context,
                counts=counts,
                metadata={**snapshot.metadata, "failedReason": f"timed out waiting for {what}"},
            )
            await self._hook("on_run_fail", lambda p: p.on_run_fail(failed))
            return failed
        return self._finish(
            snapshot, start, status="active", context=new_context, counts=counts, current=target
        )

    async def _error(
        self, base: Snapshot, ctx: NodeContext, message: str, start: int, retryable: bool
    ) -> Snapshot:
        """The snapshot after a failed attempt; ``ctx`` is what ``on_node_error`` gets."""
        node_id = ctx.node.id
        attempt = ctx.attempt
        message = redact(message, ctx.globals)
        if len(message) > MAX_ERROR_CHARS:
            message = message[: MAX_ERROR_CHARS - 1] + "…"
        entry = NodeResult(output=None, timestamp=self.clock(), error=message, attempt=attempt)
        new_context, counts = self._record(base, node_id, entry)
        await self._hook("on_node_error", lambda p: p.on_node_error(ctx))
        policy = ctx.definition.retry_policy
        if retryable and policy is not None and attempt < policy.max_attempts:
            next_at = self.clock() + policy.delay_ms(attempt, self.rng)
            return self._finish(
                base,
                start,
                status="error",
                context=new_context,
                counts=counts,
                retry_state=RetryState(node_id=node_id, attempts=attempt, next_retry_at=next_at),
            )
        failed = self._finish(
            base,
            start,
            status="failed",
            context=new_context,
            counts=counts,
            metadata={**base.metadata, "failedReason": f"node {node_id!r} failed: {message}"},
        )
        await self._hook("on_run_fail", lambda p: p.on_run_fail(failed))
        return failed

    def _record(
        self, snapshot: Snapshot, node_id: str, entry: NodeResult
    ) -> tuple[dict[str, list[NodeResult]], dict[str, int] | None]:
        context = dict(snapshot.context)
        kept = context.get(node_id, [])
        counts = snapshot.counts
        if self.retention is not None:
            counts = dict(counts or {})
            counts[node_id] = snapshot.execution_count(node_id) + 1
            if len(kept) >= self.retention:  # one copy: the newest that stay, and the new one
                kept = kept[len(kept) - self.retention + 1 :]
        context[node_id] = [*kept, entry]
        return context, counts

    def _finish(
        self,
        base: Snapshot,
        start: int,
        *,
        status: str,
        context: dict[str, list[NodeResult]],
        counts: dict[str, int] | None = None,
        current: str | _Keep | None = _KEEP,
        wait: WaitState | None = None,
        retry_state: RetryState | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> Snapshot:
        update: dict[str, Any] = {
            "status": status,
            "context": context,
            "version": base.version + 1,
            "last_started_at": start,
            "total_execution_time": (base.total_execution_time or 0) + (self.clock() - start),
            "wait": wait,
            "retry_state": retry_state,
            "step_version": None,
            # The input goes to the first node until it gets past a retry.
            "input_pending": base.input_pending if status == "error" else None,
            "joined": base.joined if status == "error" else None,
        }
        if counts is not None:
            update["counts"] = counts
        if not isinstance(current, _Keep):
            update["current_node_id"] = current
        if metadata is not None:
            update["metadata"] = metadata
        return _evolve(base, update)

    async def _hook(self, name: str, call: Callable[[PluginHooks], Awaitable[None] | None]) -> None:
        for plugin in self.plugins:
            try:
                outcome = call(plugin)
                if isinstance(outcome, Awaitable):
                    await outcome
            except Exception:
                logger.exception(
                    "plugin %s: hook %s raised; the step goes on", plugin_name(plugin), name
                )
