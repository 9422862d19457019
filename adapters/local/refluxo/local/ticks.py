"""Where the embedded runtime remembers up to when each schedule's ticks were started."""

from __future__ import annotations

import os
from collections.abc import Mapping

from refluxo.core.errors import StoreError

from ._sqlite import Database

_SCHEMA = """
CREATE TABLE IF NOT EXISTS schedule_marks (
    schedule TEXT PRIMARY KEY,
    checked_ms INTEGER NOT NULL
) WITHOUT ROWID;
"""


class SQLiteScheduleMarks:
    """``workflow.schedule`` -> the time up to which its ticks were started, in the run file.

    Kept beside the runs, so a runtime that stops and starts again on the same file starts the
    ticks it missed meanwhile (see :meth:`~refluxo.core.dispatcher.Dispatcher.fire_due`).
    A mark only moves forward, so two processes on one file never move it back.
    """

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout_ms: int = 5000) -> None:
        self._database = Database(path, busy_timeout_ms=busy_timeout_ms, schema=_SCHEMA)

    def load(self) -> dict[str, int]:
        """Every mark; StoreError when SQLite fails."""
        with self._database.use(StoreError, "read the schedule marks") as db:
            rows = db.execute("SELECT schedule, checked_ms FROM schedule_marks").fetchall()
        return {str(name): int(ms) for name, ms in rows}

    def save(self, marks: Mapping[str, int]) -> None:
        """Move each mark forward to the given time; StoreError when SQLite fails."""
        with self._database.use(StoreError, "save the schedule marks") as db:
            db.executemany(
                "INSERT INTO schedule_marks (schedule, checked_ms) VALUES (?, ?)"
                " ON CONFLICT (schedule) DO UPDATE SET checked_ms ="
                " MAX(checked_ms, excluded.checked_ms)",
                list(marks.items()),
            )

    def close(self) -> None:
        """Stop using the file (see :class:`~refluxo.local._sqlite.Database`)."""
        self._database.close()
