"""Suites that prove an adapter, shipped with refluxo (as fsspec ships ``fsspec.tests.abstract``).

An adapter, in this repository or another, proves its ports by running these suites in its own
tests. They need pytest and pytest-asyncio, which refluxo itself does not: install the
``testing`` extra (``pip install 'refluxo[testing]'``) and set ``asyncio_mode = "auto"`` in the
adapter's pytest configuration. Importing this package imports neither.

* :mod:`refluxo.testing.store`: ``StateStoreContract``, the mixin for a
  :class:`~refluxo.core.ports.StateStore` (with ``store``, ``store_capabilities`` and
  ``store_max_bytes`` fixtures);
* :mod:`refluxo.testing.due_runs`: ``DueRunsContract``, for a store that is also
  :class:`~refluxo.core.ports.DueRuns`;
* :mod:`refluxo.testing.scheduler`: ``SchedulerContract``, for a
  :class:`~refluxo.core.ports.Scheduler` (``scheduler``, ``next_delivery``,
  ``scheduler_capabilities`` fixtures);
* :mod:`refluxo.testing.dispatcher`: the dispatcher's fault scenarios (duplicate, racing,
  early, late and lost deliveries, crashes between save and schedule, events, cancels) on a
  ``store`` fixture; the ResultArchive is exercised by the long loop of
  :mod:`refluxo.testing.harness` users and by the store contract;
* :mod:`refluxo.testing.clock` and :mod:`refluxo.testing.driving`: :class:`FakeClock`, and
  :func:`run_to_end`, which delivers a :class:`~refluxo.core.memory.MemoryScheduler`'s
  messages until the runs settle (no pytest needed).

Each mixin's docstring lists the fixtures an adapter defines; CONTRIBUTING.md walks through
adding a backend.
"""

from __future__ import annotations

from .clock import FakeClock
from .driving import deliver_once, run_to_end

__all__ = ["FakeClock", "deliver_once", "run_to_end"]
