"""The Worker bundle under production's rules.

workerd calls a Python Worker's ``fetch`` in a relaxed way, and every other handler strictly
with its JavaScript arguments: ``queue(batch, env, ctx)``, ``scheduled(controller, env, ctx)``.
It imports the main module once, at deploy, to snapshot memory, and refuses entropy while
that top level runs; the Workers SDK's patches come in through ``.pth`` files. The harness
does the same, so an entry that breaks a rule fails here as it would fail in production.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
DEPLOY = REPO / "deploy" / "cloudflare" / "deploy.py"
IN_PYODIDE = HERE / "in_pyodide"


def build_bundle(out: Path, *args: str) -> Path:
    subprocess.run(
        [sys.executable, str(DEPLOY), "--build-only", "--out", str(out), *args],
        check=True,
        capture_output=True,
        text=True,
    )
    return out


def bundle_config(
    bundle: Path, *, consume: bool = False, extra_vars: dict[str, str] | None = None
) -> Path:
    """A harness config with the bindings and vars the bundle's wrangler.toml declares."""
    wrangler = tomllib.loads((bundle / "wrangler.toml").read_text())
    queues = {
        p["binding"]: {"queue": p["queue"], "consumer": consume, "maxBatchTimeout": 0}
        for p in wrangler["queues"]["producers"]
    }
    config = {
        "src": [str(bundle / "src")],
        "entry": "entry",
        "kv": [kv["binding"] for kv in wrangler.get("kv_namespaces", [])],
        "d1": [db["binding"] for db in wrangler.get("d1_databases", [])],
        "queues": queues,
        "vars": {**wrangler["vars"], **(extra_vars or {})},
    }
    path = bundle.parent / f"{bundle.name}-harness.json"
    path.write_text(json.dumps(config))
    return path


@pytest.fixture(scope="module")
def d1_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_bundle(tmp_path_factory.mktemp("bundle") / "worker", "--store", "d1")


def run_against(
    run_in_pyodide: Any,
    bundle: Path,
    program: Path,
    *,
    consume: bool = False,
    extra_vars: dict[str, str] | None = None,
    **kwargs: Any,
) -> Any:
    config = bundle_config(bundle, consume=consume, extra_vars=extra_vars)
    return run_in_pyodide(
        program, kv=(), queues=(), d1=(), extra_args=["--config", str(config)], **kwargs
    )


def test_the_bundles_queue_handler_accepts_workerds_batch_env_ctx_call(
    run_in_pyodide: Any, d1_bundle: Path
) -> None:
    result = run_against(run_in_pyodide, d1_bundle, IN_PYODIDE / "entry_calls.py")
    assert "1 passed, 0 failed" in result.stdout, result.stdout


def test_queue_and_scheduled_handlers_without_env_and_ctx_fail_as_in_production(
    run_in_pyodide: Any, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "entry.py").write_text(
        "from workers import WorkerEntrypoint\n\n\n"
        "class Default(WorkerEntrypoint):\n"
        "    async def queue(self, batch):\n"
        "        for message in batch.messages:\n"
        "            message.ack()\n\n"
        "    async def scheduled(self, controller):\n"
        "        pass\n"
    )
    program = tmp_path / "deliver.py"
    program.write_text(
        "import json\n"
        "import harness_env\n"
        "batch = await harness_env.deliver_batch('q', [{'id': 'm1', 'body': 'x'}])\n"
        "cron = await harness_env.trigger_scheduled('* * * * *')\n"
        "print(json.dumps([batch, cron]))\n"
    )
    result = run_in_pyodide(program, [src], entry_module="entry", kv=(), queues=(), d1=())
    batch, cron = json.loads(result.stdout.strip().splitlines()[-1])
    assert batch["ops"] == []
    assert "TypeError" in batch["error"] and "positional argument" in batch["error"]
    assert "TypeError" in cron["error"] and "positional argument" in cron["error"]


ALLOWED_TOP_LEVEL = """\
import random

import pydantic  # noqa: F401  (pydantic_core's Rust hash seeds: allowed by the SDK's patch)
from workers import WorkerEntrypoint

SEEDED = random.Random(42).random()
SYSTEM = random.SystemRandom()


class Default(WorkerEntrypoint):
    async def queue(self, batch, env, ctx):
        for message in batch.messages:
            message.ack()
"""


def test_the_entry_is_imported_under_productions_top_level_rules_with_the_sdk_patches(
    run_in_pyodide: Any, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "entry.py").write_text(ALLOWED_TOP_LEVEL)
    result = run_in_pyodide(
        IN_PYODIDE / "top_level_rules.py", [src], entry_module="entry", kv=(), queues=(), d1=()
    )
    assert "5 passed, 0 failed" in result.stdout, result.stdout


@pytest.mark.parametrize(
    "statement",
    ["random.Random()", "os.urandom(8)", "random.random()", "secrets.token_hex(8)"],
)
def test_entropy_at_the_entrys_top_level_fails_the_start_as_the_deploy_would(
    run_in_pyodide: Any, tmp_path: Path, statement: str
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "entry.py").write_text(
        f"import os\nimport random\nimport secrets\n\nVALUE = {statement}\n\n" + ALLOWED_TOP_LEVEL
    )
    program = tmp_path / "nothing.py"
    program.write_text("print('started')\n")
    result = run_in_pyodide(
        program, [src], entry_module="entry", kv=(), queues=(), d1=(), check=False
    )
    assert result.returncode != 0
    assert "started" not in result.stdout
    assert "Randomness is not allowed while a Worker is starting" in result.stderr, result.stderr


MODULE_LEVEL_APP = """\
from refluxo.core import NodeDefinition, Workflow


async def hello(data, context, external_payload, globals):
    return {"hello": "world"}


workflows = [
    Workflow(
        "hello",
        {"nodes": [{"id": "a", "type": "hello", "data": {}}], "edges": []},
        {"hello": NodeDefinition(executor=hello)},
    )
]
"""


def test_an_app_with_module_level_workflows_deploys_and_runs(
    run_in_pyodide: Any, tmp_path: Path
) -> None:
    app = tmp_path / "hello_app.py"
    app.write_text(MODULE_LEVEL_APP)
    bundle = build_bundle(
        tmp_path / "bundle", "--store", "d1", "--app", "hello_app", "--app-src", str(app)
    )
    result = run_against(
        run_in_pyodide,
        bundle,
        IN_PYODIDE / "module_level_app.py",
        consume=True,
        extra_vars={"REFLUXO_PUBLIC_API": "1"},  # the program calls the API without a token
    )
    assert "1 passed, 0 failed" in result.stdout, result.stdout


@pytest.mark.parametrize("store", ["d1", "kv"])
def test_runs_whose_delivery_was_lost_are_recovered_by_the_cron_trigger_and_the_dlq_consumer(
    run_in_pyodide: Any, tmp_path: Path, store: str
) -> None:
    app = tmp_path / "hello_app.py"
    app.write_text(MODULE_LEVEL_APP)
    bundle = build_bundle(
        tmp_path / "bundle", "--store", store, "--app", "hello_app", "--app-src", str(app)
    )
    result = run_against(
        run_in_pyodide,
        bundle,
        IN_PYODIDE / "reconciler.py",
        consume=True,
        # Production waits 5 minutes before a due run counts as lost; here, at once.
        extra_vars={"REFLUXO_RECONCILE_GRACE_SECONDS": "0"},
    )
    assert "3 passed, 0 failed" in result.stdout, result.stdout
