"""refluxo.local: run workflows on one machine, with state and schedule in a SQLite file.

Beyond refluxo.core, the standard library only, but for the HTTP server: ``refluxo dev`` and
:meth:`LocalRuntime.serve <refluxo.local.runtime.LocalRuntime.serve>` serve
:class:`~refluxo.local.asgi.AsgiApp` with uvicorn (the ``local`` extra). :class:`SQLiteStateStore`
and :class:`SQLiteScheduler` may share one file, and several processes may use it at once.
"""

from .scheduler import SQLiteScheduler
from .store import SQLiteStateStore

__all__ = ["SQLiteScheduler", "SQLiteStateStore"]
