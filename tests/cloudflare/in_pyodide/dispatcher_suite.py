"""Runs inside Pyodide: the dispatcher's fault scenarios (refluxo.testing.dispatcher)
on D1StateStore and KVStateStore, over Miniflare's real D1 and KV.

Every message delivered twice, racing dispatchers, a crash between save and schedule, early
and late deliveries, hops, early events, timeouts, cancel: the same scenarios as on the memory
and SQLite stores. KV declares what it lacks (no atomic compare-and-set): its racing scenario
is skipped, saying so, and a scenario of its own below runs it against what KV declares.
"""

import asyncio
import itertools
import types

import pytest
from harness_env import env
from pytest_lite import Runner, module_of

import tests.conftest
from refluxo.cloudflare import D1StateStore, KVStateStore
from refluxo.core import dispatcher as core_dispatcher
from refluxo.testing import dispatcher as test_dispatcher
from refluxo.testing.harness import Harness, recorded

_fresh = itertools.count()
RACING = test_dispatcher.RACING


def d1_store(clock):
    return D1StateStore(env.DB, table=f"scenario_{next(_fresh)}", clock=clock)


def kv_store(clock):
    return KVStateStore(env.STATE, prefix=f"scenario{next(_fresh)}/")


def fixtures(make):
    module = types.ModuleType("store_fixtures")
    module.store = pytest.fixture(make, name="store")
    return module


def without_racing():
    """test_dispatcher with its racing scenario declared unsupported (KV has no CAS)."""
    module = types.ModuleType(test_dispatcher.__name__)
    module.__dict__.update(vars(test_dispatcher))
    module.__dict__[RACING] = pytest.mark.skip(
        reason="KVStateStore declares no atomic_compare_and_set: racing saves can both win"
    )(getattr(test_dispatcher, RACING))
    return module


async def racing_demo(store, clock):
    async def racing(d, m):
        return list(await asyncio.gather(d.dispatch(m), d.dispatch(m)))

    h = Harness(store, clock)
    snap = await h.run_demo(deliver=racing)
    return h, snap


async def test_d1_racing_dispatchers_really_race_and_one_save_of_each_pair_loses():
    clock = tests.conftest.FakeClock()
    h, snap = await racing_demo(d1_store(clock), clock)
    assert snap.status == "completed"
    assert recorded(snap) == await test_dispatcher.clean_run(clock)
    # D1's conditional UPDATE let exactly one of the two saves through each time.
    assert h.outcomes.count("conflict") >= 1, h.outcomes


async def test_kv_racing_dispatchers_complete_the_run_though_both_may_be_told_they_won():
    """KV's declared weakness: the check and the write are two calls, so two racing steps can
    both be told they won and the executor runs twice (contracts.py shows it deterministically:
    test_kv_concurrent_saves_the_snapshot_that_stands_reported_success). Both computed from the
    same version, so the write that stands holds each step's result once: the run completes as
    a clean one, and no step is lost."""
    clock = tests.conftest.FakeClock()
    # One step per delivery, so each "stepped" outcome stands for one step.
    saved_budget = core_dispatcher.DEFAULT_DELIVERY_BUDGET_MS
    core_dispatcher.DEFAULT_DELIVERY_BUDGET_MS = 0
    try:
        h, snap = await racing_demo(kv_store(clock), clock)
    finally:
        core_dispatcher.DEFAULT_DELIVERY_BUDGET_MS = saved_budget
    assert snap.status == "completed"
    assert recorded(snap) == await test_dispatcher.clean_run(clock)
    steps = sum(len(results) for results in recorded(snap).values())
    both_won = h.outcomes.count("stepped") - steps
    print(f"kv racing: {both_won} step(s) reported to both racers, of {steps}")
    assert both_won >= 0, h.outcomes


runner = Runner(fixture_modules=[tests.conftest])
await runner.run_module(test_dispatcher, id_prefix="d1", fixtures=[fixtures(d1_store)])  # noqa: F704
await runner.run_module(without_racing(), id_prefix="kv", fixtures=[fixtures(kv_store)])  # noqa: F704
await runner.run_module(module_of(globals()))  # noqa: F704 - `harness.mjs run` allows it
raise SystemExit(runner.summary())
