"""What the SQLite store and scheduler share: their connection to a file, and error translation."""

from __future__ import annotations

import atexit
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import TracebackType

from refluxo.core.errors import BackendError

# Primary result codes (the low byte of an extended code, e.g. SQLITE_BUSY_SNAPSHOT = 517):
# another connection holds the lock, so the same call may succeed a moment later.
_TRANSIENT_CODES = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED})


_NOW_MS = "SELECT CAST(round((julianday('now') - 2440587.5) * 86400000) AS INTEGER)"
_clock_conn: sqlite3.Connection | None = None
_clock_lock = threading.Lock()


def sqlite_clock() -> int:
    """The current time in epoch milliseconds, read by SQLite (``julianday('now')``).

    The embedded runtime's clock for due times, leases and steps. SQLite reads the host's
    clock itself, so every process using a file agrees on it, whatever one of them does to
    Python's ``time`` (a test's patch, a time-freezing library); processes sharing a file
    run on one host, since SQLite's WAL mode needs shared memory. A process whose system
    clock itself is faked (libfaketime) is not protected.
    """
    global _clock_conn
    with _clock_lock:
        if _clock_conn is None:
            _clock_conn = sqlite3.connect(":memory:", check_same_thread=False)
            atexit.register(_clock_conn.close)
        now: int = _clock_conn.execute(_NOW_MS).fetchone()[0]
    return now


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


@dataclass(eq=False)
class _Shared:
    conn: sqlite3.Connection
    # Serializes the connection's users (threads, and the objects sharing it): a statement or
    # a whole transaction runs under it, so two never interleave.
    lock: threading.Lock = field(default_factory=threading.Lock)
    users: int = 0
    schemas: set[str] = field(default_factory=set)


# Open connections by (file, busy timeout). The store and the scheduler of one process usually
# share a file; on one connection, each keeps the pages the other just wrote in its cache
# instead of reading them back, since SQLite drops a connection's whole page cache when it
# sees another connection's commit.
_open: dict[tuple[str, int], _Shared] = {}
_open_lock = threading.Lock()


class Database:
    """The connection of a store or scheduler to its file, opened on first use.

    Every :class:`Database` of this process on the same file (and busy timeout) uses one
    connection, closed when the last of them closes. Other processes have their own; SQLite's
    file locks keep them apart, as they would separate connections here. A call waits while
    another thread uses the connection: for a statement, or a scheduler's transaction.

    Args:
        path: the database file; created when missing (``:memory:`` is never shared).
        busy_timeout_ms: how long a write waits for another connection's lock.
        schema: a script run once per connection before first use (``IF NOT EXISTS``).
        migrate: run after ``schema``, once per connection: brings files made by earlier
            versions up to date (what a script cannot say, such as adding a missing column).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        busy_timeout_ms: int,
        schema: str,
        migrate: Callable[[sqlite3.Connection], None] | None = None,
    ) -> None:
        self.path = path
        self.busy_timeout_ms = busy_timeout_ms
        self.schema = schema
        self.migrate = migrate
        self._shared: _Shared | None = None
        self._key: tuple[str, int] | None = None
        self._guard = threading.Lock()  # Opening and closing this object's handle.

    def _open(self) -> _Shared:
        with self._guard:
            if self._shared is not None:
                return self._shared
            name = os.fspath(self.path)
            key = (
                None if name in ("", ":memory:") else (os.path.realpath(name), self.busy_timeout_ms)
            )
            with _open_lock:
                shared = _open.get(key) if key is not None else None
                if shared is None:
                    shared = _Shared(connect(self.path, busy_timeout_ms=self.busy_timeout_ms))
                    if key is not None:
                        _open[key] = shared
                shared.users += 1
            try:
                with shared.lock:
                    if self.schema not in shared.schemas:
                        shared.conn.executescript(self.schema)
                        if self.migrate is not None:
                            self.migrate(shared.conn)
                        shared.schemas.add(self.schema)
            except BaseException:
                _release(key, shared)
                raise
            self._shared, self._key = shared, key
            return shared

    def use(self, error: type[BackendError], what: str) -> _Use:
        """``with database.use(StoreError, "load 'x'") as db:`` the connection, held for the
        block alone (opened first if need be); a :class:`sqlite3.Error` is raised as ``error``."""
        return _Use(self, error, what)

    def close(self) -> None:
        """Stop using the connection (closed if nothing else uses it); the next use reopens."""
        with self._guard:
            shared, key = self._shared, self._key
            self._shared = self._key = None
        if shared is not None:
            _release(key, shared)


class _Use:
    # A class, not @contextmanager: it runs around every statement, and costs less this way.
    __slots__ = ("_database", "_error", "_lock", "_what")

    def __init__(self, database: Database, error: type[BackendError], what: str) -> None:
        self._database = database
        self._error = error
        self._what = what

    def __enter__(self) -> sqlite3.Connection:
        shared = self._database._shared
        if shared is None:
            with translated(self._error, self._what):
                shared = self._database._open()
        shared.lock.acquire()
        self._lock = shared.lock
        return shared.conn

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._lock.release()
        if isinstance(exc, sqlite3.Error):
            raise self._error(f"{self._what}: {exc}", transient=is_transient(exc)) from exc


def _release(key: tuple[str, int] | None, shared: _Shared) -> None:
    with _open_lock:
        shared.users -= 1
        if shared.users > 0:
            return
        if key is not None and _open.get(key) is shared:
            del _open[key]
    with shared.lock:
        shared.conn.close()
