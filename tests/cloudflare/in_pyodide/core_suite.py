"""Runs inside Pyodide: the core's own tests (engine, expressions, snapshots) under Python 3.14.

``test_cloudflare_in_pyodide.py`` starts it with ``harness.mjs run`` and compares what ran
here with what pytest collects from the same modules on the host.
"""

from pytest_lite import Runner

import tests.conftest
from tests.core import test_engine, test_expressions, test_secrets, test_snapshot

runner = Runner(fixture_modules=[tests.conftest])
for module in (test_engine, test_expressions, test_secrets, test_snapshot):
    await runner.run_module(module)  # noqa: F704 - `harness.mjs run` allows top-level await
raise SystemExit(runner.summary())
