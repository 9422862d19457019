"""What the generated wrangler.toml and pyproject.toml promise: queue settings, limits, pins."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from refluxo.cloudflare import limits, scheduler, store

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy" / "cloudflare" / "deploy.py"
README = REPO / "deploy" / "cloudflare" / "README.md"


def build(out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(DEPLOY), "--build-only", "--out", str(out), *args],
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cf") / "bundle"
    result = build(out)
    assert result.returncode == 0, result.stderr
    return out


def test_the_consumer_batches_briefly_retries_with_a_delay_and_dead_letters(
    bundle: Path,
) -> None:
    wrangler = tomllib.loads((bundle / "wrangler.toml").read_text())
    consumer, dead_letters = wrangler["queues"]["consumers"]
    assert dead_letters["queue"] == "refluxo-steps-dlq"
    assert wrangler["vars"]["REFLUXO_DEAD_LETTER_QUEUE"] == "refluxo-steps-dlq"
    assert wrangler["triggers"]["crons"] == ["*/5 * * * *"]
    assert consumer == {
        "queue": "refluxo-steps",
        "max_batch_size": limits.CONSUMER_MAX_BATCH_SIZE,
        "max_batch_timeout": limits.CONSUMER_MAX_BATCH_TIMEOUT_SECONDS,
        "max_retries": limits.CONSUMER_MAX_RETRIES,
        "retry_delay": limits.CONSUMER_RETRY_DELAY_SECONDS,
        "dead_letter_queue": "refluxo-steps-dlq",
    }
    # A step waits for its batch: the platform's default (5 s) would slow every step.
    assert consumer["max_batch_timeout"] <= 1
    assert 1 <= consumer["max_batch_size"] <= limits.QUEUES_MAX_BATCH_SIZE
    assert consumer["max_retries"] <= limits.QUEUES_MAX_RETRIES


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--max-batch-size", "0"),
        ("--max-batch-size", "101"),
        ("--max-batch-timeout", "61"),
        ("--max-retries", "101"),
        ("--retry-delay", "86401"),
    ],
)
def test_consumer_settings_queues_would_refuse_are_refused_at_build(
    tmp_path: Path, option: str, value: str
) -> None:
    result = build(tmp_path / "bundle", option, value)
    assert result.returncode != 0
    assert "must be between" in result.stderr


def test_the_limits_are_todays_and_taken_from_one_place() -> None:
    assert limits.QUEUES_MAX_DELAY_SECONDS == 86_400
    assert limits.D1_MAX_ROW_BYTES == 2_000_000
    assert scheduler.MAX_DELAY_SECONDS == limits.QUEUES_MAX_DELAY_SECONDS
    assert scheduler.QueuesScheduler(object()).max_delay_ms == 86_400_000  # type: ignore[arg-type]
    assert store.D1_MAX_ROW_BYTES == limits.D1_MAX_ROW_BYTES
    assert store.DEFAULT_D1_MAX_BYTES < limits.D1_MAX_ROW_BYTES


def test_the_readme_states_the_same_limits_and_settings() -> None:
    text = " ".join(README.read_text().split())
    assert f"{limits.QUEUES_MAX_DELAY_SECONDS // 3600} hours" in text
    assert f"{limits.D1_MAX_ROW_BYTES:,}" in text
    assert "12 hours" not in text and "1,000,000" not in text
    for setting in ("max_batch_size", "max_batch_timeout", "max_retries", "retry_delay"):
        assert setting in text, setting


# ---------------------------------------------------------------- pins

WHEELS = REPO / ".tools" / "pyodide-wheels"
REQUIREMENTS = REPO / "tests" / "cloudflare" / "pyodide-requirements.txt"
HARNESS_PACKAGE = REPO / "tests" / "cloudflare" / "harness" / "package.json"
PYTHON_3_14_FLAG = "python_workers_20260610"
"""workerd's flag for Pyodide 314 / Python 3.14 (its python releases table)."""


def pins(requirements: list[str]) -> dict[str, str]:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    found = {}
    for line in requirements:
        requirement = Requirement(line)
        [specifier] = list(requirement.specifier)
        assert specifier.operator == "==", f"{line} is not pinned exactly"
        found[canonicalize_name(requirement.name)] = specifier.version
    return found


def test_the_python_flag_and_every_pin_resolve_for_the_pyodide_the_config_selects(
    bundle: Path,
) -> None:
    from packaging.tags import Tag
    from packaging.utils import canonicalize_name, parse_wheel_filename

    wrangler = tomllib.loads((bundle / "wrangler.toml").read_text())
    assert wrangler["compatibility_flags"] == ["python_workers", PYTHON_3_14_FLAG]
    # The flag selects Pyodide 314: CPython 3.14, wheels tagged pyemscripten_2026_0_wasm32,
    # the Pyodide the harness runs (npm pyodide 314.x).
    accepted = {Tag("py3", "none", "any"), Tag("cp314", "cp314", "pyemscripten_2026_0_wasm32")}
    npm_pyodide = json.loads(HARNESS_PACKAGE.read_text())["dependencies"]["pyodide"]
    assert npm_pyodide.split(".")[0] == "314"

    project = tomllib.loads((bundle / "pyproject.toml").read_text())
    runtime = pins(project["project"]["dependencies"])
    tools = pins(project["dependency-groups"]["dev"])
    assert set(runtime) == {"pydantic", "pydantic-core", "cronsim", "tzdata"}
    assert set(tools) == {"workers-py", "workers-runtime-sdk"}

    lines = [
        line.split("\\")[0].strip()
        for line in REQUIREMENTS.read_text().splitlines()
        if line.strip() and not line.lstrip().startswith(("#", "--"))
    ]
    installed = pins([line for line in lines if line])
    wheels = {}
    for wheel in WHEELS.glob("*.whl"):
        name, version, _, tags = parse_wheel_filename(wheel.name)
        wheels[canonicalize_name(name)] = (str(version), tags)
    for name, version in {**runtime, "workers-runtime-sdk": tools["workers-runtime-sdk"]}.items():
        assert installed.get(name) == version, f"{name}=={version} differs from {REQUIREMENTS}"
        assert name in wheels, f"no wheel of {name} in {WHEELS}: run `make setup-cloudflare`"
        wheel_version, tags = wheels[name]
        assert wheel_version == version
        assert tags & accepted, f"{name} {version}: no wheel for Pyodide 314 ({sorted(tags)})"
