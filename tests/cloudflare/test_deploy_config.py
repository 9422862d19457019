"""What the generated wrangler.toml and pyproject.toml promise: queue settings, limits, pins."""

from __future__ import annotations

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
    [consumer] = wrangler["queues"]["consumers"]
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
