"""The CLI's operator commands against a real ``refluxo dev``: runs, retry, rerun, graph."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from .test_cli import DevServer, cli, dev, free_port, wait_status

__all__ = ["dev"]


def test_runs_lists_with_filters_and_global_options_before_or_after(dev: DevServer) -> None:
    cli("start", "demo", "--id", "l-1", url=dev.url)
    cli("start", "demo", "--id", "l-2", url=dev.url)
    assert cli("cancel", "l-2", "--reason", "dup", url=dev.url).returncode == 0
    after = cli("runs", "--status", "failed", "--json", "--url", dev.url)
    before = cli("--url", dev.url, "--json", "runs", "--status", "failed")
    assert after.returncode == before.returncode == 0, after.stderr + before.stderr
    assert json.loads(after.stdout) == json.loads(before.stdout)
    (run,) = json.loads(after.stdout)["runs"]
    assert (run["id"], run["failedReason"]) == ("l-2", "cancelled: dup")
    table = cli("runs", url=dev.url)
    assert table.returncode == 0 and "l-1" in table.stdout and "l-2" in table.stdout
    assert "UTC" in table.stdout
    assert "l-1" not in cli("runs", "--status", "failed", url=dev.url).stdout


def test_retry_and_rerun_through_the_cli(dev: DevServer) -> None:
    cli("start", "demo", "--id", "rt-1", "--input", '{"customer": "Bo"}', url=dev.url)
    wait_status(dev.url, "rt-1", lambda s: (s.get("wait") or {}).get("kind") == "event")
    cli("cancel", "rt-1", url=dev.url)
    refused = cli("retry", "rt-1", url=dev.url)
    assert refused.returncode == 1 and "HTTP 409" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    out = cli("retry", "rt-1", "--force", "--reason", "by mistake", url=dev.url)
    assert out.returncode == 0 and json.loads(out.stdout)["status"] == "active", out.stderr
    snap = wait_status(dev.url, "rt-1", lambda s: (s.get("wait") or {}).get("kind") == "event")
    assert snap["metadata"]["retries"][0]["by"].startswith("cli:")  # type: ignore[index]
    out = cli("rerun", "rt-1", "--from", "approval", "--id", "rt-2", url=dev.url)
    assert out.returncode == 0 and json.loads(out.stdout)["workflowId"] == "rt-2", out.stderr
    wait_status(dev.url, "rt-2", lambda s: (s.get("wait") or {}).get("kind") == "event")
    shown = cli("inspect", "rt-1", url=dev.url).stdout
    assert "UTC" in shown and "retried" in shown and "rerun as rt-2 from approval" in shown
    timeline = json.loads(cli("timeline", "rt-2", url=dev.url).stdout)
    assert timeline["rerunOf"]["run"] == "rt-1"


def test_graph_reads_the_definition_from_a_deployment(dev: DevServer) -> None:
    here = cli("graph", "demo")
    there = cli("graph", "demo", "--url", dev.url)
    assert there.returncode == 0, there.stderr
    assert there.stdout == here.stdout
    missing = cli("graph", "nope", "--url", dev.url)
    assert missing.returncode == 2 and "no workflow 'nope'" in missing.stderr


def test_dev_finds_an_app_in_the_current_folder_and_errors_are_one_line(tmp_path: Path) -> None:
    (tmp_path / "mymod.py").write_text(
        textwrap.dedent(
            """
            from refluxo.demo import workflows
            """
        )
    )
    script = Path(sys.executable).with_name("refluxo")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    port = free_port()
    proc = subprocess.Popen(
        [str(script), "dev", "--app", "mymod", "--port", str(port), "--db", "d.db"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert "serving demo" in first, first
        shown = [proc.stdout.readline() for _ in range(4)]
        assert any(str(tmp_path / "d.db") in line for line in shown), shown
        assert any("mymod: demo" in line for line in shown), shown
    finally:
        proc.terminate()
        proc.wait(timeout=15)
        if proc.stdout is not None:
            proc.stdout.close()
    bad = subprocess.run(
        [str(script), "dev", "--app", "nosuchmod"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert bad.returncode == 2
    assert len(bad.stderr.strip().splitlines()) == 1 and "nosuchmod" in bad.stderr, bad.stderr
    assert "PYTHONPATH" in bad.stderr


def test_move_takes_a_waiting_run_to_another_dev_server(dev: DevServer, tmp_path: Path) -> None:
    other = DevServer(tmp_path / "other.db")
    other.start()
    try:
        cli("start", "demo", "--id", "mv-1", url=dev.url)
        wait_status(dev.url, "mv-1", lambda s: (s.get("wait") or {}).get("kind") == "event")
        out = cli("move", "mv-1", "--from", dev.url, "--to", other.url)
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["workflowId"] == "mv-1"
        source = wait_status(dev.url, "mv-1", lambda s: s["status"] == "failed")
        assert source["metadata"]["failedReason"] == "moved"  # type: ignore[index]
        assert source["metadata"]["movedTo"] == other.url  # type: ignore[index]
        again = cli("move", "mv-1", "--from", dev.url, "--to", other.url)
        assert again.returncode == 1 and "nothing to move" in again.stderr
        cli("event", "mv-1", "--name", "approval", "--payload", '{"approved": true}', url=other.url)
        wait_status(other.url, "mv-1", lambda s: s["status"] == "completed")
    finally:
        other.stop()


def test_move_refuses_before_ending_the_run_when_the_target_holds_its_id(
    dev: DevServer, tmp_path: Path
) -> None:
    other = DevServer(tmp_path / "other.db")
    other.start()
    try:
        cli("start", "demo", "--id", "twin", url=dev.url)
        cli("start", "demo", "--id", "twin", url=other.url)
        out = cli("move", "twin", "--from", dev.url, "--to", other.url)
        assert out.returncode == 1 and "holds a run 'twin' already" in out.stderr
        assert wait_status(dev.url, "twin", lambda s: True)["status"] != "failed"
    finally:
        other.stop()


def test_usage_errors_are_one_line_and_no_command_prints_the_help() -> None:
    bad = cli("runs", "--status", "bogus")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
    assert "--status" in bad.stderr
    bare = cli()
    assert bare.returncode == 2 and "Commands:" in bare.stdout and "retry" in bare.stdout
