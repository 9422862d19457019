"""Run inside Pyodide after an entry whose top level did only what production allows."""

import os
import random
import sys

import harness_env
from _cloudflare.import_patch_manager import APPLIED


def test_the_sdks_pth_patches_are_loaded():
    assert "_workers_sdk_patch_loader" in sys.modules
    assert "_workers_sdk_entropy_import_context" in sys.modules
    assert "_workers_sdk_package_patches" in sys.modules


def test_the_sdks_pydantic_core_patch_ran_at_the_entrys_import():
    assert "pydantic_core" in APPLIED, APPLIED


def test_a_seeded_random_and_a_system_random_may_be_created_at_top_level():
    entry = sys.modules["entry"]
    assert entry.SEEDED == random.Random(42).random()
    assert isinstance(entry.SYSTEM, random.SystemRandom)


def test_after_the_top_level_entropy_is_allowed_again():
    assert len(os.urandom(8)) == 8
    assert 0 <= random.random() < 1
    assert random.Random().random() != random.Random().random()


async def test_handlers_run_after_the_top_level():
    result = await harness_env.deliver_batch("q", [{"id": "m1", "body": "x"}])
    assert result["error"] is None, result["error"]
    assert result["ops"] == [{"op": "ack", "id": "m1"}]


await harness_env.run_tests()  # noqa: F704 - `harness.mjs run` allows top-level await
