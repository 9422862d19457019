"""Finding ``{{ ... }}`` in adversarial texts takes linear time.

Each case runs in a child process (so not under Pyodide, which has none): a quadratic scan of
these megabytes takes hours, a linear one milliseconds, and a generous deadline keeps a
regression from hanging the suite. The assertions are on the outcome, not on the time.
"""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize(
    ("shape", "output"),
    [
        ("'{{' * 1_000_000", "None"),  # the report: openings without a closing
        ("'a{{' * 700_000", "None"),
        ("'{' * 2_000_000", "None"),
        ("'{{ ' + '}' * 2_000_000", "None"),
        ("'}}' + '{{x' * 700_000", "None"),
        ("'x' * 2_000_000 + '{{'", "None"),
        # a %-format text from a result: '%(' without ')' rescanned the rest at every '%('
        ("'{{ f % {} }}'", "'%(' * 1_000_000"),
    ],
)
def test_scanning_adversarial_templates_is_linear(shape: str, output: str) -> None:
    # 80 kB of '{{' took 27 s before; these are megabytes.
    program = (
        "from refluxo.core.expressions import resolve\n"
        "from refluxo.core import ExpressionError, NodeResult\n"
        "from refluxo.core.nodes import Context\n"
        f"data = {shape}\n"
        f"ctx = Context({{'f': [NodeResult(output={output}, timestamp=1)]}})\n"
        "try:\n"
        "    out = resolve(data, ctx)\n"
        "    print('same' if out == data else 'changed')\n"
        "except ExpressionError as exc:\n"
        "    print('refused', str(exc)[:60])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[0] in ("same", "refused")
