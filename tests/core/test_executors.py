"""Executors that misbehave: hang, block, or raise what is not an Exception."""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import timedelta
from typing import Any

import pytest

from refluxo.core import Context, NodeDefinition, RetryPolicy, WorkflowEngine
from refluxo.core import engine as engine_module

ONE_NODE = {"nodes": [{"id": "a", "type": "t", "data": {}}], "edges": []}


def engine_for(definition: NodeDefinition, **options: Any) -> WorkflowEngine:
    return WorkflowEngine(ONE_NODE, {"t": definition}, **options)


async def step(engine: WorkflowEngine) -> Any:
    return await engine.execute_step(engine.create_initial_snapshot("run"))


async def hang(data: Any, context: Context, payload: Any, globals: Any) -> Any:
    await asyncio.Event().wait()


# --- timeouts ------------------------------------------------------------------------------


async def test_a_step_past_its_node_timeout_fails_the_attempt_retryable_by_policy() -> None:
    engine = engine_for(
        NodeDefinition(executor=hang, timeout=0.05, retry_policy=RetryPolicy(max_attempts=2))
    )
    first = await step(engine)
    assert first.status == "error"
    error = first.context["a"][-1].error
    assert error == "TimeoutError: node 'a' ran past its timeout of 0.05 s"
    second = await engine.execute_step(first)
    assert second.status == "failed"
    assert "ran past its timeout" in second.metadata["failedReason"]


async def test_the_workflow_step_timeout_applies_to_nodes_that_set_none() -> None:
    engine = engine_for(NodeDefinition(executor=hang), step_timeout=timedelta(milliseconds=50))
    done = await step(engine)
    assert done.status == "failed"
    assert "ran past its timeout of 0.05 s" in done.metadata["failedReason"]


async def test_a_plain_executor_past_its_timeout_fails_the_attempt() -> None:
    release = threading.Event()

    def blocked(data: Any, context: Context, payload: Any, globals: Any) -> Any:
        release.wait(30)
        return "late"

    try:
        done = await step(engine_for(NodeDefinition(executor=blocked, timeout=0.05)))
    finally:
        release.set()
    assert done.status == "failed"
    assert "ran past its timeout" in done.metadata["failedReason"]


async def test_an_executor_raising_timeout_error_itself_is_an_ordinary_failure() -> None:
    async def raises(data: Any, context: Context, payload: Any, globals: Any) -> Any:
        raise TimeoutError("the bank did not answer")

    done = await step(engine_for(NodeDefinition(executor=raises, timeout=10)))
    assert done.metadata["failedReason"] == "node 'a' failed: TimeoutError: the bank did not answer"


async def test_an_async_executor_busy_past_its_timeout_times_out_at_its_first_wait() -> None:
    reached: list[str] = []

    async def busy_then_wait(data: Any, context: Context, payload: Any, globals: Any) -> Any:
        busy_until = time.monotonic() + 0.06  # CPU-bound work the event loop cannot interrupt
        while time.monotonic() < busy_until:
            pass
        reached.append("before the wait")
        await asyncio.sleep(0.01)
        reached.append("after the wait")
        return "late"

    done = await step(engine_for(NodeDefinition(executor=busy_then_wait, timeout=0.05)))
    assert done.status == "failed"
    assert "ran past its timeout of 0.05 s" in done.metadata["failedReason"]
    assert reached == ["before the wait"]


async def test_an_async_executor_past_its_timeout_is_cancelled_at_its_wait_and_cleans_up() -> None:
    cleaned = asyncio.Event()

    async def waits(data: Any, context: Context, payload: Any, globals: Any) -> Any:
        await asyncio.sleep(0)
        try:
            await asyncio.Event().wait()
        finally:
            cleaned.set()

    done = await step(engine_for(NodeDefinition(executor=waits, timeout=0.05)))
    assert done.status == "failed"
    assert "ran past its timeout" in done.metadata["failedReason"]
    assert cleaned.is_set()


async def test_an_async_executor_that_waits_returns_its_value_within_its_timeout() -> None:
    async def waits(data: Any, context: Context, payload: Any, globals: Any) -> Any:
        for _ in range(3):
            await asyncio.sleep(0)
        return {"waited": 3}

    done = await step(engine_for(NodeDefinition(executor=waits, timeout=5)))
    assert done.status == "completed"
    assert done.context["a"][-1].output == {"waited": 3}


def test_a_timeout_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        NodeDefinition(executor=hang, timeout=0)
    with pytest.raises(ValueError, match="positive"):
        WorkflowEngine(ONE_NODE, {"t": NodeDefinition(executor=hang)}, step_timeout=-1)


async def test_a_cancelled_step_raises_cancelled_error_and_records_nothing() -> None:
    engine = engine_for(NodeDefinition(executor=hang, timeout=60))
    task = asyncio.create_task(step(engine))
    await asyncio.sleep(0)  # let it reach the executor
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


# --- plain executors run in a thread -------------------------------------------------------


async def test_a_blocking_plain_executor_does_not_stop_the_event_loop() -> None:
    # The executor waits for something only the event loop can do: if it ran on the loop's
    # thread, the loop could not run the setter and the wait would give up.
    loop_ran = threading.Event()

    def blocking(data: Any, context: Context, payload: Any, globals: Any) -> Any:
        return loop_ran.wait(10)

    async def set_soon() -> None:
        await asyncio.sleep(0.01)
        loop_ran.set()

    setter = asyncio.create_task(set_soon())
    done = await step(engine_for(NodeDefinition(executor=blocking)))
    await setter
    assert done.status == "completed"
    assert done.context["a"][-1].output is True


async def test_a_plain_executor_may_return_an_awaitable() -> None:
    async def later() -> str:
        return "awaited"

    done = await step(engine_for(NodeDefinition(executor=lambda d, c, p, g: later())))
    assert done.context["a"][-1].output == "awaited"


# --- BaseException from an executor --------------------------------------------------------


class Custom(BaseException):
    pass


@pytest.mark.parametrize("exc", [SystemExit(3), KeyboardInterrupt(), GeneratorExit(), Custom()])
@pytest.mark.parametrize("kind", ["async", "plain"])
async def test_system_exit_and_other_base_exceptions_from_an_executor_fail_the_attempt(
    exc: BaseException, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    def plain(data: Any, context: Context, payload: Any, globals: Any) -> Any:
        raise exc

    async def async_(data: Any, context: Context, payload: Any, globals: Any) -> Any:
        raise exc

    definition = NodeDefinition(
        executor=async_ if kind == "async" else plain, retry_policy=RetryPolicy(max_attempts=2)
    )
    first = await step(engine_for(definition))
    assert first.status == "error"  # retryable, like any failure
    assert first.context["a"][-1].error is not None
    assert first.context["a"][-1].error.startswith(type(exc).__name__)
    assert any(type(exc).__name__ in r.getMessage() for r in caplog.records)


async def test_cancelled_error_raised_by_an_executor_itself_fails_the_attempt() -> None:
    async def raises(data: Any, context: Context, payload: Any, globals: Any) -> Any:
        raise asyncio.CancelledError()

    done = await step(engine_for(NodeDefinition(executor=raises)))
    assert done.status == "failed"
    assert "CancelledError" in done.metadata["failedReason"]


async def test_a_plain_executor_with_thread_false_runs_inline_on_the_event_loop() -> None:
    def where(data: Any, context: Context, payload: Any, globals: Any) -> Any:
        return threading.get_ident()

    inline = await step(engine_for(NodeDefinition(executor=where, thread=False)))
    threaded = await step(engine_for(NodeDefinition(executor=where)))
    assert inline.context["a"][-1].output == threading.get_ident()
    assert threaded.context["a"][-1].output != threading.get_ident()


async def test_a_step_is_refused_while_the_executor_threads_are_all_busy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(engine_module._executor_threads, "limit", 2)
    release = threading.Event()
    entered = threading.Semaphore(0)

    def blocked(data: Any, context: Context, payload: Any, globals: Any) -> Any:
        entered.release()
        release.wait(30)
        return "done"

    engine = engine_for(NodeDefinition(executor=blocked, retry_policy=RetryPolicy(2)))
    try:
        busy = [asyncio.create_task(step(engine)) for _ in range(2)]
        for _ in range(2):
            await asyncio.to_thread(entered.acquire, True, 10)
        refused = await step(engine)
        assert refused.status == "error"  # retryable: a thread may be free by then
        assert "plain executors are still running" in (refused.context["a"][-1].error or "")
    finally:
        release.set()
    assert [s.status for s in await asyncio.gather(*busy)] == ["completed", "completed"]


def test_a_node_definition_says_whether_its_executor_is_async() -> None:
    class AsyncCall:
        async def __call__(self, data: Any, context: Context, payload: Any, globals: Any) -> Any:
            return None

    def plain(data: Any, context: Context, payload: Any, globals: Any) -> Any:
        return None

    assert NodeDefinition(executor=hang).is_async
    assert NodeDefinition(executor=AsyncCall()).is_async
    assert not NodeDefinition(executor=plain).is_async
    assert NodeDefinition(executor=plain) == NodeDefinition(executor=plain)
