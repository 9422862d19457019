"""What every benchmark section shares: the figures it reports, its sizes, timing helpers."""

from __future__ import annotations

import gc
import importlib.util
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

ROOT = Path(__file__).resolve().parents[1]
"""The repository's root (benchmarks/ lives directly in it)."""

Mode = Literal["full", "quick", "tiny"]
"""``full`` for ``make bench``; ``quick`` for a fast look; ``tiny`` for the smoke test only."""


@dataclass(frozen=True)
class Config:
    """How one invocation runs: its mode, how often each measurement repeats, its command.

    Attributes:
        mode: full, quick or tiny (see :data:`Mode`).
        repeats: how many times each timed measurement runs; figures are their median.
        command: the command line that reproduces a section, ``{section}`` left to fill in.
    """

    mode: Mode = "full"
    repeats: int = 5
    command: str = "python -m benchmarks.run --section {section}"

    def pick(self, full: int, quick: int, tiny: int) -> int:
        """The size for this mode."""
        return {"full": full, "quick": quick, "tiny": tiny}[self.mode]

    def command_for(self, section: str) -> str:
        return self.command.format(section=section)


@dataclass
class Figure:
    """One reported number: what it is, its value, its goal, and the command that measured it.

    Attributes:
        id: a stable dotted identifier, e.g. ``engine.loop_retention.steps_per_s``.
        name: what the figure is, for people.
        value: the number (None when it could not be measured).
        unit: its unit (``steps/s``, ``us``, ``x``, ``%``, ``B``...).
        display: the value as the table shows it (with context such as the two ends of a ratio).
        goal: the goal as text (``<= 1.2``), or None for an informative figure.
        passed: whether the goal is met; None without a goal.
        command: the command that produced it.
        details: every number behind it (all runs, both ends of a ratio...), for the JSON.
    """

    id: str
    name: str
    value: float | None
    unit: str
    display: str
    command: str
    goal: str | None = None
    passed: bool | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "value": self.value,
            "unit": self.unit,
            "display": self.display,
            "goal": self.goal,
            "passed": self.passed,
            "command": self.command,
            "details": self.details,
        }


@dataclass
class SectionResult:
    """What a section reports: its figures, notes for the reader, and why it skipped, if so."""

    section: str
    title: str
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    skipped: str | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "section": self.section,
            "title": self.title,
            "figures": [f.to_dict() for f in self.figures],
            "notes": list(self.notes),
            "skipped": self.skipped,
            "seconds": round(self.seconds, 2),
        }


def median(values: Iterable[float]) -> float:
    """The median; raises ValueError on no values."""
    data = list(values)
    if not data:
        raise ValueError("median of no values")
    return float(statistics.median(data))


def spread(values: Sequence[float]) -> dict[str, float | list[float]]:
    """Median, min, max and every value, rounded, for a figure's details."""
    return {
        "median": round(median(values), 6),
        "min": round(min(values), 6),
        "max": round(max(values), 6),
        "runs": [round(v, 6) for v in values],
    }


def at_most(value: float, goal: float) -> bool:
    return value <= goal


def fmt_num(value: float, digits: int = 3) -> str:
    """A number with ``digits`` significant digits, thousands separated when large."""
    if value == 0:
        return "0"
    if abs(value) >= 10 ** (digits - 1):
        return f"{value:,.0f}"
    return f"{value:.{digits}g}"


def fmt_us(seconds: float) -> str:
    """A duration given in seconds, shown in the most readable unit."""
    us = seconds * 1e6
    if us < 1000:
        return f"{fmt_num(us)} us"
    if us < 1_000_000:
        return f"{fmt_num(us / 1000)} ms"
    return f"{fmt_num(us / 1e6)} s"


def fmt_bytes(n: float) -> str:
    if n < 10_000:
        return f"{n:,.0f} B"
    if n < 10_000_000:
        return f"{n / 1024:,.1f} KiB"
    return f"{n / 1024 / 1024:,.1f} MiB"


def ratio_figure(
    *,
    id: str,
    name: str,
    near: float,
    far: float,
    fmt: Callable[[float], str],
    command: str,
    goal: float | None,
    details: dict[str, Any],
) -> Figure:
    """A figure for ``far / near``, shown with both ends, checked against ``<= goal``."""
    value = far / near if near else float("inf")
    return Figure(
        id=id,
        name=name,
        value=round(value, 3),
        unit="x",
        display=f"{value:.2f}x ({fmt(near)} -> {fmt(far)})",
        command=command,
        goal=None if goal is None else f"<= {goal}",
        passed=None if goal is None else at_most(value, goal),
        details={"near": near, "far": far, **details},
    )


def clean() -> None:
    """Collect garbage before a timed run, so one run's garbage is not the next one's cost."""
    gc.collect()


def now() -> float:
    return time.perf_counter()


def written_bytes() -> int | None:
    """Bytes this process has passed to write() so far (Linux ``/proc/self/io``), or None."""
    try:
        with open("/proc/self/io", encoding="ascii") as f:
            for line in f:
                if line.startswith("wchar:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def load_module(path: Path, name: str) -> ModuleType:
    """The Python file at ``path`` imported as module ``name`` (a file that is no package's:
    the deploy scripts, the tests' emulator helpers)."""
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
