"""refluxo on Google Cloud: runs in Firestore, steps delivered by Cloud Tasks.

The adapters take ready clients (``FirestoreStateStore(firestore.AsyncClient(...))``,
``CloudTasksScheduler(tasks_v2.CloudTasksAsyncClient(...), ...)``). Importing this package
connects to nothing and does not even import the Google libraries: each name is loaded on
first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .scheduler import CloudTasksScheduler
    from .store import FirestoreStateStore

__all__ = ["CloudTasksScheduler", "FirestoreStateStore"]

_LAZY = {
    "CloudTasksScheduler": ".scheduler",
    "FirestoreStateStore": ".store",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
