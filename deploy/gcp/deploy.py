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
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _bundle import MARKER, copy_app, copy_packages, prepare_out  # shared, one folder up

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


class Cloud:
    """Runs gcloud commands, or prints them with ``dry_run``."""

    def __init__(self, dry_run: bool) -> None:
        self.dry_run = dry_run

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str] | None:
        print("+ " + shlex.join(args), flush=True)
        if self.dry_run:
            return None
        return subprocess.run(args, check=check, text=True, capture_output=not check)

    def exists(self, *args: str) -> bool:
        """Whether a describe command succeeds (in a dry run: assume it does not)."""
        result = self.run(*args, check=False)
        return result is not None and result.returncode == 0


def deploy(args: argparse.Namespace) -> None:
    bundle = build(Path(args.out), args.app, Path(args.app_src) if args.app_src else None)
    print(f"bundle: {bundle}")
    if args.build_only:
        return
    if not args.project or not args.region:
        raise SystemExit("deploy: --project and --region are required to deploy")
    cloud = Cloud(args.dry_run)
    project, region = args.project, args.region
    sa_email = f"{args.service_account}@{project}.iam.gserviceaccount.com"
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
        *p,
    )
    if not cloud.exists("gcloud", "iam", "service-accounts", "describe", sa_email, *p):
        cloud.run(
            "gcloud",
            "iam",
            "service-accounts",
            "create",
            args.service_account,
            "--display-name",
            "refluxo function and task invoker",
            *p,
        )
    for role in ("roles/datastore.user", "roles/cloudtasks.enqueuer"):
        cloud.run(
            "gcloud",
            "projects",
            "add-iam-policy-binding",
            project,
            "--member",
            f"serviceAccount:{sa_email}",
            "--role",
            role,
            "--condition",
            "None",
        )
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
    print(f"deployed: {url}")


def main(argv: list[str] | None = None) -> int:
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
    parser.add_argument("--runtime", default="python312", choices=["python312", "python313"])
    parser.add_argument("--memory", default="512Mi")
    parser.add_argument(
        "--out",
        default=str(ROOT / "build" / "gcp"),
        help="a new or empty folder, or a bundle built before (default: %(default)s)",
    )
    parser.add_argument("--build-only", action="store_true", help="write the bundle and stop")
    parser.add_argument("--dry-run", action="store_true", help="print cloud commands, run none")
    deploy(parser.parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
