"""The two public modules: refluxo.core for workflow authors, refluxo.core.adapter for adapters."""

from __future__ import annotations

import json
import subprocess
import sys

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


def test_every_name_refluxo_core_exports_imports_by_name_in_a_fresh_process() -> None:
    names = sorted(refluxo.core.__all__)
    code = (
        "import json, refluxo.core\n"
        f"for name in {names!r}:\n"
        "    exec(f'from refluxo.core import {name}')\n"
        "print(json.dumps(sorted(n for n in refluxo.core.__all__ if n not in dir(refluxo.core))))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert json.loads(out.stdout) == []


def test_importing_refluxo_core_loads_a_module_only_when_one_of_its_names_is_used() -> None:
    code = (
        "import json, sys; import refluxo.core; a = sorted(sys.modules); "
        "refluxo.core.MemoryStateStore; b = sorted(sys.modules); "
        "print(json.dumps([[m for m in a if m.startswith('refluxo.')], "
        "[m for m in b if m.startswith('refluxo.')]]))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    bare, after = json.loads(out.stdout)
    assert bare == ["refluxo.core", "refluxo.core.errors"]
    assert "refluxo.core.memory" in after and "refluxo.core.schedules" not in after
