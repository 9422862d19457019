"""The two public modules: refluxo.core for workflow authors, refluxo.core.adapter for adapters."""

from __future__ import annotations

import refluxo.core
import refluxo.core.adapter

WORKFLOW_AUTHOR = {
    "Workflow",
    "WorkflowDefinition",
    "NodeDefinition",
    "RetryPolicy",
    "StepResult",
    "Context",
    "Plugin",
    "PluginHooks",
    "NodeContext",
    "Transform",
    "ExpressionTransform",
    "WorkflowEngine",
    "NonRetryableError",
    "Snapshot",
}
ADAPTER_AUTHOR = {
    "StateStore",
    "Scheduler",
    "ResultArchive",
    "DueRuns",
    "stored_due_time",
    "Snapshot",
    "DispatchMessage",
    "encode_snapshot",
    "decode_snapshot",
    "decode_result",
    "Redelivery",
    "Decision",
    "Settings",
    "build_api",
    "StoreError",
    "SchedulerError",
    "RunNotFound",
    "VersionConflict",
    "PayloadTooLarge",
    "RunService",
    "DispatchResult",
    "HttpApi",
    "HttpRequest",
    "HttpResponse",
    "load_workflows",
    "MemoryStateStore",
    "MemoryScheduler",
}


def test_refluxo_core_exports_what_a_workflow_author_needs() -> None:
    assert WORKFLOW_AUTHOR <= set(refluxo.core.__all__)
    for name in refluxo.core.__all__:
        assert getattr(refluxo.core, name) is not None, name


def test_refluxo_core_adapter_exports_what_an_adapter_author_needs() -> None:
    assert ADAPTER_AUTHOR <= set(refluxo.core.adapter.__all__)
    for name in refluxo.core.adapter.__all__:
        assert getattr(refluxo.core.adapter, name) is not None, name
    assert refluxo.core.adapter.__doc__ and "refluxo.testing" in refluxo.core.adapter.__doc__
