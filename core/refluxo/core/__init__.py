"""refluxo.core: durable, step-by-step workflows; one snapshot in, one node run, one out.

What a workflow author needs: :class:`Workflow` (a named definition a deployment hosts),
:class:`WorkflowDefinition`, :class:`NodeDefinition` with :class:`RetryPolicy`,
:class:`StepResult` and :class:`Context` for executors, :class:`Plugin` / :class:`PluginHooks`,
:class:`Transform`, the errors, and :class:`WorkflowEngine` to run one in memory. What an
adapter author needs (ports, messages, the snapshot codec, :class:`RunService`, the HTTP API)
is gathered in :mod:`refluxo.core.adapter`; the names of it exported here too stay for
existing imports.

The core imports the standard library and pydantic only, does no I/O at import time, and runs
unchanged under CPython and Pyodide.
"""

from .codec import Limits
from .dispatcher import Dispatcher, DispatchResult, RunService, Workflow
from .engine import TIMEOUT_HANDLE, WorkflowEngine
from .errors import (
    BackendError,
    DefinitionError,
    ExpressionError,
    InboxFull,
    NonRetryableError,
    NotStrictJson,
    PayloadTooLarge,
    RefluxoError,
    RunFinished,
    RunNotFound,
    SchedulerError,
    StoreError,
    VersionConflict,
    WorkflowMismatch,
    WorkflowNotFound,
)
from .expressions import ExpressionLimits, ExpressionTransform, Transform
from .memory import MemoryScheduler, MemoryStateStore
from .model import (
    DefinitionRef,
    DispatchMessage,
    Edge,
    Event,
    Node,
    NodeResult,
    RetryState,
    Snapshot,
    Status,
    WaitState,
    WorkflowDefinition,
)
from .nodes import Context, NodeDefinition, RetryPolicy, StepResult
from .plugins import NodeContext, Plugin, PluginHooks
from .ports import Scheduler, StateStore
from .schedules import Schedule

_DEPRECATED = {"TransformEngine": ("Transform", Transform)}


def __getattr__(name: str) -> object:
    if name in _DEPRECATED:
        import warnings

        new, value = _DEPRECATED[name]
        warnings.warn(f"{name} is deprecated: use {new}", DeprecationWarning, stacklevel=2)
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "TIMEOUT_HANDLE",
    "BackendError",
    "Context",
    "DefinitionError",
    "DefinitionRef",
    "DispatchMessage",
    "DispatchResult",
    "Dispatcher",
    "Edge",
    "Event",
    "ExpressionError",
    "ExpressionLimits",
    "ExpressionTransform",
    "InboxFull",
    "Limits",
    "MemoryScheduler",
    "MemoryStateStore",
    "Node",
    "NodeContext",
    "NodeDefinition",
    "NodeResult",
    "NonRetryableError",
    "NotStrictJson",
    "PayloadTooLarge",
    "Plugin",
    "PluginHooks",
    "RefluxoError",
    "RetryPolicy",
    "RetryState",
    "RunFinished",
    "RunNotFound",
    "RunService",
    "Schedule",
    "Scheduler",
    "SchedulerError",
    "Snapshot",
    "StateStore",
    "Status",
    "StepResult",
    "StoreError",
    "Transform",
    "VersionConflict",
    "WaitState",
    "Workflow",
    "WorkflowDefinition",
    "WorkflowEngine",
    "WorkflowMismatch",
    "WorkflowNotFound",
]
