"""The README's example runs as printed."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_complete_example_runs() -> None:
    text = README.read_text()
    section = text.split("## A complete example", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert code is not None
    out = subprocess.run(
        [sys.executable, "-c", code.group(1)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("completed {'text': 'Hello Ada'}")


def test_the_readme_shows_the_two_commands() -> None:
    text = README.read_text()
    assert "make demo" in text and "make test" in text


def test_the_parallel_branches_example_runs_and_joins_both_branches() -> None:
    text = README.read_text()
    section = text.split("## Parallel branches and joins", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert code is not None
    out = subprocess.run(
        [sys.executable, "-c", code.group(1)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == (
        "completed {'branches': {'stock': 'stock ok', 'payment': 'payment ok'}, "
        "'paid': 'payment ok'}"
    )
