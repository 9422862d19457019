"""Every error refluxo raises, under one base class.

The tree::

    RefluxoError
    ├── DefinitionError (ValueError)        a workflow definition is invalid; names the culprit
    ├── ExpressionError (ValueError)        a ``{{ ... }}`` expression is malformed or fails
    ├── NonRetryableError                   raised by an executor: fail the run now, no retries
    ├── RunNotFound (LookupError)           no run with that id
    ├── WorkflowNotFound (LookupError)      no workflow with that name in this deployment
    ├── VersionConflict                     save() lost the optimistic-locking race
    ├── WorkflowMismatch                    the run was started on an incompatible definition
    ├── RunFinished                         the run is completed or failed; nothing more can happen
    ├── NotRetryable                        a retry was asked of a run that cannot take one
    ├── NodeNotFound (LookupError)          no node with that id in the run's workflow
    ├── PayloadTooLarge (ValueError)        a snapshot or request body is over a limit
    ├── NotStrictJson (ValueError)          a value breaks the strict JSON rule (depth, NaN...)
    ├── InboxFull                           a run's inbox holds as many events as it may
    └── BackendError                        a store or scheduler failed; ``transient`` says
        ├── StoreError                      whether trying again may succeed
        └── SchedulerError

Adapters translate their SDK's exceptions into :class:`StoreError` or :class:`SchedulerError`
and raise them ``from`` the original, so callers never import a cloud SDK to catch an error.
"""

from __future__ import annotations


class RefluxoError(Exception):
    """Base class of every error raised by refluxo."""


class DefinitionError(RefluxoError, ValueError):
    """A workflow definition is invalid (unknown node type, dangling edge, duplicate id...)."""


class ExpressionError(RefluxoError, ValueError):
    """A ``{{ ... }}`` expression could not be parsed or evaluated."""


class NonRetryableError(RefluxoError):
    """Raise from an executor to fail the run at once, whatever the node's retry policy."""


class RunNotFound(RefluxoError, LookupError):
    """No run with the given id exists."""

    def __init__(self, run_id: str) -> None:
        super().__init__(f"run {run_id!r} not found")
        self.run_id = run_id


class WorkflowNotFound(RefluxoError, LookupError):
    """No workflow with the given name is registered."""

    def __init__(self, name: str) -> None:
        super().__init__(f"workflow {name!r} not found")
        self.name = name


class VersionConflict(RefluxoError):
    """The stored run is not at the expected version: another writer saved first."""

    def __init__(self, run_id: str, expected: int, actual: int | None) -> None:
        super().__init__(f"run {run_id!r}: expected stored version {expected}, found {actual}")
        self.run_id = run_id
        self.expected = expected
        self.actual = actual


class WorkflowMismatch(RefluxoError):
    """A run was started on a definition that is not compatible with the deployed one."""


class RunFinished(RefluxoError):
    """The run is completed or failed; it accepts no more events or steps."""


class NotRetryable(RefluxoError):
    """A retry was asked of a run that is not failed (or refused), or was cancelled or moved."""


class NodeNotFound(RefluxoError, LookupError):
    """No node with that id in the workflow."""


class PayloadTooLarge(RefluxoError, ValueError):
    """A snapshot or a request body is larger than the limit that applies to it."""

    def __init__(self, what: str, size: int, limit: int) -> None:
        super().__init__(f"{what} is {size} bytes, over the limit of {limit} bytes")
        self.size = size
        self.limit = limit


class NotStrictJson(RefluxoError, ValueError):
    """A value is not strict JSON, or is nested deeper than the limit (see ``refluxo.core.codec``).

    Attributes:
        rule: which rule it breaks: ``max_depth``, ``max_text_chars``, ``nan``, ``unicode``,
            ``cycle``, ``type``, ``key_collision``, or ``round_trip`` (a snapshot that would not
            read back as it is).
    """

    def __init__(self, message: str, rule: str) -> None:
        super().__init__(message)
        self.rule = rule


class InboxFull(RefluxoError):
    """A run's inbox is at its limit of events or bytes; it takes more once a node consumes some.

    Attributes:
        limit: the name of the limit reached (``max_inbox_events`` or ``max_inbox_bytes``).
    """

    def __init__(self, message: str, limit: str) -> None:
        super().__init__(message)
        self.limit = limit


class BackendError(RefluxoError):
    """A backend (store or scheduler) failed.

    Attributes:
        transient: True when the same call may succeed if tried again (timeouts,
            unavailability, contention); the HTTP layer answers 503 so the platform redelivers.
    """

    def __init__(self, message: str, *, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient


class StoreError(BackendError):
    """A state store failed."""


class SchedulerError(BackendError):
    """A scheduler failed to accept a message."""
