"""refluxo.core: durable, step-by-step workflows; one snapshot in, one node run, one out.

The core imports the standard library and pydantic only, does no I/O at import time, and runs
unchanged under CPython and Pyodide.
"""

from .codec import Limits
from .dispatcher import Dispatcher, DispatchResult, Workflow
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
from .expressions import ExpressionLimits, ExpressionTransform, TransformEngine
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
from .plugins import NodeContext, Plugin
from .ports import Scheduler, StateStore
from .schedules import Schedule

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
    "RefluxoError",
    "RetryPolicy",
    "RetryState",
    "RunFinished",
    "RunNotFound",
    "Schedule",
    "Scheduler",
    "SchedulerError",
    "Snapshot",
    "StateStore",
    "Status",
    "StepResult",
    "StoreError",
    "TransformEngine",
    "VersionConflict",
    "WaitState",
    "Workflow",
    "WorkflowDefinition",
    "WorkflowEngine",
    "WorkflowMismatch",
    "WorkflowNotFound",
]
