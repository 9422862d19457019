"""deploy/gcp/deploy.py: the bundle it builds and the gcloud commands it runs (or prints).

Nothing reaches Google: ``--dry-run`` must run no command at all, and the one test of a real
run replaces ``subprocess.run`` with a recorder that plays a project with nothing in it yet.
"""

from __future__ import annotations

import filecmp
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
SOURCES = {
    "refluxo/core": REPO / "core" / "refluxo" / "core",
    "refluxo/gcp": REPO / "adapters" / "gcp" / "refluxo" / "gcp",
    "refluxo/demo": REPO / "core" / "refluxo" / "demo",
}
PROJECT, REGION = "demo-project", "europe-west1"
SA = f"refluxo-runner@{PROJECT}.iam.gserviceaccount.com"
URL = f"https://{REGION}-{PROJECT}.cloudfunctions.net/refluxo"


def files(root: Path) -> set[str]:
    """Every file under ``root``, relative, with ``/`` separators."""
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def source_files(root: Path) -> set[str]:
    return {f for f in files(root) if "__pycache__" not in f and not f.endswith(".pyc")}


# --------------------------------------------------------------------------- #
# The bundle
# --------------------------------------------------------------------------- #


def test_build_only_writes_exactly_the_bundle(
    deploy_script: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "bundle"
    assert deploy_script.main(["--build-only", "--out", str(out)]) == 0
    (out / "left-over.txt").write_text("from an earlier build")
    assert deploy_script.main(["--build-only", "--out", str(out)]) == 0  # a rebuild
    assert f"bundle: {out}" in capsys.readouterr().out

    expected = {"main.py", "requirements.txt", ".gcloudignore", ".refluxo-bundle"}
    for dest, src in SOURCES.items():
        expected |= {f"{dest}/{f}" for f in source_files(src)}
    assert files(out) == expected
    assert sorted(p.name for p in (out / "refluxo").iterdir()) == ["core", "demo", "gcp"]
    # Byte for byte what the repository holds.
    assert filecmp.cmp(out / "main.py", REPO / "deploy" / "gcp" / "main.py", shallow=False)
    assert filecmp.cmp(
        out / "requirements.txt", REPO / "deploy" / "gcp" / "requirements.txt", shallow=False
    )
    for dest, src in SOURCES.items():
        for name in source_files(src):
            assert filecmp.cmp(out / dest / name, src / name, shallow=False), name
    assert "__pycache__/" in (out / ".gcloudignore").read_text().splitlines()


def test_the_bundle_leaves_out_tests_the_local_adapter_and_caches(
    deploy_script: Any, tmp_path: Path
) -> None:
    out = deploy_script.build(tmp_path / "bundle", "refluxo.demo")
    everything = files(out)
    assert not any("__pycache__" in f or f.endswith(".pyc") for f in everything)
    assert not any(
        f.startswith(("tests/", "refluxo/local/", "refluxo/cloudflare/")) for f in everything
    )
    assert not any(f.startswith(("benchmarks/", "deploy/")) for f in everything)
    assert not (out / "refluxo" / "__init__.py").exists()  # a namespace package, as in the repo


def test_the_bundle_requirements_pin_what_refluxo_gcp_imports(
    deploy_script: Any, tmp_path: Path
) -> None:
    out = deploy_script.build(tmp_path / "bundle", "refluxo.demo")
    pinned = {
        line.split("==")[0].strip().lower()
        for line in (out / "requirements.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {
        "functions-framework",
        "google-cloud-firestore",
        "google-cloud-tasks",
        "google-auth",
        "requests",
        "pydantic",
    } <= pinned


def test_an_app_of_ones_own_is_bundled_from_app_src(deploy_script: Any, tmp_path: Path) -> None:
    app = tmp_path / "flows.py"
    app.write_text("def workflows():\n    return []\n")
    out = deploy_script.build(tmp_path / "bundle", "flows:workflows", app_src=app)
    assert (out / "flows.py").read_text() == app.read_text()
    assert not (out / "refluxo" / "demo").exists()
    with pytest.raises(SystemExit, match="--app-src"):
        deploy_script.build(tmp_path / "other", "flows")


# --------------------------------------------------------------------------- #
# The cloud commands
# --------------------------------------------------------------------------- #


def commands(output: str) -> list[list[str]]:
    """The commands a run printed (``+ gcloud ...`` lines)."""
    return [shlex.split(line[2:]) for line in output.splitlines() if line.startswith("+ ")]


def find(cmds: list[list[str]], *prefix: str) -> list[str]:
    found = [c for c in cmds if c[: len(prefix)] == list(prefix)]
    assert len(found) == 1, (prefix, cmds)
    return found[0]


def option(cmd: list[str], name: str) -> str:
    return cmd[cmd.index(name) + 1]


def test_dry_run_prints_the_deployment_and_runs_nothing(
    deploy_script: Any,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"--dry-run ran {args}")

    monkeypatch.setattr(subprocess, "run", refuse)
    monkeypatch.setattr(subprocess, "Popen", refuse)
    out = tmp_path / "bundle"
    argv = ["--project", PROJECT, "--region", REGION, "--out", str(out), "--dry-run"]
    assert deploy_script.main(argv) == 0
    printed = capsys.readouterr().out
    cmds = commands(printed)
    assert all(c[0] == "gcloud" for c in cmds)

    enable = find(cmds, "gcloud", "services", "enable")
    for api in ("cloudfunctions", "run", "cloudbuild", "cloudtasks", "firestore"):
        assert f"{api}.googleapis.com" in enable

    account = find(cmds, "gcloud", "iam", "service-accounts", "create")
    assert account[4] == "refluxo-runner"
    roles = {option(c, "--role") for c in cmds if "add-iam-policy-binding" in c}
    assert roles == {
        "roles/datastore.user",
        "roles/cloudtasks.enqueuer",
        "roles/iam.serviceAccountUser",
    }

    find(cmds, "gcloud", "firestore", "databases", "create")
    queue = find(cmds, "gcloud", "tasks", "queues", "create")
    assert queue[4] == "refluxo-steps" and option(queue, "--location") == REGION

    deploy = find(cmds, "gcloud", "functions", "deploy")
    assert deploy[3] == "refluxo"
    for flag in ("--gen2", "--trigger-http", "--no-allow-unauthenticated"):
        assert flag in deploy, flag
    assert "--allow-unauthenticated" not in deploy
    assert option(deploy, "--entry-point") == "refluxo"
    assert option(deploy, "--source") == str(out)
    assert option(deploy, "--service-account") == SA
    assert option(deploy, "--region") == REGION
    variables = dict(pair.split("=", 1) for pair in option(deploy, "--set-env-vars").split(","))
    assert variables == {
        "REFLUXO_APP": "refluxo.demo",
        "REFLUXO_PROJECT": PROJECT,
        "REFLUXO_LOCATION": REGION,
        "REFLUXO_QUEUE": "refluxo-steps",
        "REFLUXO_COLLECTION": "refluxo_runs",
        "REFLUXO_FUNCTION_URL": URL,
        "REFLUXO_SERVICE_ACCOUNT": SA,
        "REFLUXO_TRUST_PLATFORM_AUTH": "1",
    }
    invoker = find(cmds, "gcloud", "functions", "add-invoker-policy-binding")
    assert invoker[3] == "refluxo" and option(invoker, "--member") == f"serviceAccount:{SA}"

    # Every command names the project (the project-level bindings as their argument).
    for cmd in cmds:
        named = option(cmd, "--project") if "--project" in cmd else cmd[3]
        assert named == PROJECT, cmd
    # The function is deployed after what it needs, and made invokable last.
    order = [" ".join(c[1:4]) for c in cmds]
    assert order.index("functions deploy refluxo") > order.index("tasks queues create")
    assert order[-1].startswith("functions add-invoker-policy-binding")
    assert f"deployed: {URL}" in printed
    assert files(out) >= {"main.py", "requirements.txt", "refluxo/gcp/function.py"}


def test_dry_run_needs_no_third_party_package(tmp_path: Path) -> None:
    # -S: no site-packages at all (nor the project's editable install); a fake gcloud on PATH
    # would leave a mark if the script ran it.
    mark = tmp_path / "gcloud-ran"
    fake = tmp_path / "bin" / "gcloud"
    fake.parent.mkdir()
    fake.write_text(f"#!/bin/sh\ntouch {shlex.quote(str(mark))}\n")
    fake.chmod(0o755)
    script = REPO / "deploy" / "gcp" / "deploy.py"
    argv = ["--project", PROJECT, "--region", REGION, "--out", str(tmp_path / "b"), "--dry-run"]
    result = subprocess.run(
        [sys.executable, "-S", str(script), *argv],
        env={**os.environ, "PATH": f"{fake.parent}{os.pathsep}{os.environ.get('PATH', '')}"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "gcloud functions deploy refluxo" in result.stdout
    assert not mark.exists()


def test_a_real_run_creates_only_what_is_missing(
    deploy_script: Any,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ran: list[list[str]] = []

    def fake_run(args: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        ran.append(list(args))
        exists = "describe" in args and "service-accounts" in args  # only the account exists
        code = 0 if "describe" not in args or exists else 1
        if kwargs.get("check") and code:
            raise subprocess.CalledProcessError(code, args)
        return subprocess.CompletedProcess(args, code, "", "")

    monkeypatch.setattr(subprocess, "run", fake_run)
    argv = ["--project", PROJECT, "--region", REGION, "--out", str(tmp_path / "b")]
    assert deploy_script.main(argv) == 0
    assert commands(capsys.readouterr().out) == ran
    done = {" ".join(c[1:4]) for c in ran}
    assert "iam service-accounts create" not in done
    assert {"firestore databases create", "tasks queues create", "functions deploy refluxo"} <= done
