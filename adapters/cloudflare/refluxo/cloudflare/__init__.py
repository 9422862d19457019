"""refluxo on Cloudflare Workers (Python): runs in D1 or Workers KV, steps through Queues.

The adapters take ready bindings (``D1StateStore(env.DB)``, ``KVStateStore(env.STATE)``,
``QueuesScheduler(env.STEPS)``); :mod:`refluxo.cloudflare.worker` builds them from a Worker's
``env`` and serves the HTTP API and the queue consumer. Importing this package needs only the
standard library, pydantic and ``refluxo.core``: the ``workers`` module of the Python Workers
runtime is imported when a response is built, never at import time.
"""

from __future__ import annotations

from .scheduler import QueuesScheduler
from .store import D1StateStore, KVStateStore
from .worker import RefluxoWorker, WorkerSettings

__all__ = ["D1StateStore", "KVStateStore", "QueuesScheduler", "RefluxoWorker", "WorkerSettings"]
