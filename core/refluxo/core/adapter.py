"""What an adapter author needs: the ports, the messages, the codec and the service to serve.

:mod:`refluxo.core` is for workflow authors (definitions, nodes, retries, plugins). An adapter
(a state store, a scheduler, a platform's entry point) builds on this module instead:

* the ports it implements: :class:`StateStore`, :class:`Scheduler`, and optionally
  :class:`ResultArchive` (keeps results a retention limit trims) and :class:`DueRuns` (finds
  runs for the reconciler, by :func:`stored_due_time`);
* what goes through them: :class:`Snapshot` (stored with :func:`encode_snapshot`, which
  checks that it reads back and fits a byte limit, and read back with
  :func:`decode_snapshot` / :func:`decode_result`, which turn what is not a snapshot or a
  result into a final :class:`StoreError`) and :class:`DispatchMessage` (its ``key``
  deduplicates deliveries);
* what a delivery's outcome means for the queue: :class:`Redelivery` decides ack, retry
  after a delay or dead-letter (a :class:`Decision`) from a dispatch's outcome or exception
  and the attempts so far, with :func:`is_transient`;
* how a platform's entry point is put together: :class:`Settings` (from the environment,
  through :class:`Environment`), :func:`build_api` and :func:`load_app`, raising
  :class:`ConfigurationError`;
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

from .delivery import Decision, Redelivery, is_transient
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
    decode_result,
    decode_snapshot,
    encode_snapshot,
    now_ms,
)
from .ports import DueRuns, ResultArchive, Scheduler, StateStore, stored_due_time
from .settings import ConfigurationError, Environment, Settings, build_api, load_app

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "FINISH_HEADROOM_BYTES",
    "BackendError",
    "ConfigurationError",
    "Decision",
    "DispatchMessage",
    "DispatchResult",
    "DueRuns",
    "Environment",
    "HttpApi",
    "HttpRequest",
    "HttpResponse",
    "MemoryScheduler",
    "MemoryStateStore",
    "PayloadTooLarge",
    "Redelivery",
    "ResultArchive",
    "RunNotFound",
    "RunService",
    "Scheduler",
    "SchedulerError",
    "Settings",
    "Snapshot",
    "StateStore",
    "StoreError",
    "VersionConflict",
    "Workflow",
    "bearer_token",
    "build_api",
    "decode_result",
    "decode_snapshot",
    "encode_snapshot",
    "is_transient",
    "load_app",
    "load_workflows",
    "now_ms",
    "stored_due_time",
]
