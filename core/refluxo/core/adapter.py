"""What an adapter author needs: the ports, the messages, the codec and the service to serve.

:mod:`refluxo.core` is for workflow authors (definitions, nodes, retries, plugins). An adapter
(a state store, a scheduler, a platform's entry point) builds on this module instead:

* the ports it implements: :class:`StateStore`, :class:`Scheduler`, and optionally
  :class:`ResultArchive` (keeps results a retention limit trims) and :class:`DueRuns` (finds
  runs for the reconciler, by :func:`stored_due_time`);
* what goes through them: :class:`Snapshot` (stored with :func:`encode_snapshot`, which
  checks that it reads back and fits a byte limit, and read back with
  :meth:`Snapshot.from_stored`, which turns what is not a snapshot into a final
  :class:`StoreError`) and :class:`DispatchMessage` (its ``key`` deduplicates deliveries);
* the errors it raises: :class:`StoreError` and :class:`SchedulerError` (``transient`` says
  whether a retry may help), :class:`RunNotFound`, :class:`VersionConflict`,
  :class:`PayloadTooLarge`;
* what it serves: :class:`RunService` (start, events, cancel, and :meth:`RunService.dispatch`
  for each delivered message, whose :class:`DispatchResult` tells the queue what happened),
  :class:`HttpApi` over it (framework-neutral: :class:`HttpRequest` in,
  :class:`HttpResponse` out), and :func:`load_workflows` for an ``--app`` specification;
* reference implementations in memory: :class:`MemoryStateStore`, :class:`MemoryScheduler`.

The suites that prove an adapter are in :mod:`refluxo.testing`.
"""

from __future__ import annotations

from .dispatcher import DispatchResult, RunService, Workflow, load_workflows
from .errors import (
    BackendError,
    PayloadTooLarge,
    RunNotFound,
    SchedulerError,
    StoreError,
    VersionConflict,
)
from .http import DEFAULT_MAX_BODY_BYTES, HttpApi, HttpRequest, HttpResponse, bearer_token
from .memory import MemoryScheduler, MemoryStateStore
from .model import (
    FINISH_HEADROOM_BYTES,
    DispatchMessage,
    Snapshot,
    encode_snapshot,
    now_ms,
)
from .ports import DueRuns, ResultArchive, Scheduler, StateStore, stored_due_time

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "FINISH_HEADROOM_BYTES",
    "BackendError",
    "DispatchMessage",
    "DispatchResult",
    "DueRuns",
    "HttpApi",
    "HttpRequest",
    "HttpResponse",
    "MemoryScheduler",
    "MemoryStateStore",
    "PayloadTooLarge",
    "ResultArchive",
    "RunNotFound",
    "RunService",
    "Scheduler",
    "SchedulerError",
    "Snapshot",
    "StateStore",
    "StoreError",
    "VersionConflict",
    "Workflow",
    "bearer_token",
    "encode_snapshot",
    "load_workflows",
    "now_ms",
    "stored_due_time",
]
