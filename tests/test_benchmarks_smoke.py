"""The benchmarks' code paths still run and write well-formed results (tiny sizes, no timing).

Speed goals live in the benchmarks (``make bench``), not here. The platform section needs the
emulators and is left out; the postgres section has its own smoke test in tests/postgres.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from benchmarks import run

SECTIONS = ["engine", "flatness", "embedded", "coldstart", "frontdoor"]


def test_benchmarks_run_and_write_well_formed_results(tmp_path: Path) -> None:
    argv = ["--tiny", "--out", str(tmp_path)]
    for section in SECTIONS:
        argv += ["--section", section]

    assert run.main(argv) == 0

    data = json.loads((tmp_path / "results.json").read_text())
    assert data["meta"]["mode"] == "tiny"
    assert [s["section"] for s in data["sections"]] == SECTIONS
    ids: set[str] = set()
    for section in data["sections"]:
        assert section["skipped"] is None, section
        assert section["figures"], section["section"]
        assert section["notes"], section["section"]
        for fig in section["figures"]:
            assert fig["id"] not in ids, fig["id"]
            ids.add(fig["id"])
            assert fig["id"].startswith(section["section"] + "."), fig["id"]
            assert isinstance(fig["value"], int | float), fig
            assert math.isfinite(fig["value"]) and fig["value"] >= 0, fig
            assert fig["name"] and fig["unit"] and fig["display"], fig
            assert fig["command"] == (
                f"python -m benchmarks.run --section {section['section']} --tiny"
            )
            # A figure with a goal says whether it passed; one without does not pretend to.
            assert (fig["goal"] is None) == (fig["passed"] is None), fig

    markdown = (tmp_path / "results.md").read_text()
    assert "| Figure | Value | Goal | Pass/fail | Command |" in markdown
    rows = [line for line in markdown.splitlines() if line.startswith("| ") and "`" in line]
    assert len(rows) == len(ids)
    for section in data["sections"]:
        assert f"## {section['title']}" in markdown


def test_the_section_list_names_every_section(capsys: pytest.CaptureFixture[str]) -> None:
    assert run.main(["--list"]) == 0
    out = capsys.readouterr().out
    for section in [*SECTIONS, "platform", "worker", "postgres", "vs_typescript", "vs_dbos"]:
        assert section in out


def test_the_branches_benchmark_runs_and_prints_its_table(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from benchmarks import branches

    branches.main(["--store", "memory", "--store", "sqlite", "--branches", "3", "--repeats", "1"])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| store | branches |")
    assert [row.split("|")[1:3] for row in rows[2:]] == [[" memory ", " 3 "], [" sqlite ", " 3 "]]


def test_the_typescript_comparison_reports_our_side_when_the_typescript_engine_is_absent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REFLUXO_TS_ENGINE", str(tmp_path / "no-such-engine"))

    assert run.main(["--tiny", "--out", str(tmp_path), "--section", "vs_typescript"]) == 0

    (section,) = json.loads((tmp_path / "results.json").read_text())["sections"]
    assert section["skipped"] is None
    ids = [fig["id"] for fig in section["figures"]]
    assert "vs_typescript.loop_roundtrip_defaults.steps_per_s" in ids
    assert not [i for i in ids if i.endswith("ours_over_ts")]
    assert any(
        "TypeScript side skipped" in note and "REFLUXO_TS_ENGINE" in note
        for note in section["notes"]
    )


def test_the_typescript_comparison_reports_our_loop_with_plain_executors_without_a_goal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REFLUXO_TS_ENGINE", str(tmp_path / "no-such-engine"))

    assert run.main(["--tiny", "--out", str(tmp_path), "--section", "vs_typescript"]) == 0

    (section,) = json.loads((tmp_path / "results.json").read_text())["sections"]
    figures = {fig["id"]: fig for fig in section["figures"]}
    plain = figures["vs_typescript.loop_plain.steps_per_s"]
    assert "plain executors" in plain["name"]
    assert plain["value"] > 0
    assert plain["goal"] is None


def test_the_typescript_comparison_reports_a_ratio_per_workload(tmp_path: Path) -> None:
    from benchmarks import vs_typescript

    missing = vs_typescript.typescript_missing()
    if missing is not None:
        pytest.skip(f"the TypeScript side cannot run here: {missing}")

    assert run.main(["--tiny", "--out", str(tmp_path), "--section", "vs_typescript"]) == 0

    (section,) = json.loads((tmp_path / "results.json").read_text())["sections"]
    ratios = {fig["id"]: fig for fig in section["figures"] if fig["id"].endswith("ours_over_ts")}
    assert sorted(ratios) == [
        f"vs_typescript.{w}.ours_over_ts"
        for w in sorted(
            ["linear", "loop", "linear_roundtrip", "loop_roundtrip", "loop_roundtrip_defaults"]
        )
    ]
    for fig in ratios.values():
        assert math.isfinite(fig["value"]) and fig["value"] > 0
        assert fig["passed"] is not None


def test_the_dbos_comparison_says_how_to_install_dbos_when_it_is_absent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from benchmarks import vs_dbos

    monkeypatch.setattr(vs_dbos, "DBOS_PYTHON", tmp_path / "no-such-python")

    assert run.main(["--tiny", "--out", str(tmp_path), "--section", "vs_dbos"]) == 0

    (section,) = json.loads((tmp_path / "results.json").read_text())["sections"]
    assert section["figures"] == []
    assert "make setup-bench" in section["skipped"]


def test_the_dbos_comparison_reports_a_ratio_on_sqlite(tmp_path: Path) -> None:
    from benchmarks import vs_dbos

    missing = vs_dbos.dbos_missing()
    if missing is not None:
        pytest.skip(missing)

    assert run.main(["--tiny", "--out", str(tmp_path), "--section", "vs_dbos"]) == 0

    (section,) = json.loads((tmp_path / "results.json").read_text())["sections"]
    figures = {fig["id"]: fig for fig in section["figures"]}
    ratio = figures["vs_dbos.sqlite.ours_over_dbos"]
    assert math.isfinite(ratio["value"]) and ratio["value"] > 0
    assert ratio["passed"] is not None


def test_the_worker_section_skips_naming_the_setup_when_the_harness_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from benchmarks import worker_latency

    monkeypatch.setattr(worker_latency, "HARNESS_DIR", tmp_path / "no-harness")

    assert run.main(["--tiny", "--out", str(tmp_path), "--section", "worker"]) == 0
    [section] = json.loads((tmp_path / "results.json").read_text())["sections"]
    assert section["figures"] == []
    assert "make setup-cloudflare" in section["skipped"], section
