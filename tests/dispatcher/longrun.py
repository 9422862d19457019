"""A loop workflow that runs N iterations, and a driver that runs it through a dispatcher."""

from __future__ import annotations

from typing import Any

from refluxo.core import Context, NodeDefinition, RetryPolicy, StepResult, Workflow
from refluxo.core.dispatcher import DispatchResult, RunService
from refluxo.core.memory import MemoryScheduler
from refluxo.core.model import DispatchMessage
from refluxo.core.ports import StateStore
from refluxo.testing import run_to_end


async def tick(data: Any, context: Context, payload: Any, globals: Any) -> StepResult:
    n = context.count("tick")  # how many times it ran before: retention-proof
    done = n + 1 >= data["iterations"]
    return StepResult(data={"i": n, "pad": "x" * 200}, next_handle="done" if done else "again")


def loop_workflow(
    iterations: int,
    *,
    end_data: dict[str, Any] | None = None,
    end_retries: int | None = None,
    **options: Any,
) -> Workflow:
    if end_data is None:
        end_data = {"ran": "{{ tick.count }}", "last": "{{ tick.last.data.i }}"}
    retry = None if end_retries is None else RetryPolicy(max_attempts=end_retries, interval=0)
    return Workflow(
        "loop",
        {
            "nodes": [
                {"id": "tick", "type": "tick", "data": {"iterations": iterations}},
                {"id": "end", "type": "end", "data": end_data},
            ],
            "edges": [
                {"id": "again", "source": "tick", "target": "tick", "sourceHandle": "again"},
                {"id": "done", "source": "tick", "target": "end", "sourceHandle": "done"},
            ],
        },
        {
            "tick": NodeDefinition(executor=tick),
            "end": NodeDefinition(executor=lambda data, ctx, payload, g: data, retry_policy=retry),
        },
        **options,
    )


async def run_loop(
    store: StateStore, workflow: Workflow, run_id: str = "loop-1", *, every: int = 1
) -> dict[int, int]:
    """Run the loop to its end; return step -> stored snapshot's JSON size, every ``every``
    steps (and at step 100, the baseline the flatness checks compare with). One step per
    delivery, so every step's snapshot is seen."""
    scheduler = MemoryScheduler()
    dispatcher = RunService([workflow], store, scheduler, delivery_budget_ms=0)
    await dispatcher.start(workflow.name, run_id=run_id)
    sizes: dict[int, int] = {}
    step = 0

    async def measured(d: RunService, message: DispatchMessage) -> list[DispatchResult]:
        nonlocal step
        result = await d.dispatch(message)
        assert result.outcome == "stepped", result
        step += 1
        if step % every == 0 or step == 100:
            sizes[step] = len((await store.load(run_id)).to_json().encode())
        return [result]

    await run_to_end(dispatcher, scheduler, deliver=measured, max_messages=10**9)
    return sizes
