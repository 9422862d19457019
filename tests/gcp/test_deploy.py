"""deploy/gcp/deploy.py: the bundle it builds and the gcloud commands it runs (or prints).

Nothing reaches Google: ``--dry-run`` must run no command at all, and the one test of a real
run replaces ``subprocess.run`` with a recorder that plays a project with nothing in it yet.
"""

from __future__ import annotations

import filecmp
import json
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


def option(cmd: list[str], name: str) -> str | None:
    return cmd[cmd.index(name) + 1] if name in cmd else None


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

    account = find(cmds, "gcloud", "iam", "service-accounts", "create", "refluxo-runner")
    assert option(account, "--display-name")
    roles = {
        option(c, "--role")
        for c in cmds
        if "add-iam-policy-binding" in c and option(c, "--member") == f"serviceAccount:{SA}"
    }
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
        if cmd[1] == "scheduler":
            named = option(cmd, "--project")
        assert named == PROJECT, cmd
    # The function is deployed after what it needs, then made invokable, then reconciled.
    order = [" ".join(c[1:4]) for c in cmds]
    assert order.index("functions deploy refluxo") > order.index("tasks queues create")
    assert order[-3].startswith("functions add-invoker-policy-binding")
    assert order[-1] == "scheduler jobs create"
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


BUILDER = f"refluxo-builder@{PROJECT}.iam.gserviceaccount.com"


def dry_run(deploy_script: Any, tmp_path: Path, capsys: Any, *extra: str) -> list[list[str]]:
    argv = ["--project", PROJECT, "--region", REGION, "--out", str(tmp_path / "b"), "--dry-run"]
    assert deploy_script.main([*argv, *extra]) == 0
    return commands(capsys.readouterr().out)


def test_the_function_is_built_by_an_account_with_the_build_roles(
    deploy_script: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cmds = dry_run(deploy_script, tmp_path, capsys)
    created = [c[4] for c in cmds if c[1:4] == ["iam", "service-accounts", "create"]]
    assert created == ["refluxo-runner", "refluxo-builder"]
    granted = {
        option(c, "--role")
        for c in cmds
        if c[1:3] == ["projects", "add-iam-policy-binding"]
        and option(c, "--member") == f"serviceAccount:{BUILDER}"
    }
    assert granted == {
        "roles/logging.logWriter",
        "roles/artifactregistry.writer",
        "roles/storage.objectAdmin",
    }
    deploy = find(cmds, "gcloud", "functions", "deploy")
    assert option(deploy, "--build-service-account") == (
        f"projects/{PROJECT}/serviceAccounts/{BUILDER}"
    )
    order = [" ".join(c[1:4]) for c in cmds]
    assert order.index("functions deploy refluxo") > max(
        i for i, c in enumerate(cmds) if option(c, "--member") == f"serviceAccount:{BUILDER}"
    )


def test_an_existing_build_account_is_used_or_the_default_one_kept(
    deploy_script: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    theirs = "ci-builder@other-project.iam.gserviceaccount.com"
    cmds = dry_run(deploy_script, tmp_path, capsys, "--build-service-account", theirs)
    assert [c[4] for c in cmds if c[1:4] == ["iam", "service-accounts", "create"]] == [
        "refluxo-runner"
    ]
    assert option(find(cmds, "gcloud", "functions", "deploy"), "--build-service-account") == (
        f"projects/{PROJECT}/serviceAccounts/{theirs}"
    )
    cmds = dry_run(deploy_script, tmp_path, capsys, "--build-service-account", "")
    assert "--build-service-account" not in find(cmds, "gcloud", "functions", "deploy")
    assert not any("refluxo-builder" in " ".join(c) for c in cmds)


def test_a_scheduler_job_calls_the_reconciler_with_the_accounts_token(
    deploy_script: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cmds = dry_run(deploy_script, tmp_path, capsys, "--reconcile-every", "10")
    assert "cloudscheduler.googleapis.com" in find(cmds, "gcloud", "services", "enable")
    job = find(cmds, "gcloud", "scheduler", "jobs", "create", "http")
    assert job[5] == "refluxo-reconcile"
    assert option(job, "--schedule") == "*/10 * * * *"
    assert option(job, "--uri") == f"{URL}/_reconcile"
    assert option(job, "--http-method") == "POST"
    assert option(job, "--oidc-service-account-email") == SA
    assert option(job, "--oidc-token-audience") == URL  # what the function's verifier expects
    assert option(job, "--location") == REGION


class Flaky:
    """Plays gcloud on a new project: listed commands fail ``failures`` times, then succeed."""

    def __init__(self, failures: int, error: str, *words: str) -> None:
        self.failures, self.error, self.words = failures, error, words
        self.ran: list[list[str]] = []

    def __call__(self, args: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        self.ran.append(args)
        if "describe" in args:
            return subprocess.CompletedProcess(args, 1, "", "NOT_FOUND")
        if all(w in args for w in self.words) and self.failures > 0:
            self.failures -= 1
            return subprocess.CompletedProcess(args, 1, "", self.error)
        return subprocess.CompletedProcess(args, 0, "", "")


PROPAGATION = [
    (
        "ERROR: (gcloud.projects.add-iam-policy-binding) INVALID_ARGUMENT: Service account "
        f"{SA} does not exist.",
        ("projects", "add-iam-policy-binding"),
    ),
    (
        "ERROR: (gcloud.tasks.queues.create) PERMISSION_DENIED: Cloud Tasks API has not been "
        "used in project demo-project before or it is disabled. reason: SERVICE_DISABLED",
        ("tasks", "queues", "create"),
    ),
    (
        "ERROR: (gcloud.functions.deploy) PERMISSION_DENIED: Build failed: the service account "
        "does not have permission to write logs",
        ("functions", "deploy"),
    ),
]


@pytest.mark.parametrize(("error", "words"), PROPAGATION, ids=["account", "api", "build"])
def test_the_first_run_on_a_new_project_waits_for_grants_and_apis_to_take_effect(
    deploy_script: Any, tmp_path: Path, error: str, words: tuple[str, ...]
) -> None:
    runner, slept = Flaky(3, error, *words), []
    cloud = deploy_script.Cloud(False, runner=runner, sleep=slept.append)
    args = deploy_script.parse_args(
        ["--project", PROJECT, "--region", REGION, "--out", str(tmp_path / "b")]
    )
    deploy_script.deploy(args, cloud)
    assert slept == [5.0, 10.0, 20.0]  # backs off, doubling
    assert runner.failures == 0
    assert runner.ran[-1][1:4] == ["scheduler", "jobs", "create"]  # and goes on to the end


def test_other_errors_and_endless_propagation_fail_the_deployment(
    deploy_script: Any, tmp_path: Path
) -> None:
    args = deploy_script.parse_args(
        ["--project", PROJECT, "--region", REGION, "--out", str(tmp_path / "b")]
    )
    refused = Flaky(1, "ERROR: INVALID_ARGUMENT: bad region", "tasks", "queues", "create")
    slept: list[float] = []
    with pytest.raises(subprocess.CalledProcessError):
        deploy_script.deploy(args, deploy_script.Cloud(False, runner=refused, sleep=slept.append))
    assert slept == []
    endless = Flaky(100, PROPAGATION[0][0], *PROPAGATION[0][1])
    with pytest.raises(subprocess.CalledProcessError):
        deploy_script.deploy(
            args, deploy_script.Cloud(False, runner=endless, sleep=slept.append, attempts=4)
        )
    assert slept == [5.0, 10.0, 20.0]


def test_the_readme_shows_the_commands_the_dry_run_prints(
    deploy_script: Any,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    argv = ["--project", "my-project", "--region", "europe-west1", "--out", "build/gcp"]
    assert deploy_script.main([*argv, "--dry-run"]) == 0
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("+ ")]
    readme = (REPO / "deploy" / "gcp" / "README.md").read_text()
    shown = [line for line in readme.splitlines() if line.startswith("+ gcloud ")]
    assert shown == printed


def test_the_dry_run_creates_the_composite_indexes_the_run_list_needs(
    deploy_script: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "bundle"
    argv = ["--project", PROJECT, "--region", REGION, "--out", str(out), "--dry-run"]
    assert deploy_script.main(argv) == 0
    cmds = commands(capsys.readouterr().out)
    created = [c for c in cmds if c[1:5] == ["firestore", "indexes", "composite", "create"]]
    fields = {
        tuple(a.split("=", 1)[1] for a in c if a.startswith("--field-config=")) for c in created
    }
    assert (
        "field-path=workflow,order=ascending",
        "field-path=updatedMs,order=descending",
        "field-path=__name__,order=ascending",
    ) in fields
    assert len(fields) == 4
    assert all("--collection-group=refluxo_runs" in c and "--async" in c for c in created)


def test_each_schedule_gets_a_scheduler_job_calling_cron_with_the_accounts_token(
    deploy_script: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cmds = dry_run(deploy_script, tmp_path, capsys, "--app", "refluxo.examples")
    jobs = [c for c in cmds if c[1:5] == ["scheduler", "jobs", "create", "http"]]
    assert [j[5] for j in jobs] == ["refluxo-reconcile", "refluxo-cron-digest-weekdays"]
    job = jobs[1]
    assert option(job, "--schedule") == "0 9 * * 1-5"
    assert option(job, "--time-zone") == "Europe/Lisbon"
    assert option(job, "--uri") == f"{URL}/_cron"
    assert option(job, "--http-method") == "POST"
    assert option(job, "--headers") == "Content-Type=application/json"
    assert json.loads(option(job, "--message-body")) == {
        "workflow": "digest",
        "schedule": "weekdays",
    }
    assert option(job, "--oidc-service-account-email") == SA
    assert option(job, "--oidc-token-audience") == URL


def test_a_deployment_without_schedules_creates_no_cron_job(
    deploy_script: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cmds = dry_run(deploy_script, tmp_path, capsys)
    assert not any("/_cron" in " ".join(c) for c in cmds)
