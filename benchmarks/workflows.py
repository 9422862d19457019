"""The workflows the benchmarks run: a linear chain, and one node looping on itself.

Executors are ``async def`` by default, as the TypeScript engine's are: they run on the event
loop, so the figures measure the engine's own work. ``plain=True`` gives the same executors as
plain functions, which the engine hands to a thread each (what users who write plain functions
get); the sections report that as a figure of its own.
"""

from __future__ import annotations

from typing import Any

from refluxo.core import Context, NodeDefinition, StepResult, Workflow
from refluxo.core.nodes import Executor

LOOP_NODE = "loop"
LOOP_HANDLE = "again"

# A small but not empty output: what a typical step records (an id, a status, a little data).
_FILLER = "x" * 48


def linear_definition(n: int) -> dict[str, Any]:
    """``n`` nodes ``s0 -> s1 -> ... -> s{n-1}``, each with a little data of its own."""
    return {
        "nodes": [{"id": f"s{i}", "type": "step", "data": {"i": i}} for i in range(n)],
        "edges": [{"id": f"e{i}", "source": f"s{i}", "target": f"s{i + 1}"} for i in range(n - 1)],
    }


def _step_plain(data: Any, context: Context, payload: Any, globals: Any) -> Any:
    return {"i": data["i"], "status": "ok", "note": _FILLER}


async def _step(data: Any, context: Context, payload: Any, globals: Any) -> Any:
    return {"i": data["i"], "status": "ok", "note": _FILLER}


LINEAR_NODES = {"step": NodeDefinition(executor=_step)}
"""The linear chain's node type, an async executor."""

LINEAR_NODES_PLAIN = {"step": NodeDefinition(executor=_step_plain)}
"""The same node type as a plain function (run in a thread at every step)."""


def loop_definition() -> dict[str, Any]:
    """One node ``loop`` with an edge back to itself through the handle ``again``."""
    return {
        "nodes": [{"id": LOOP_NODE, "type": "loop", "data": {"label": "tick"}}],
        "edges": [
            {"id": "back", "source": LOOP_NODE, "target": LOOP_NODE, "sourceHandle": LOOP_HANDLE}
        ],
    }


def loop_nodes(limit: int, *, plain: bool = False) -> dict[str, NodeDefinition]:
    """The ``loop`` node type: it takes the ``again`` edge until it has run ``limit`` times.

    It counts its runs with ``context.count``, which stays right when retention trims results.
    ``plain`` makes its executor a plain function instead of an async one.
    """

    def loop_plain(data: Any, context: Context, payload: Any, globals: Any) -> StepResult:
        n = context.count(LOOP_NODE) + 1
        return StepResult(
            data={"i": n, "status": "ok", "note": _FILLER},
            next_handle=LOOP_HANDLE if n < limit else None,
        )

    async def loop(data: Any, context: Context, payload: Any, globals: Any) -> StepResult:
        return loop_plain(data, context, payload, globals)

    executor: Executor = loop_plain if plain else loop
    return {"loop": NodeDefinition(executor=executor)}


def loop_workflow(
    limit: int, retention: int | None, name: str = "loop", *, plain: bool = False
) -> Workflow:
    """A :class:`Workflow` of the loop, ending after ``limit`` steps.

    An async executor by default, run on the event loop: the durable sections (embedded,
    flatness, platforms, DBOS) measure the runtime around a trivial step, as the floors and
    DBOS's inline steps do; a plain function would add the hand-over to a thread that the
    engine section reports on its own.
    """
    return Workflow(name, loop_definition(), loop_nodes(limit, plain=plain), retention=retention)
