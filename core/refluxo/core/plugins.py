"""Plugins: hooks around the engine's lifecycle.

A plugin implements :class:`PluginHooks`, the typed protocol the engine calls. Subclass
:class:`Plugin` and override the hooks you need (the others do nothing); each may be async or
plain. A hook that raises is logged under the plugin's ``name`` (its class name when it has
none) and the step goes on as if it had not been there.

The run hooks were named ``on_workflow_start``, ``on_workflow_complete`` and
``on_workflow_pause``; a :class:`Plugin` subclass that still defines them is called through
them, with a DeprecationWarning when the class is defined.
"""

from __future__ import annotations

import warnings
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from .model import Node, Snapshot
    from .nodes import NodeDefinition


@dataclass(frozen=True)
class NodeContext:
    """What a node hook is told.

    Attributes:
        node: the node being executed.
        definition: its node definition.
        snapshot: the snapshot the step started from.
        input: the node's data after transforms (``on_node_error``: as far as it got).
        external_payload: the payload the step was given.
        globals: the caller's globals (secrets: do not log them).
        output: the node's output (``on_after_node`` only).
        error: the exception (``on_node_error`` only).
        attempt: which attempt this was, 1 for the first.
    """

    node: Node
    definition: NodeDefinition
    snapshot: Snapshot
    input: Any
    external_payload: Any
    globals: Any
    output: Any = None
    error: BaseException | None = None
    attempt: int = 1


class PluginHooks(Protocol):
    """What the engine calls on a plugin. Each hook may return an awaitable or None."""

    def on_run_start(self, snapshot: Snapshot) -> Awaitable[None] | None:
        """Before the first step of a run (the snapshot at version 0)."""

    def on_before_node(self, ctx: NodeContext) -> Awaitable[None] | None:
        """Before a node's transforms and executor run."""

    def on_after_node(self, ctx: NodeContext) -> Awaitable[None] | None:
        """After a node's executor returned (also when it paused)."""

    def on_node_error(self, ctx: NodeContext) -> Awaitable[None] | None:
        """After a node's executor, transforms or validation raised."""

    def on_run_complete(self, snapshot: Snapshot) -> Awaitable[None] | None:
        """After the step that completed the run."""

    def on_run_pause(self, snapshot: Snapshot) -> Awaitable[None] | None:
        """After a step that paused the run (pause, event wait or sleep)."""

    def on_run_fail(self, snapshot: Snapshot) -> Awaitable[None] | None:
        """After the run failed for good: a node out of attempts, an event wait past its
        deadline with no timeout edge, or :meth:`WorkflowEngine.execute`'s step limit."""


def plugin_name(plugin: object) -> str:
    """The name a plugin is logged under: its ``name``, else its class name."""
    name = getattr(plugin, "name", None)
    return name if isinstance(name, str) and name else type(plugin).__name__


class Plugin(PluginHooks):
    """Base class for plugins; every hook does nothing unless overridden.

    Attributes:
        name: the name logs use for this plugin; None means its class name.
    """

    name: str | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for old, new in _RENAMED.items():
            if old in cls.__dict__:
                warnings.warn(
                    f"{cls.__name__}.{old} is deprecated: name the hook {new}",
                    DeprecationWarning,
                    stacklevel=2,
                )

    async def on_run_start(self, snapshot: Snapshot) -> None:
        """Before the first step of a run (the snapshot at version 0)."""
        await _call(self.on_workflow_start(snapshot))

    async def on_before_node(self, ctx: NodeContext) -> None:
        """Before a node's transforms and executor run."""

    async def on_after_node(self, ctx: NodeContext) -> None:
        """After a node's executor returned (also when it paused)."""

    async def on_node_error(self, ctx: NodeContext) -> None:
        """After a node's executor, transforms or validation raised."""

    async def on_run_complete(self, snapshot: Snapshot) -> None:
        """After the step that completed the run."""
        await _call(self.on_workflow_complete(snapshot))

    async def on_run_pause(self, snapshot: Snapshot) -> None:
        """After a step that paused the run (pause, event wait or sleep)."""
        await _call(self.on_workflow_pause(snapshot))

    async def on_run_fail(self, snapshot: Snapshot) -> None:
        """After the run failed for good (see :meth:`PluginHooks.on_run_fail`)."""

    def on_workflow_start(self, snapshot: Snapshot) -> Awaitable[None] | None:
        """Deprecated name of :meth:`on_run_start`."""
        return None

    def on_workflow_complete(self, snapshot: Snapshot) -> Awaitable[None] | None:
        """Deprecated name of :meth:`on_run_complete`."""
        return None

    def on_workflow_pause(self, snapshot: Snapshot) -> Awaitable[None] | None:
        """Deprecated name of :meth:`on_run_pause`."""
        return None


_RENAMED = {
    "on_workflow_start": "on_run_start",
    "on_workflow_complete": "on_run_complete",
    "on_workflow_pause": "on_run_pause",
}


async def _call(outcome: Awaitable[None] | None) -> None:
    if outcome is not None:
        await outcome
