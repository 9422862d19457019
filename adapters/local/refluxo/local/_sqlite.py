"""What the SQLite store and scheduler share: how a connection is opened, and error translation."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager

from refluxo.core.errors import BackendError

# Primary result codes (the low byte of an extended code, e.g. SQLITE_BUSY_SNAPSHOT = 517):
# another connection holds the lock, so the same call may succeed a moment later.
_TRANSIENT_CODES = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED})


def connect(path: str | os.PathLike[str], *, busy_timeout_ms: int) -> sqlite3.Connection:
    """Open ``path`` for concurrent use by several connections and processes.

    WAL lets readers run alongside the one writer; ``synchronous=NORMAL`` is durable against
    process crashes in WAL mode (a power cut may lose the last commits, not corrupt the file);
    ``busy_timeout`` makes a writer wait for the lock instead of failing at once.
    """
    # Autocommit (isolation_level=None): every statement is its own transaction unless we
    # BEGIN explicitly, so sqlite3 never holds a write lock behind our back.
    conn = sqlite3.connect(os.fspath(path), isolation_level=None, check_same_thread=False)
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
    except BaseException:
        conn.close()
        raise
    return conn


def is_transient(exc: sqlite3.Error) -> bool:
    """True when ``exc`` comes from lock contention (busy or locked)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in _TRANSIENT_CODES
    message = str(exc).lower()
    return "locked" in message or "busy" in message


@contextmanager
def translated(error: type[BackendError], what: str) -> Iterator[None]:
    """Re-raise a :class:`sqlite3.Error` inside the block as ``error``, ``from`` it."""
    try:
        yield
    except sqlite3.Error as exc:
        raise error(f"{what}: {exc}", transient=is_transient(exc)) from exc
