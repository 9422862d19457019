"""The dispatcher's fault scenarios (refluxo.testing.dispatcher) on the memory, SQLite and
Firestore stores (the ``store`` fixture of conftest.py)."""

from refluxo.testing.dispatcher import *  # noqa: F403
