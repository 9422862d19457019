"""Google client errors, translated into refluxo's :class:`~refluxo.core.errors.BackendError` s.

Which failures are transient (worth trying again) follows Google's own retry guidance for gRPC
codes: UNAVAILABLE, DEADLINE_EXCEEDED, ABORTED, RESOURCE_EXHAUSTED and INTERNAL. A retry helper
that gave up (``RetryError``) only ever retried transient errors, and a transport failure while
fetching credentials (the metadata server did not answer) passes too.
"""

from __future__ import annotations

from google.api_core import exceptions as gexc
from google.auth import exceptions as auth_exc

from refluxo.core.errors import SchedulerError, StoreError

BACKEND_ERRORS: tuple[type[Exception], ...] = (
    gexc.GoogleAPICallError,
    gexc.RetryError,
    auth_exc.GoogleAuthError,
)
"""What a Google client raises when the service (or reaching it) fails: catch these."""

TRANSIENT_CODES: tuple[type[gexc.GoogleAPICallError], ...] = (
    gexc.ServiceUnavailable,
    gexc.DeadlineExceeded,
    gexc.Aborted,
    gexc.ResourceExhausted,
    gexc.TooManyRequests,  # HTTP 429, ResourceExhausted's base class
    gexc.InternalServerError,
)


def is_transient(exc: BaseException) -> bool:
    """Whether the same call may succeed when tried again."""
    if isinstance(exc, (*TRANSIENT_CODES, gexc.RetryError)):
        return True
    if isinstance(exc, auth_exc.TransportError):
        return True
    if isinstance(exc, auth_exc.RefreshError):
        return bool(getattr(exc, "retryable", False))
    return False


def _describe(exc: BaseException) -> str:
    if isinstance(exc, gexc.GoogleAPICallError):
        code = exc.grpc_status_code
        return f"{code.name if code is not None else type(exc).__name__}: {exc.message}"
    return f"{type(exc).__name__}: {exc}"


def store_error(exc: BaseException, doing: str) -> StoreError:
    """A :class:`StoreError` for ``exc``; raise it ``from exc``."""
    return StoreError(f"Firestore failed to {doing}: {_describe(exc)}", transient=is_transient(exc))


def scheduler_error(exc: BaseException, doing: str) -> SchedulerError:
    """A :class:`SchedulerError` for ``exc``; raise it ``from exc``."""
    return SchedulerError(
        f"Cloud Tasks failed to {doing}: {_describe(exc)}", transient=is_transient(exc)
    )
