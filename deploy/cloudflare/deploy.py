#!/usr/bin/env python3
"""Build the Python Worker bundle and deploy it, with its queue and its D1 database or KV namespace.

    python deploy/cloudflare/deploy.py --build-only --out build/cloudflare [--app refluxo.demo]
    python deploy/cloudflare/deploy.py [--create] [--dry-run] [--store d1|kv] [--name refluxo]

The bundle is what ``pywrangler deploy`` uploads, and what the tests serve::

    wrangler.toml     main = "src/entry.py", python_workers + the Python 3.14 flag, bindings,
                      vars, the queue consumer, the reconciler's cron trigger
    pyproject.toml    the Worker's packages (pydantic, pydantic-core) and tools, all pinned
    src/entry.py      class Default(WorkerEntrypoint), delegating to refluxo.cloudflare.worker
    src/refluxo/core, src/refluxo/cloudflare, and the workflows' own code (src/refluxo/demo)

``--create`` first creates what is missing (the queue and its dead-letter queue, the D1
database or KV namespace: ``wrangler queues create``, ``wrangler d1 create``, ``wrangler kv
namespace create``), writes their ids into ``wrangler.toml`` and creates the runs table.
Without it, ids come from ``--d1-id``/``--kv-id`` or are left out, and wrangler (4.45 or later)
provisions the resources itself on deploy. The deployment itself is ``uv run pywrangler
deploy`` in the bundle (pywrangler vendors the packages, then runs ``wrangler deploy``). When
``REFLUXO_API_TOKEN`` is set in this shell, it is stored as the Worker's secret of that name;
without it the script refuses to deploy unless ``--public-api`` says the API is meant to be
public (it then sets the var ``REFLUXO_PUBLIC_API = "1"``, without which the Worker answers
403 on every public route when it has no token).
``--dry-run`` prints every command instead of running it. Needs Node (``npx wrangler``) and
``uv``, logged in to Cloudflare, for a real deployment. Standard library only.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import ModuleType

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _bundle import (  # the shared module sits above
    copy_app,
    copy_packages,
    list_schedules,
    prepare_out,
)

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent


def _load_limits() -> ModuleType:
    # refluxo/cloudflare/limits.py is standard library only; importing it through its package
    # would import pydantic, which this script does without.
    path = ROOT / "adapters" / "cloudflare" / "refluxo" / "cloudflare" / "limits.py"
    spec = importlib.util.spec_from_file_location("_refluxo_cloudflare_limits", path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


LIMITS = _load_limits()
PACKAGES = {
    "refluxo/core": ROOT / "core" / "refluxo" / "core",
    "refluxo/cloudflare": ROOT / "adapters" / "cloudflare" / "refluxo" / "cloudflare",
}
BUILTIN_APP_VARS = {"refluxo.demo": {"REFLUXO_GLOBALS": '{"supplier_token": "demo-secret"}'}}
"""Vars the built-in apps need. A real app's globals hold secrets: store them with
``wrangler secret put REFLUXO_GLOBALS`` rather than as a var, which anyone with access to
the Worker's settings can read."""
_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", ".mypy_cache", "py.typed")

COMPATIBILITY_DATE = "2026-11-01"
"""Python Workers pick their Pyodide from the compatibility date: dates from 2026-09-08 run
Pyodide 314 (Python 3.14), the runtime the tests use (npm pyodide 314)."""

PYTHON_FLAG = "python_workers_20260610"
"""The flag that selects Pyodide 314 (Python 3.14) whatever the date and the tools' defaults:
without it, older wrangler / workers-py pick the 3.13 lane, where pydantic-core has no wheel."""

PYODIDE_PLATFORM = "pyemscripten_2026_0_wasm32"
"""The wheel platform tag of that Pyodide (CPython 3.14, ``cp314``)."""

PYODIDE_PYTHON = "3.14"

PYODIDE_PACKAGES = ("pydantic==2.14.3", "pydantic-core==2.50.4", "cronsim==2.8", "tzdata==2026.6")
"""What the Worker imports beyond the standard library, pinned: pydantic 2.14.3 is the newest
whose pydantic-core (2.50.4) has a wheel for Pyodide 314; cronsim reads schedules' cron
expressions, tzdata gives zoneinfo its time zones (Pyodide has no system database). The same pins as
tests/cloudflare/pyodide-requirements.txt, which the tests install (a test keeps them equal)."""

TOOLS = ("workers-py==1.17.9", "workers-runtime-sdk==1.9.5")
"""The deploy tools (pywrangler) and the SDK the Worker's ``workers`` module comes from."""


EVERY_MINUTE = "* * * * *"
"""The cron trigger of a Worker whose workflows have schedules."""


@dataclass(frozen=True)
class BundleConfig:
    """What goes into ``wrangler.toml``; the defaults are refluxo's."""

    name: str = "refluxo"
    app: str = "refluxo.demo"
    store: str = "d1"
    queue: str = "refluxo-steps"
    dead_letter_queue: str = "refluxo-steps-dlq"
    d1_database: str = "refluxo"
    d1_id: str | None = None
    kv_namespace: str = "refluxo-runs"
    kv_id: str | None = None
    max_retries: int = LIMITS.CONSUMER_MAX_RETRIES
    max_batch_size: int = LIMITS.CONSUMER_MAX_BATCH_SIZE
    max_batch_timeout: int = LIMITS.CONSUMER_MAX_BATCH_TIMEOUT_SECONDS
    retry_delay: int = LIMITS.CONSUMER_RETRY_DELAY_SECONDS
    reconcile_cron: str = "*/5 * * * *"
    has_schedules: bool = False
    compatibility_date: str = COMPATIBILITY_DATE
    vars: Mapping[str, str] = field(default_factory=dict)

    # Binding names: the Worker reads them from REFLUXO_*_BINDING, written below.
    d1_binding: str = "DB"
    kv_binding: str = "STATE"
    queue_binding: str = "STEPS"


def _toml(value: object) -> str:
    # A JSON string is a valid TOML basic string.
    return json.dumps(value) if isinstance(value, str) else str(value).lower()


def wrangler_toml(config: BundleConfig) -> str:
    """The Worker's ``wrangler.toml``."""
    crons = [config.reconcile_cron]
    if config.has_schedules and EVERY_MINUTE not in crons:
        crons.append(EVERY_MINUTE)
    worker_vars = {
        "REFLUXO_APP": config.app,
        "REFLUXO_STORE": config.store,
        "REFLUXO_QUEUE_BINDING": config.queue_binding,
        "REFLUXO_DEAD_LETTER_QUEUE": config.dead_letter_queue,
        **(
            {"REFLUXO_D1_BINDING": config.d1_binding}
            if config.store == "d1"
            else {"REFLUXO_KV_BINDING": config.kv_binding}
        ),
        **config.vars,
    }
    lines = [
        "# Generated by deploy/cloudflare/deploy.py: change its options rather than this file.",
        f"name = {_toml(config.name)}",
        'main = "src/entry.py"',
        f"compatibility_date = {_toml(config.compatibility_date)}",
        f"compatibility_flags = [{_toml('python_workers')}, {_toml(PYTHON_FLAG)}]",
        "",
        "[vars]",
        *(f"{key} = {_toml(value)}" for key, value in worker_vars.items()),
        "",
    ]
    if config.store == "d1":
        lines += [
            "[[d1_databases]]",
            f"binding = {_toml(config.d1_binding)}",
            f"database_name = {_toml(config.d1_database)}",
            *([f"database_id = {_toml(config.d1_id)}"] if config.d1_id else []),
            "",
        ]
    else:
        lines += [
            "[[kv_namespaces]]",
            f"binding = {_toml(config.kv_binding)}",
            *([f"id = {_toml(config.kv_id)}"] if config.kv_id else []),
            "",
        ]
    lines += [
        "[[queues.producers]]",
        f"binding = {_toml(config.queue_binding)}",
        f"queue = {_toml(config.queue)}",
        "",
        "# This Worker consumes its own steps: batches of up to max_batch_size, delivered",
        "# after at most max_batch_timeout seconds (small: every step waits for it). A failed",
        "# message is redelivered with the Worker's backoff (retry_delay when the handler",
        "# raised first); after max_retries it goes to the dead-letter queue.",
        "[[queues.consumers]]",
        f"queue = {_toml(config.queue)}",
        f"max_batch_size = {config.max_batch_size}",
        f"max_batch_timeout = {config.max_batch_timeout}",
        f"max_retries = {config.max_retries}",
        f"retry_delay = {config.retry_delay}",
        f"dead_letter_queue = {_toml(config.dead_letter_queue)}",
        "",
        "# ... and its dead letters: each run whose delivery was given up on is scheduled again",
        "# (a dead-letter queue without a consumer drops its messages after 4 days).",
        "[[queues.consumers]]",
        f"queue = {_toml(config.dead_letter_queue)}",
        f"max_batch_size = {config.max_batch_size}",
        f"max_batch_timeout = {config.max_batch_timeout}",
        f"max_retries = {config.max_retries}",
        f"retry_delay = {config.retry_delay}",
        "",
        "# The reconciler: schedules again the runs due for longer than",
        "# REFLUXO_RECONCILE_GRACE_SECONDS (a delivery lost however it was lost).",
        *(
            [
                "# The workflows' schedules: every minute, the Worker starts the ticks of that",
                "# minute (their cron and time zone are evaluated in Python, as cron triggers",
                "# know UTC only and number weekdays from Sunday).",
            ]
            if config.has_schedules
            else []
        ),
        "[triggers]",
        f"crons = [{', '.join(_toml(c) for c in crons)}]",
        "",
        "[observability]",
        "enabled = true",
        "",
    ]
    return "\n".join(lines)


def pyproject_toml(config: BundleConfig) -> str:
    """The bundle's ``pyproject.toml``: what pywrangler vendors into the Worker."""
    return "\n".join(
        [
            "# Generated by deploy/cloudflare/deploy.py. `uv run pywrangler deploy` vendors the",
            "# dependencies below into the Worker (python_modules/) and deploys it.",
            "[project]",
            f"name = {_toml(config.name + '-worker')}",
            'version = "0.1.0"',
            'requires-python = ">=3.12"',
            f"dependencies = [{', '.join(_toml(p) for p in PYODIDE_PACKAGES)}]",
            "",
            "[dependency-groups]",
            f"dev = [{', '.join(_toml(t) for t in TOOLS)}]",
            "",
        ]
    )


def check_consumer(config: BundleConfig) -> None:
    """Refuse consumer settings outside what Queues accepts (``limits.py``)."""
    bounds = {
        "max_batch_size": (config.max_batch_size, 1, LIMITS.QUEUES_MAX_BATCH_SIZE),
        "max_batch_timeout": (
            config.max_batch_timeout,
            0,
            LIMITS.QUEUES_MAX_BATCH_TIMEOUT_SECONDS,
        ),
        "max_retries": (config.max_retries, 0, LIMITS.QUEUES_MAX_RETRIES),
        "retry_delay": (config.retry_delay, 0, LIMITS.QUEUES_MAX_DELAY_SECONDS),
    }
    for name, (value, low, high) in bounds.items():
        if not low <= value <= high:
            raise SystemExit(f"deploy: {name} must be between {low} and {high}, got {value}")


def build(out: Path, config: BundleConfig, app_src: Path | None = None) -> Path:
    """Write the Worker bundle to ``out`` and return it.

    ``out`` must be missing, empty, or a bundle built before (see ``_bundle.prepare_out``).
    """
    if config.store not in ("d1", "kv"):
        raise SystemExit(f"deploy: --store must be d1 or kv, got {config.store!r}")
    check_consumer(config)
    prepare_out(out)
    src = out / "src"
    src.mkdir()
    module = config.app.partition(":")[0]
    entry = (HERE / "entry.py").read_text()
    # The workflows are imported at the top level of the main module, so that Cloudflare's
    # memory snapshot (taken after top-level execution, at deploy) includes them and no cold
    # start pays for their import.
    entry = entry.replace(
        "# refluxo: import the workflows here\n", f"import {module}  # noqa: F401\n"
    )
    (src / "entry.py").write_text(entry)
    copy_packages(src, PACKAGES, _IGNORE)
    copy_app(src, config.app, app_src, _IGNORE)
    if list_schedules(src, config.app):
        config = replace(config, has_schedules=True)
    (out / "wrangler.toml").write_text(wrangler_toml(config))
    (out / "pyproject.toml").write_text(pyproject_toml(config))
    return out


class Cloud:
    """Runs commands, or prints them with ``dry_run``."""

    def __init__(self, dry_run: bool, wrangler: Sequence[str]) -> None:
        self.dry_run = dry_run
        self.wrangler = list(wrangler)

    def run(
        self,
        *args: str,
        check: bool = True,
        capture: bool = False,
        cwd: Path | None = None,
        stdin: str | None = None,
        shown_stdin: str | None = None,
    ) -> subprocess.CompletedProcess[str] | None:
        shown = shlex.join(args)
        if cwd is not None:
            shown = f"(cd {shlex.quote(str(cwd))} && {shown})"
        if shown_stdin is not None:
            shown += f" <<< {shown_stdin}"
        print("+ " + shown, flush=True)
        if self.dry_run:
            return None
        return subprocess.run(
            args,
            check=check,
            text=True,
            capture_output=capture or not check,
            cwd=cwd,
            input=stdin,
        )

    def w(
        self, *args: str, check: bool = True, capture: bool = False
    ) -> subprocess.CompletedProcess[str] | None:
        """A wrangler command."""
        return self.run(*self.wrangler, *args, check=check, capture=capture)

    def succeeds(self, *args: str) -> bool:
        """Whether a wrangler command succeeds (in a dry run: assume it does not)."""
        result = self.w(*args, check=False)
        return result is not None and result.returncode == 0

    def listing(self, *args: str) -> list[dict[str, object]]:
        """A wrangler command's JSON output (in a dry run: empty)."""
        result = self.w(*args, capture=True)
        if result is None:
            return []
        text = result.stdout
        start = min((i for i in (text.find("["), text.find("{")) if i >= 0), default=-1)
        if start < 0:
            raise SystemExit(f"deploy: no JSON in the output of wrangler {' '.join(args)}")
        data = json.loads(text[start:])
        return data if isinstance(data, list) else [data]


def _find(items: list[dict[str, object]], name_key: str, name: str, id_key: str) -> str | None:
    for item in items:
        if item.get(name_key) == name and isinstance(item.get(id_key), str):
            return str(item[id_key])
    return None


def create_resources(cloud: Cloud, config: BundleConfig) -> BundleConfig:
    """Create the queues and the store's resource if missing; return the config with its id."""
    for queue in (config.queue, config.dead_letter_queue):
        if not cloud.succeeds("queues", "info", queue):
            cloud.w("queues", "create", queue)
    if config.store == "d1":
        d1_id = _find(cloud.listing("d1", "list", "--json"), "name", config.d1_database, "uuid")
        if d1_id is None:
            cloud.w("d1", "create", config.d1_database)
            found = cloud.listing("d1", "list", "--json")
            d1_id = _find(found, "name", config.d1_database, "uuid")
        return replace(config, d1_id=d1_id or "<D1_DATABASE_ID>")
    kv_id = _find(cloud.listing("kv", "namespace", "list"), "title", config.kv_namespace, "id")
    if kv_id is None:
        cloud.w("kv", "namespace", "create", config.kv_namespace)
        found = cloud.listing("kv", "namespace", "list")
        kv_id = _find(found, "title", config.kv_namespace, "id")
    return replace(config, kv_id=kv_id or "<KV_NAMESPACE_ID>")


def d1_schema_sql(table: str = "refluxo_runs") -> str:
    """The runs table as refluxo.cloudflare.store.D1_SCHEMA creates it (a test keeps them equal)."""
    return (
        f"CREATE TABLE IF NOT EXISTS {table} (id TEXT PRIMARY KEY NOT NULL, "
        "version INTEGER NOT NULL, status TEXT NOT NULL, workflow TEXT, snapshot TEXT NOT NULL, "
        f"updated_at INTEGER NOT NULL, due_at INTEGER); CREATE INDEX IF NOT EXISTS {table}_status "
        f"ON {table} (status, updated_at); CREATE INDEX IF NOT EXISTS {table}_due ON {table} "
        f"(due_at) WHERE due_at IS NOT NULL; CREATE TABLE IF NOT EXISTS {table}_results "
        "(run_id TEXT NOT NULL, node_id TEXT NOT NULL, idx INTEGER NOT NULL, "
        "result TEXT NOT NULL, PRIMARY KEY (run_id, node_id, idx)) WITHOUT ROWID"
    )


def deploy(args: argparse.Namespace) -> None:
    token = os.environ.get("REFLUXO_API_TOKEN")
    if not args.build_only and not token and not args.public_api:
        raise SystemExit(
            "deploy: REFLUXO_API_TOKEN is not set, so anyone could start, read and cancel runs. "
            "Set it (it becomes the Worker's secret), or pass --public-api if the API is meant "
            "to be public."
        )
    extra_vars = {**BUILTIN_APP_VARS.get(args.app, {}), **dict(_var(v) for v in args.var)}
    if args.public_api:
        extra_vars["REFLUXO_PUBLIC_API"] = "1"
    config = BundleConfig(
        name=args.name,
        app=args.app,
        store=args.store,
        queue=args.queue,
        dead_letter_queue=args.dead_letter_queue or f"{args.queue}-dlq",
        d1_database=args.d1_database,
        d1_id=args.d1_id,
        kv_namespace=args.kv_namespace,
        kv_id=args.kv_id,
        max_retries=args.max_retries,
        max_batch_size=args.max_batch_size,
        max_batch_timeout=args.max_batch_timeout,
        retry_delay=args.retry_delay,
        reconcile_cron=args.reconcile_cron,
        compatibility_date=args.compatibility_date,
        vars=extra_vars,
    )
    out = Path(args.out)
    app_src = Path(args.app_src) if args.app_src else None
    bundle = build(out, config, app_src)
    print(f"bundle: {bundle}")
    if args.build_only:
        return
    cloud = Cloud(args.dry_run, shlex.split(args.wrangler))
    if args.create:
        config = create_resources(cloud, config)
        bundle = build(out, config, app_src)  # now with the resources' ids
        if config.store == "d1":
            cloud.w("d1", "execute", config.d1_database, "--remote", "--command", d1_schema_sql())
    cloud.run(*shlex.split(args.pywrangler), "deploy", cwd=bundle)
    if token:
        cloud.run(
            *cloud.wrangler,
            "secret",
            "put",
            "REFLUXO_API_TOKEN",
            "--name",
            config.name,
            stdin=token,
            shown_stdin="$REFLUXO_API_TOKEN",
        )
    done = "dry run, nothing deployed" if args.dry_run else "deployed"
    print(f"{done}: Worker {config.name!r} (store {config.store}, queue {config.queue})")


def _var(spec: str) -> tuple[str, str]:
    name, sep, value = spec.partition("=")
    if not sep or not name:
        raise SystemExit(f"deploy: --var wants NAME=VALUE, got {spec!r}")
    return name, value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--name", default="refluxo", help="the Worker's name")
    parser.add_argument("--app", default="refluxo.demo", help="module[:attribute] of the workflows")
    parser.add_argument("--app-src", help="file or package folder with the workflows' code")
    parser.add_argument("--store", default="d1", choices=["d1", "kv"])
    parser.add_argument("--queue", default="refluxo-steps")
    parser.add_argument("--dead-letter-queue", help="default: QUEUE-dlq")
    parser.add_argument(
        "--max-retries",
        type=int,
        default=LIMITS.CONSUMER_MAX_RETRIES,
        help="redeliveries before the dead-letter queue (default: %(default)s)",
    )
    parser.add_argument(
        "--max-batch-size",
        type=int,
        default=LIMITS.CONSUMER_MAX_BATCH_SIZE,
        help="messages per consumer invocation (default: %(default)s)",
    )
    parser.add_argument(
        "--max-batch-timeout",
        type=int,
        default=LIMITS.CONSUMER_MAX_BATCH_TIMEOUT_SECONDS,
        help="seconds a partial batch waits; every step waits it (default: %(default)s)",
    )
    parser.add_argument(
        "--retry-delay",
        type=int,
        default=LIMITS.CONSUMER_RETRY_DELAY_SECONDS,
        help="seconds before redelivering a batch whose handler raised (default: %(default)s)",
    )
    parser.add_argument(
        "--reconcile-cron",
        default="*/5 * * * *",
        help="when the reconciler runs, a cron expression (default: %(default)s)",
    )
    parser.add_argument("--d1-database", default="refluxo")
    parser.add_argument("--d1-id", help="the D1 database's id (else --create finds it)")
    parser.add_argument("--kv-namespace", default="refluxo-runs")
    parser.add_argument("--kv-id", help="the KV namespace's id (else --create finds it)")
    parser.add_argument("--compatibility-date", default=COMPATIBILITY_DATE)
    parser.add_argument(
        "--var", action="append", default=[], help="NAME=VALUE: one more Worker var (repeatable)"
    )
    parser.add_argument("--wrangler", default="npx wrangler", help="how to run wrangler")
    parser.add_argument("--pywrangler", default="uv run pywrangler", help="how to run pywrangler")
    parser.add_argument(
        "--out",
        default=str(ROOT / "build" / "cloudflare"),
        help="a new or empty folder, or a bundle built before (default: %(default)s)",
    )
    parser.add_argument("--create", action="store_true", help="create missing resources first")
    parser.add_argument("--build-only", action="store_true", help="write the bundle and stop")
    parser.add_argument("--dry-run", action="store_true", help="print commands, run none")
    parser.add_argument(
        "--public-api",
        action="store_true",
        help="serve the API to anyone: needed to deploy without REFLUXO_API_TOKEN",
    )
    deploy(parser.parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
