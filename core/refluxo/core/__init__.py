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

from typing import TYPE_CHECKING

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

if TYPE_CHECKING:
    from .codec import Limits
    from .dispatcher import Dispatcher, DispatchResult, RunService, Workflow
    from .engine import TIMEOUT_HANDLE, WorkflowEngine
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

# The names below load with their module on first use, not with the package: importing one
# module of the core (a Worker's store, the errors) does not import them all, and a cold
# start pays only for what its request touches.
_LAZY = {
    "Limits": "codec",
    "Dispatcher": "dispatcher",
    "DispatchResult": "dispatcher",
    "RunService": "dispatcher",
    "Workflow": "dispatcher",
    "TIMEOUT_HANDLE": "engine",
    "WorkflowEngine": "engine",
    "ExpressionLimits": "expressions",
    "ExpressionTransform": "expressions",
    "Transform": "expressions",
    "MemoryScheduler": "memory",
    "MemoryStateStore": "memory",
    "DefinitionRef": "model",
    "DispatchMessage": "model",
    "Edge": "model",
    "Event": "model",
    "Node": "model",
    "NodeResult": "model",
    "RetryState": "model",
    "Snapshot": "model",
    "Status": "model",
    "WaitState": "model",
    "WorkflowDefinition": "model",
    "Context": "nodes",
    "NodeDefinition": "nodes",
    "RetryPolicy": "nodes",
    "StepResult": "nodes",
    "NodeContext": "plugins",
    "Plugin": "plugins",
    "PluginHooks": "plugins",
    "Scheduler": "ports",
    "StateStore": "ports",
    "Schedule": "schedules",
}
_DEPRECATED = {"TransformEngine": ("Transform", "expressions")}


def __getattr__(name: str) -> object:
    import importlib

    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value  # found by plain attribute lookup from now on
        return value
    if name in _DEPRECATED:
        import warnings

        new, module = _DEPRECATED[name]
        warnings.warn(f"{name} is deprecated: use {new}", DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module(f".{module}", __name__), new)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


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
