#!/usr/bin/env python3
"""Build the Cloud Function bundle and deploy it, with its queue, account and database.

    python deploy/gcp/deploy.py --project P --region R [--app refluxo.demo] [--dry-run]
    python deploy/gcp/deploy.py --build-only --out build/gcp [--app ...]

The bundle holds ``main.py``, ``requirements.txt`` and the refluxo packages the function needs
(``refluxo.core``, ``refluxo.gcp``) plus the workflows' own code: nothing else. ``--dry-run``
prints every cloud command instead of running it. Needs ``gcloud``, logged in, for a real
deployment. Standard library only. deploy/gcp/README.md says what it needs and does.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _bundle import (
    MARKER,
    copy_app,
    copy_packages,
    list_schedules,
    prepare_out,
)  # shared, one folder up

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
PACKAGES = {
    "refluxo/core": ROOT / "core" / "refluxo" / "core",
    "refluxo/gcp": ROOT / "adapters" / "gcp" / "refluxo" / "gcp",
}
_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", ".mypy_cache")


def build(out: Path, app: str, app_src: Path | None = None) -> Path:
    """Write the function's source bundle to ``out`` and return it.

    ``out`` must be missing, empty, or a bundle built before (see ``_bundle.prepare_out``).
    """
    prepare_out(out)
    shutil.copy2(HERE / "main.py", out / "main.py")
    shutil.copy2(HERE / "requirements.txt", out / "requirements.txt")
    copy_packages(out, PACKAGES, _IGNORE)
    copy_app(out, app, app_src, _IGNORE)
    (out / ".gcloudignore").write_text(f"__pycache__/\n*.pyc\n{MARKER}\n")
    return out


# What gcloud answers while a grant, a service account or an API is a moment old and not yet
# effective everywhere (IAM changes usually take effect within minutes; so do enabled APIs).
PROPAGATION_ERRORS = (
    "does not exist",  # a service account created a moment ago, named in a binding
    "PERMISSION_DENIED",  # a role granted a moment ago
    "does not have permission",
    "SERVICE_DISABLED",  # an API enabled a moment ago
    "has not been used in project",
    "concurrent policy changes",  # two bindings written at once: read the policy again
)
BUILD_ROLES = (
    # What the account that builds the function needs (Cloud Run's "build service account").
    "roles/logging.logWriter",
    "roles/artifactregistry.writer",
    "roles/storage.objectAdmin",
)
Runner = Callable[..., "subprocess.CompletedProcess[str]"]


def _subprocess_run(args: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, **kwargs)  # type: ignore[call-overload,no-any-return]


INDEXES = Path(__file__).with_name("firestore.indexes.json")
"""The composite indexes ``GET /runs`` needs (its filters, newest first), in Firebase's format."""


def _create_run_indexes(cloud: Cloud, collection: str, p: Sequence[str]) -> None:
    """Create the composite indexes of :data:`INDEXES` on the runs' collection group.

    Without ``--async`` gcloud waits for each build (minutes); an index that exists already
    is left alone.
    """
    group = collection.rstrip("/").rsplit("/", 1)[-1]
    for index in json.loads(INDEXES.read_text())["indexes"]:
        configs = [
            f"--field-config=field-path={f['fieldPath']},order={f['order'].lower()}"
            for f in index["fields"]
        ]
        args = ("gcloud", "firestore", "indexes", "composite", "create")
        result = cloud.run(
            *args, f"--collection-group={group}", *configs, "--async", *p, check=False
        )
        if (
            result is not None
            and result.returncode != 0
            and "already exists" not in (result.stderr or "").lower()
        ):
            raise subprocess.CalledProcessError(
                result.returncode, args, result.stdout, result.stderr
            )


class Cloud:
    """Runs gcloud commands, or prints them with ``dry_run``.

    A command that fails with one of :data:`PROPAGATION_ERRORS` is run again after a pause
    that doubles each time (``first_delay_s``, at most a minute), ``attempts`` times in all:
    on a new project, the first run of the script then succeeds.

    Args:
        runner: runs one command like ``subprocess.run`` (replaced in tests).
        sleep: waits between attempts (replaced in tests).
    """

    def __init__(
        self,
        dry_run: bool,
        *,
        runner: Runner = _subprocess_run,
        sleep: Callable[[float], None] = time.sleep,
        attempts: int = 8,
        first_delay_s: float = 5.0,
    ) -> None:
        self.dry_run = dry_run
        self.runner = runner
        self.sleep = sleep
        self.attempts = attempts
        self.first_delay_s = first_delay_s

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str] | None:
        print("+ " + shlex.join(args), flush=True)
        if self.dry_run:
            return None
        delay = self.first_delay_s
        for attempt in range(1, self.attempts + 1):
            result = self.runner(list(args), check=False, text=True, capture_output=True)
            if result.stdout and check:
                print(result.stdout, end="", flush=True)
            if result.returncode == 0 or not check:
                return result
            error = result.stderr or ""
            if attempt < self.attempts and any(e in error for e in PROPAGATION_ERRORS):
                last = error.strip().splitlines()[-1:] or [""]
                print(
                    f"  not effective yet ({last[0][:200]}); trying again in {delay:.0f}s",
                    file=sys.stderr,
                    flush=True,
                )
                self.sleep(delay)
                delay = min(delay * 2, 60.0)
                continue
            print(error, end="", file=sys.stderr, flush=True)
            raise subprocess.CalledProcessError(result.returncode, args, result.stdout, error)
        raise AssertionError("unreachable")  # pragma: no cover

    def exists(self, *args: str) -> bool:
        """Whether a describe command succeeds (in a dry run: assume it does not)."""
        result = self.run(*args, check=False)
        return result is not None and result.returncode == 0


def _grant_project_roles(cloud: Cloud, project: str, member: str, roles: tuple[str, ...]) -> None:
    for role in roles:
        cloud.run(
            "gcloud",
            "projects",
            "add-iam-policy-binding",
            project,
            "--member",
            member,
            "--role",
            role,
            "--condition",
            "None",
        )


def _ensure_account(cloud: Cloud, name: str, email: str, title: str, p: list[str]) -> None:
    if not cloud.exists("gcloud", "iam", "service-accounts", "describe", email, *p):
        cloud.run("gcloud", "iam", "service-accounts", "create", name, "--display-name", title, *p)


def deploy(args: argparse.Namespace, cloud: Cloud | None = None) -> None:
    bundle = build(Path(args.out), args.app, Path(args.app_src) if args.app_src else None)
    print(f"bundle: {bundle}")
    if args.build_only:
        return
    if not args.project or not args.region:
        raise SystemExit("deploy: --project and --region are required to deploy")
    cloud = cloud or Cloud(args.dry_run)
    project, region = args.project, args.region
    sa_email = f"{args.service_account}@{project}.iam.gserviceaccount.com"
    builder = args.build_service_account
    if builder and "@" not in builder:
        builder = f"{builder}@{project}.iam.gserviceaccount.com"
    url = f"https://{region}-{project}.cloudfunctions.net/{args.function}"
    p = ["--project", project]

    cloud.run(
        "gcloud",
        "services",
        "enable",
        "cloudfunctions.googleapis.com",
        "run.googleapis.com",
        "cloudbuild.googleapis.com",
        "cloudtasks.googleapis.com",
        "firestore.googleapis.com",
        "artifactregistry.googleapis.com",
        "cloudscheduler.googleapis.com",
        "iam.googleapis.com",
        *p,
    )
    _ensure_account(cloud, args.service_account, sa_email, "refluxo function and task invoker", p)
    _grant_project_roles(
        cloud,
        project,
        f"serviceAccount:{sa_email}",
        ("roles/datastore.user", "roles/cloudtasks.enqueuer"),
    )
    if builder:
        # Projects made since mid-2024 may give Cloud Build's default account too few rights
        # to build a function: build with an account of our own that has what a build needs.
        if builder.endswith(f"@{project}.iam.gserviceaccount.com"):
            _ensure_account(cloud, builder.split("@")[0], builder, "refluxo function builder", p)
        _grant_project_roles(cloud, project, f"serviceAccount:{builder}", BUILD_ROLES)
    # Creating a task that carries an OIDC token for the account means acting as it.
    cloud.run(
        "gcloud",
        "iam",
        "service-accounts",
        "add-iam-policy-binding",
        sa_email,
        "--member",
        f"serviceAccount:{sa_email}",
        "--role",
        "roles/iam.serviceAccountUser",
        *p,
    )
    # A new project has no Firestore database: the runs need the (default) one, native mode.
    if not cloud.exists("gcloud", "firestore", "databases", "describe", *p):
        cloud.run(
            "gcloud",
            "firestore",
            "databases",
            "create",
            "--location",
            args.firestore_location or region,
            "--type",
            "firestore-native",
            *p,
        )
    _create_run_indexes(cloud, args.collection, p)
    if not cloud.exists(
        "gcloud", "tasks", "queues", "describe", args.queue, "--location", region, *p
    ):
        cloud.run(
            "gcloud",
            "tasks",
            "queues",
            "create",
            args.queue,
            "--location",
            region,
            "--max-attempts",
            "100",
            "--min-backoff",
            "1s",
            "--max-backoff",
            "300s",
            *p,
        )
    env = {
        "REFLUXO_APP": args.app,
        "REFLUXO_PROJECT": project,
        "REFLUXO_LOCATION": region,
        "REFLUXO_QUEUE": args.queue,
        "REFLUXO_COLLECTION": args.collection,
        "REFLUXO_FUNCTION_URL": url,
        "REFLUXO_SERVICE_ACCOUNT": sa_email,
        # Deployed with --no-allow-unauthenticated: Google's front end verifies each token.
        "REFLUXO_TRUST_PLATFORM_AUTH": "1",
    }
    cloud.run(
        "gcloud",
        "functions",
        "deploy",
        args.function,
        "--gen2",
        "--runtime",
        args.runtime,
        "--region",
        region,
        "--source",
        str(bundle),
        "--entry-point",
        "refluxo",
        "--trigger-http",
        "--no-allow-unauthenticated",
        "--service-account",
        sa_email,
        "--memory",
        args.memory,
        "--timeout",
        "300s",
        "--set-env-vars",
        ",".join(f"{k}={v}" for k, v in env.items()),
        *(
            ["--build-service-account", f"projects/{project}/serviceAccounts/{builder}"]
            if builder
            else []
        ),
        *p,
    )
    # Cloud Tasks calls the function as the service account: let it invoke.
    cloud.run(
        "gcloud",
        "functions",
        "add-invoker-policy-binding",
        args.function,
        "--region",
        region,
        "--member",
        f"serviceAccount:{sa_email}",
        *p,
    )
    # The reconciler: every few minutes, runs whose delivery Cloud Tasks dropped (a task is
    # deleted after its attempts) are scheduled again. Called like the queue: OIDC, as the
    # account.
    job = [
        "--location",
        region,
        "--schedule",
        f"*/{args.reconcile_every} * * * *",
        "--uri",
        f"{url}/_reconcile",
        "--http-method",
        "POST",
        "--oidc-service-account-email",
        sa_email,
        "--oidc-token-audience",
        url,
        *p,
    ]
    name = f"{args.function}-reconcile"
    verb = (
        "update"
        if cloud.exists("gcloud", "scheduler", "jobs", "describe", name, "--location", region, *p)
        else "create"
    )
    cloud.run("gcloud", "scheduler", "jobs", verb, "http", name, *job)
    # One job per schedule of the workflows: Cloud Scheduler keeps the time zone and calls
    # /_cron like the reconciler; the route starts the tick's run once.
    for plan in list_schedules(bundle, args.app):
        body = json.dumps({"workflow": plan["workflow"], "schedule": plan["name"]})
        cron_job = [
            "--location",
            region,
            "--schedule",
            plan["cron"],
            "--time-zone",
            plan["timezone"],
            "--uri",
            f"{url}/_cron",
            "--http-method",
            "POST",
            "--headers",
            "Content-Type=application/json",
            "--message-body",
            body,
            "--oidc-service-account-email",
            sa_email,
            "--oidc-token-audience",
            url,
            *p,
        ]
        name = f"{args.function}-cron-{plan['workflow']}-{plan['name']}"
        verb = (
            "update"
            if cloud.exists(
                "gcloud", "scheduler", "jobs", "describe", name, "--location", region, *p
            )
            else "create"
        )
        cloud.run("gcloud", "scheduler", "jobs", verb, "http", name, *cron_job)
    print(f"deployed: {url}")


def main(argv: list[str] | None = None) -> int:
    deploy(parse_args(argv))
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, parsed."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--project")
    parser.add_argument("--region")
    parser.add_argument("--app", default="refluxo.demo", help="module[:attribute] of the workflows")
    parser.add_argument("--app-src", help="file or package folder with the workflows' code")
    parser.add_argument("--function", default="refluxo")
    parser.add_argument("--queue", default="refluxo-steps")
    parser.add_argument("--collection", default="refluxo_runs")
    parser.add_argument(
        "--firestore-location",
        help="where to create the Firestore database if the project has none (default: region)",
    )
    parser.add_argument("--service-account", default="refluxo-runner")
    parser.add_argument(
        "--build-service-account",
        default="refluxo-builder",
        help="account (name in the project, or e-mail) Cloud Build builds the function as; "
        "created and granted the build roles; '' for Cloud Build's default account",
    )
    parser.add_argument(
        "--reconcile-every",
        type=int,
        default=5,
        choices=range(1, 60),
        metavar="MINUTES",
        help="how often Cloud Scheduler asks for runs whose delivery was lost (default 5)",
    )
    parser.add_argument("--runtime", default="python312", choices=["python312", "python313"])
    parser.add_argument("--memory", default="512Mi")
    parser.add_argument(
        "--out",
        default=str(ROOT / "build" / "gcp"),
        help="a new or empty folder, or a bundle built before (default: %(default)s)",
    )
    parser.add_argument("--build-only", action="store_true", help="write the bundle and stop")
    parser.add_argument("--dry-run", action="store_true", help="print cloud commands, run none")
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main())
