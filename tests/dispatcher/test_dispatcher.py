"""The dispatcher's fault scenarios (refluxo.testing.dispatcher) on the memory, SQLite and
Firestore stores (the ``store`` fixture of conftest.py), with one step per delivery and with
multi-step deliveries."""

import pytest

from refluxo.core import dispatcher
from refluxo.testing.dispatcher import *  # noqa: F403


@pytest.fixture(autouse=True, params=[0, 60_000], ids=["one-step", "multi-step"])
def delivery_budget(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every dispatcher the scenarios build takes this budget (60 s: every chain runs whole)."""
    monkeypatch.setattr(dispatcher, "DEFAULT_DELIVERY_BUDGET_MS", request.param)
