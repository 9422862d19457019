"""The Cloudflare adapters' contracts, and the core's own tests, run inside Pyodide.

Two programs run under ``harness.mjs run`` (Node Pyodide 314 with Miniflare's real KV, D1
and Queues; see harness/README.md): ``in_pyodide/contracts.py`` (the StateStore contract on
D1StateStore and KVStateStore, the Scheduler contract on QueuesScheduler, the adapters' own
tests, D1's results archive under tests/dispatcher's long loop) and
``in_pyodide/core_suite.py`` (tests/core's engine, expression and snapshot tests). pytest
cannot await bindings inside Pyodide, so ``in_pyodide/pytest_lite.py`` runs them there;
each program runs once per session and the tests below check its per-test result lines.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from refluxo.testing import dispatcher as test_dispatcher
from refluxo.testing.archive import ResultArchiveContract
from refluxo.testing.due_runs import DueRunsContract
from refluxo.testing.run_index import RunIndexContract
from refluxo.testing.scheduler import SchedulerContract
from refluxo.testing.store import StateStoreContract

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
IN_PYODIDE = HERE / "in_pyodide"
CORE_TEST_MODULES = ("test_engine.py", "test_expressions.py", "test_secrets.py", "test_snapshot.py")

STORE_TESTS = sorted(n for n in dir(StateStoreContract) if n.startswith("test_"))
SCENARIOS = sorted(
    name
    for name, fn in vars(test_dispatcher).items()
    if name.startswith("test_") and callable(fn) and fn.__module__ == test_dispatcher.__name__
)
RACING = test_dispatcher.RACING
DUE_RUNS_TESTS = sorted(n for n in dir(DueRunsContract) if n.startswith("test_"))
ARCHIVE_TESTS = sorted(n for n in dir(ResultArchiveContract) if n.startswith("test_"))
RUN_INDEX_TESTS = sorted(n for n in dir(RunIndexContract) if n.startswith("test_"))
SCHEDULER_TESTS = sorted(n for n in dir(SchedulerContract) if n.startswith("test_"))
# What KVStateStore declares missing (no atomic compare-and-set), and Queues (no dedup).
KV_SKIPPED = {
    "test_create_stores_a_new_run_only_if_no_run_with_its_id_exists_even_when_concurrent",
    "test_of_two_saves_that_expect_the_same_version_at_most_one_succeeds_when_concurrent",
}
QUEUES_SKIPPED = {"test_scheduling_a_message_whose_key_was_scheduled_before_is_collapsed_into_one"}

_LINE = re.compile(r"^(PASSED|FAILED) (.+) \(\d+\.\d\ds\)$|^SKIPPED (.+?) \(\d+\.\d\ds\): (.*)$")
_SUMMARY = re.compile(r"^(\d+) passed, (\d+) failed, (\d+) skipped$", re.MULTILINE)


@dataclass
class Results:
    """The result lines of one program run inside Pyodide."""

    outcomes: dict[str, tuple[str, str]]  # test id -> (outcome, skip reason)
    passed: int
    failed: int
    skipped: int
    output: str
    duration_s: float

    def cases(self, prefix: str) -> dict[str, tuple[str, str]]:
        """The outcomes of ``prefix`` and its parametrized cases (``prefix[...]``)."""
        return {k: v for k, v in self.outcomes.items() if k == prefix or k.startswith(prefix + "[")}


def parse(stdout: str, stderr: str, duration_s: float) -> Results:
    outcomes: dict[str, tuple[str, str]] = {}
    for line in stdout.splitlines():
        match = _LINE.match(line)
        if match is None:
            continue
        if match.group(1):
            outcomes[match.group(2)] = (match.group(1), "")
        else:
            outcomes[match.group(3)] = ("SKIPPED", match.group(4))
    summary = _SUMMARY.search(stdout)
    output = f"--- stdout ---\n{stdout}\n--- stderr (tail) ---\n{stderr[-6000:]}"
    assert summary, f"no 'N passed, M failed, K skipped' line\n{output}"
    passed, failed, skipped = (int(g) for g in summary.groups())
    return Results(outcomes, passed, failed, skipped, output, duration_s)


@pytest.fixture(scope="session")
def test_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A source root with the ``tests`` package parts the programs import (core tests, the
    long loop); the contract suites and scenarios come with ``refluxo.testing``."""
    root = tmp_path_factory.mktemp("pyodide-tests")
    tests = root / "tests"
    (tests / "core").mkdir(parents=True)
    for name in ("__init__.py", "conftest.py"):
        shutil.copy2(REPO / "tests" / name, tests / name)
    for name in ("__init__.py", *CORE_TEST_MODULES):
        shutil.copy2(REPO / "tests" / "core" / name, tests / "core" / name)
    (tests / "dispatcher").mkdir()
    for name in ("__init__.py", "longrun.py"):
        shutil.copy2(REPO / "tests" / "dispatcher" / name, tests / "dispatcher" / name)
    return root


_RUNS: dict[str, Results] = {}


def run_program(
    name: str, run_in_pyodide: Callable[..., Any], test_tree: Path, **bindings: Any
) -> Results:
    """Run ``in_pyodide/<name>`` once per session and parse its result lines."""
    if name not in _RUNS:
        src = [REPO / "core", REPO / "adapters" / "cloudflare", test_tree, IN_PYODIDE]
        run = run_in_pyodide(IN_PYODIDE / name, src, check=False, **bindings)
        _RUNS[name] = parse(run.stdout, run.stderr, run.duration_s)
    return _RUNS[name]


@pytest.fixture
def contracts(run_in_pyodide: Callable[..., Any], test_tree: Path) -> Results:
    return run_program(
        "contracts.py",
        run_in_pyodide,
        test_tree,
        kv=["STATE"],
        d1=["DB"],
        queues=["STEPS", "JOBS"],
    )


@pytest.fixture
def dispatcher_suite(run_in_pyodide: Callable[..., Any], test_tree: Path) -> Results:
    return run_program(
        "dispatcher_suite.py", run_in_pyodide, test_tree, kv=["STATE"], d1=["DB"], queues=[]
    )


@pytest.fixture
def core_suite(run_in_pyodide: Callable[..., Any], test_tree: Path) -> Results:
    return run_program("core_suite.py", run_in_pyodide, test_tree, kv=[], d1=[], queues=[])


def _expect(results: Results, test_id: str, outcome: str, reason: str = "") -> None:
    cases = results.cases(test_id)
    assert cases, f"{test_id} did not run\n{results.output}"
    for case, (got, why) in cases.items():
        assert got == outcome, f"{case}: {got}, expected {outcome}\n{results.output}"
        assert reason in why, f"{case} skipped for {why!r}, expected {reason!r}"


@pytest.mark.parametrize("name", STORE_TESTS)
def test_d1_state_store_passes_the_whole_contract(contracts: Results, name: str) -> None:
    _expect(contracts, f"TestD1StateStore::{name}", "PASSED")


@pytest.mark.parametrize("name", STORE_TESTS)
def test_kv_state_store_passes_the_contract_declaring_no_atomic_cas(
    contracts: Results, name: str
) -> None:
    if name in KV_SKIPPED:
        _expect(contracts, f"TestKVStateStore::{name}", "SKIPPED", "atomic_compare_and_set")
    else:
        _expect(contracts, f"TestKVStateStore::{name}", "PASSED")


@pytest.mark.parametrize("name", DUE_RUNS_TESTS)
@pytest.mark.parametrize("store", ["TestD1StateStore", "TestKVStateStore"])
def test_d1_and_kv_stores_find_due_runs_for_the_reconciler(
    contracts: Results, store: str, name: str
) -> None:
    _expect(contracts, f"{store}::{name}", "PASSED")


@pytest.mark.parametrize("name", ARCHIVE_TESTS)
def test_d1_state_store_passes_the_result_archive_contract(contracts: Results, name: str) -> None:
    _expect(contracts, f"TestD1ResultArchive::{name}", "PASSED")


@pytest.mark.parametrize("name", RUN_INDEX_TESTS)
@pytest.mark.parametrize("store", ["TestD1RunIndex", "TestKVRunIndex"])
def test_d1_and_kv_stores_list_runs_newest_first_with_filters_and_pages(
    contracts: Results, store: str, name: str
) -> None:
    _expect(contracts, f"{store}::{name}", "PASSED")


@pytest.mark.parametrize("name", SCENARIOS)
def test_the_dispatcher_fault_scenarios_pass_on_d1(dispatcher_suite: Results, name: str) -> None:
    _expect(dispatcher_suite, f"d1:dispatcher::{name}", "PASSED")


@pytest.mark.parametrize("name", SCENARIOS)
def test_the_dispatcher_fault_scenarios_pass_on_kv_but_racing_which_it_declares_unsupported(
    dispatcher_suite: Results, name: str
) -> None:
    if name == RACING:
        _expect(dispatcher_suite, f"kv:dispatcher::{name}", "SKIPPED", "compare_and_set")
    else:
        _expect(dispatcher_suite, f"kv:dispatcher::{name}", "PASSED")


@pytest.mark.parametrize(
    "name",
    [
        "test_d1_racing_dispatchers_really_race_and_one_save_of_each_pair_loses",
        "test_kv_racing_dispatchers_complete_the_run_though_both_may_be_told_they_won",
    ],
)
def test_racing_dispatchers_on_d1_lose_a_save_and_on_kv_still_complete_the_run(
    dispatcher_suite: Results, name: str
) -> None:
    _expect(dispatcher_suite, name, "PASSED")
    assert dispatcher_suite.failed == 0, dispatcher_suite.output


def test_on_kv_the_worker_writes_a_run_s_key_once_per_queue_delivery(
    run_in_pyodide: Callable[..., Any], test_tree: Path
) -> None:
    src = [REPO / "core", REPO / "adapters" / "cloudflare", test_tree, IN_PYODIDE]
    run = run_in_pyodide(
        IN_PYODIDE / "kv_writes.py", src, kv=["STATE"], d1=[], queues=["STEPS"], check=False
    )
    for name in (
        "test_a_delivery_that_chains_the_steps_of_a_run_writes_its_key_once",
        "test_with_no_budget_each_step_is_a_delivery_of_its_own_and_a_write",
    ):
        assert f"PASSED {name}" in run.stdout, f"{run.stdout}\n{run.stderr[-6000:]}"
    assert "2 passed, 0 failed" in run.stdout, run.stdout


@pytest.mark.parametrize("name", SCHEDULER_TESTS)
def test_queues_scheduler_passes_the_contract_declaring_no_dedup(
    contracts: Results, name: str
) -> None:
    if name in QUEUES_SKIPPED:
        _expect(contracts, f"TestQueuesScheduler::{name}", "SKIPPED", "deduplicates")
    else:
        _expect(contracts, f"TestQueuesScheduler::{name}", "PASSED")


def test_the_adapters_own_tests_pass_in_pyodide(contracts: Results) -> None:
    own = {k: v for k, v in contracts.outcomes.items() if "::" not in k}
    assert len(own) >= 10, contracts.output
    assert {k for k, (o, _) in own.items() if o != "PASSED"} == set(), contracts.output
    assert contracts.failed == 0, contracts.output
    print(
        f"contracts.py: {contracts.passed} passed, {contracts.skipped} skipped in "
        f"{contracts.duration_s:.1f} s"
    )


def test_the_core_tests_pass_under_pyodide_as_collected_by_pytest(core_suite: Results) -> None:
    collected = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "--collect-only",
            "-q",
            "-p",
            "no:cacheprovider",
            *(f"tests/core/{m}" for m in CORE_TEST_MODULES),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    expected = Counter(
        line.split("::", 1)[1].split("[", 1)[0] for line in collected.splitlines() if "::" in line
    )
    ran = Counter(k.split("::", 1)[1].split("[", 1)[0] for k in core_suite.outcomes)
    assert ran == expected, core_suite.output
    assert core_suite.failed == core_suite.skipped == 0, core_suite.output
    assert core_suite.passed == sum(expected.values())
