"""Run refluxo's benchmarks and write ``benchmarks/results/results.{json,md}``.

    python -m benchmarks.run                      every section (what ``make bench`` runs)
    python -m benchmarks.run --quick              smaller sizes, fewer repeats
    python -m benchmarks.run --section engine --section coldstart
    python benchmarks/run.py --list               the sections

Sections: ``engine`` (1, engine overhead), ``flatness`` (2, per-step time and bytes at step 100
and 10,000), ``embedded`` (3, SQLite store + local scheduler throughput against raw SQLite),
``coldstart`` (4, import time of the Cloud Function and Worker entries against their SDKs),
``platform`` (5, per-step latency through the Firestore and Cloud Tasks emulators),
``worker`` (5b, one run of N steps end to end in the Worker harness, on KV and on D1),
``frontdoor`` (6, requests/s and p99 of the local HTTP server against the former one),
``postgres`` (7, steps/s with 1, 2 and 4 worker processes on one PostgreSQL database against
the SQLite embedded figure), ``vs_typescript`` (1b, our engine beside the TypeScript engine run
from its source with tsx, ratios in the same run), ``vs_dbos`` (6, the embedded runtime and
DBOS Transact on the same durable workload, SQLite and PostgreSQL).

Figures are medians of several runs, and ratios are measured within one run, so that a busy
machine shifts both sides alike. Each figure carries the command that reproduces it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: python benchmarks/run.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import (
    coldstart,
    embedded,
    engine_overhead,
    flatness,
    front_door,
    platform_latency,
    postgres,
    vs_dbos,
    vs_typescript,
    worker_latency,
)
from benchmarks.common import ROOT, Config, Mode, SectionResult, load_average

SECTIONS: dict[str, tuple[str, Callable[[Config], SectionResult]]] = {
    engine_overhead.SECTION: (engine_overhead.TITLE, engine_overhead.run),
    vs_typescript.SECTION: (vs_typescript.TITLE, vs_typescript.run),
    flatness.SECTION: (flatness.TITLE, flatness.run),
    embedded.SECTION: (embedded.TITLE, embedded.run),
    coldstart.SECTION: (coldstart.TITLE, coldstart.run),
    platform_latency.SECTION: (platform_latency.TITLE, platform_latency.run),
    worker_latency.SECTION: (worker_latency.TITLE, worker_latency.run),
    front_door.SECTION: (front_door.TITLE, front_door.run),
    postgres.SECTION: (postgres.TITLE, postgres.run),
    vs_dbos.SECTION: (vs_dbos.TITLE, vs_dbos.run),
}
DEFAULT_OUT = ROOT / "benchmarks" / "results"


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _meta(mode: Mode, repeats: int, argv: Sequence[str]) -> dict[str, Any]:
    # The results folder itself does not make the measured code dirty.
    status = _git("status", "--porcelain", "--", ".", ":(exclude)benchmarks/results")
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "commit": _git("rev-parse", "--short", "HEAD"),
        "dirty": bool(status) if status is not None else None,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpus": os.cpu_count(),
        "mode": mode,
        "repeats": repeats,
        "argv": " ".join(["python -m benchmarks.run", *argv]),
        "load_average_start": load_average(),
    }


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(data: dict[str, Any]) -> str:
    """The results as a Markdown page: a header, one table, then each section's notes."""
    meta = data["meta"]
    lines = [
        "# refluxo benchmark results",
        "",
        f"- date: {meta['date']}, commit {meta['commit']}"
        + (" (with uncommitted changes)" if meta.get("dirty") else ""),
        f"- machine: {meta['cpu']}, {meta['cpus']} CPUs; {meta['implementation']} "
        f"{meta['python']} on {meta['platform']}",
        f"- mode: {meta['mode']}, {meta['repeats']} repeats per measurement "
        f"(figures are medians); load average at start {meta['load_average_start']}, "
        f"at end {meta.get('load_average_end')}",
        f"- wall time: {meta.get('seconds', 0):.0f} s; command: `{meta['argv']}`",
        "",
        "| Figure | Value | Goal | Pass/fail | Command |",
        "| --- | --- | --- | --- | --- |",
    ]
    for section in data["sections"]:
        if section["skipped"]:
            lines.append(
                f"| {_cell(section['title'])} | skipped | | | {_cell(section['skipped'])} |"
            )
        for fig in section["figures"]:
            verdict = "" if fig["passed"] is None else ("pass" if fig["passed"] else "**FAIL**")
            lines.append(
                f"| {_cell(fig['name'])} | {_cell(fig['display'])} | {_cell(fig['goal'] or '-')} "
                f"| {verdict} | `{fig['command']}` |"
            )
    lines.append("")
    for section in data["sections"]:
        if not section["notes"] and not section["skipped"]:
            continue
        lines += ["", f"## {section['title']}", ""]
        if section["skipped"]:
            lines.append(f"Skipped: {section['skipped']}")
            lines.append("")
        for note in section["notes"]:
            lines.append(f"- {note}")
    lines.append("")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run", description=(__doc__ or "").split("\n\n")[0]
    )
    parser.add_argument(
        "--section",
        action="append",
        choices=list(SECTIONS),
        help="run only this section (repeatable); default: all",
    )
    parser.add_argument("--quick", action="store_true", help="smaller sizes, fewer repeats")
    parser.add_argument(
        "--tiny", action="store_true", help="tiny sizes, one repeat: for the smoke test only"
    )
    parser.add_argument("--repeats", type=int, help="repeats per measurement (default 5; quick 2)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where results go")
    parser.add_argument("--list", action="store_true", help="list the sections and exit")
    args = parser.parse_args(argv)
    raw_argv = list(sys.argv[1:] if argv is None else argv)

    if args.list:
        for name, (title, _) in SECTIONS.items():
            print(f"{name:10} {title}")
        return 0
    mode: Mode = "tiny" if args.tiny else "quick" if args.quick else "full"
    repeats = args.repeats or {"full": 5, "quick": 2, "tiny": 1}[mode]
    if repeats < 1:
        parser.error("--repeats must be at least 1")
    flags = {"full": "", "quick": " --quick", "tiny": " --tiny"}[mode]
    if args.repeats:
        flags += f" --repeats {args.repeats}"
    cfg = Config(
        mode=mode,
        repeats=repeats,
        command=f"python -m benchmarks.run --section {{section}}{flags}",
    )
    chosen = args.section or list(SECTIONS)
    meta = _meta(mode, repeats, raw_argv)
    started = time.perf_counter()
    sections: list[dict[str, Any]] = []
    for name in chosen:
        title, runner = SECTIONS[name]
        print(f"[bench] {title} ...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        result = runner(cfg)
        result.seconds = time.perf_counter() - t0
        sections.append(result.to_dict())
        for fig in result.figures:
            verdict = "" if fig.passed is None else ("  pass" if fig.passed else "  FAIL")
            print(f"  {fig.name}: {fig.display}{verdict}", file=sys.stderr, flush=True)
        if result.skipped:
            print(f"  skipped: {result.skipped}", file=sys.stderr, flush=True)
        print(f"  ({result.seconds:.1f} s)", file=sys.stderr, flush=True)
    meta["seconds"] = round(time.perf_counter() - started, 1)
    meta["load_average_end"] = load_average()
    data = {"meta": meta, "sections": sections}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(data, indent=2) + "\n")
    (args.out / "results.md").write_text(render_markdown(data))
    print(f"[bench] wrote {args.out / 'results.md'} and results.json", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
