"""JavaScript errors from Workers bindings, translated into refluxo's :class:`BackendError` s.

Inside a Python Worker a failing binding call raises ``pyodide.ffi.JsException`` (``.name``,
``.message``). The bindings report failures as text only, so whether one is worth retrying is
judged from the message, following Cloudflare's guidance:

* KV: ``429 Too Many Requests`` (more than one write per second to a key), 5xx answers and
  lost connections are transient.
* D1: "Network connection lost", "storage caused object to be reset", "reset because its
  code was updated", an overloaded database and timeouts are transient (D1's own list of
  retryable errors); SQL errors are not.
* Queues: 429 and 5xx answers, lost connections and timeouts are transient; an oversized
  message or a bad option is not.

This module imports nothing from Pyodide, so the adapters import (and type-check) anywhere.
"""

from __future__ import annotations

import re

from refluxo.core.errors import SchedulerError, StoreError

# Compiled on the first failure, not at import: a Worker's cold start does not pay for them.
_TRANSIENT = (
    r"\b(429|5\d\d)\b"
    r"|too many requests|rate.?limit"
    r"|network connection lost|connection (?:reset|refused|closed)|econnreset"
    r"|internal (?:server )?error|service unavailable|bad gateway|gateway time"
    r"|timed? ?out|timeout|deadline"
    r"|overloaded|try again|temporar"
    r"|object to be reset|reset because its code was updated|durable object reset"
)
_PERMANENT = (
    r"too (?:large|big)|exceed|\b(400|401|403|404|413)\b|sqlite_(?:error|toobig|constraint)"
    r"|no such (?:table|column)|syntax error|invalid"
)


def describe(exc: BaseException) -> str:
    """``Name: message`` of a JavaScript error (or of any exception)."""
    name = getattr(exc, "name", None) or type(exc).__name__
    message = getattr(exc, "message", None) or str(exc)
    return f"{name}: {message}"


def is_transient(exc: BaseException) -> bool:
    """Whether the failed binding call may succeed when tried again."""
    text = describe(exc)
    if re.search(_PERMANENT, text, re.IGNORECASE):
        return False
    return bool(re.search(_TRANSIENT, text, re.IGNORECASE))


def store_error(exc: BaseException, service: str, doing: str) -> StoreError:
    """A :class:`StoreError` for ``exc``; raise it ``from exc``."""
    return StoreError(f"{service} failed to {doing}: {describe(exc)}", transient=is_transient(exc))


def scheduler_error(exc: BaseException, doing: str) -> SchedulerError:
    """A :class:`SchedulerError` for ``exc``; raise it ``from exc``."""
    return SchedulerError(f"Queues failed to {doing}: {describe(exc)}", transient=is_transient(exc))
