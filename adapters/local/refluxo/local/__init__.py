"""refluxo.local: run workflows on one machine, with state and schedule in a SQLite file.

Beyond refluxo.core, the standard library only. :class:`SQLiteStateStore` and
:class:`SQLiteScheduler` may share one file, and several processes may use it at once.
"""

from .scheduler import SQLiteScheduler
from .store import SQLiteStateStore

__all__ = ["SQLiteScheduler", "SQLiteStateStore"]
