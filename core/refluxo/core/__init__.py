"""refluxo.core: durable, step-by-step workflows; one snapshot in, one node run, one out.

The core imports the standard library and pydantic only, does no I/O at import time, and runs
unchanged under CPython and Pyodide.
"""

from .engine import TIMEOUT_HANDLE, WorkflowEngine
from .errors import (
    BackendError,
    DefinitionError,
    ExpressionError,
    NonRetryableError,
    PayloadTooLarge,
    RefluxoError,
    RunAlreadyExists,
    RunFinished,
    RunNotFound,
    SchedulerError,
    StoreError,
    VersionConflict,
    WorkflowMismatch,
    WorkflowNotFound,
)
from .expressions import ExpressionTransform, TransformEngine
from .model import (
    DefinitionRef,
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

__all__ = [
    "TIMEOUT_HANDLE",
    "BackendError",
    "Context",
    "DefinitionError",
    "DefinitionRef",
    "Edge",
    "Event",
    "ExpressionError",
    "ExpressionTransform",
    "Node",
    "NodeContext",
    "NodeDefinition",
    "NodeResult",
    "NonRetryableError",
    "PayloadTooLarge",
    "Plugin",
    "RefluxoError",
    "RetryPolicy",
    "RetryState",
    "RunAlreadyExists",
    "RunFinished",
    "RunNotFound",
    "SchedulerError",
    "Snapshot",
    "Status",
    "StepResult",
    "StoreError",
    "TransformEngine",
    "VersionConflict",
    "WaitState",
    "WorkflowDefinition",
    "WorkflowEngine",
    "WorkflowMismatch",
    "WorkflowNotFound",
]
