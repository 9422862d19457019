"""Runs inside Pyodide through ``harness.mjs run --d1 DB`` (see test_harness_smoke.py).

A compare-and-set on a real D1 database (``changes`` is 1, then 0 for the same
expected version), an atomic D1 batch, and pydantic validating under Pyodide.
"""

import pydantic
import pytest
from harness_env import env, run_tests

CAS = "UPDATE runs SET version = ?1, state = ?2 WHERE id = ?3 AND version = ?4"


class Run(pydantic.BaseModel):
    id: str
    version: int = pydantic.Field(ge=0)
    state: str


async def test_d1_compare_and_set():
    await env.DB.exec(
        "CREATE TABLE runs (id TEXT PRIMARY KEY, version INTEGER NOT NULL, state TEXT NOT NULL)"
    )
    insert = env.DB.prepare("INSERT INTO runs (id, version, state) VALUES (?, ?, ?)")
    await insert.bind("r1", 0, "new").run()

    first = await env.DB.prepare(CAS).bind(1, "step-1", "r1", 0).run()
    second = await env.DB.prepare(CAS).bind(1, "step-1-again", "r1", 0).run()

    assert first.meta.changes == 1
    assert second.meta.changes == 0
    row = await env.DB.prepare("SELECT * FROM runs WHERE id = ?").bind("r1").first()
    assert row == {"id": "r1", "version": 1, "state": "step-1"}
    assert Run.model_validate(row).version == 1


async def test_d1_batch_is_atomic():
    insert = "INSERT INTO runs (id, version, state) VALUES (?, 0, 'x')"
    statements = [env.DB.prepare(insert).bind("r2"), env.DB.prepare(insert).bind("r1")]
    with pytest.raises(Exception, match="UNIQUE"):
        await env.DB.batch(statements)
    assert await env.DB.prepare("SELECT id FROM runs WHERE id = 'r2'").first() is None


def test_pydantic_validates():
    assert Run(id="r1", version="3", state="s").version == 3
    with pytest.raises(pydantic.ValidationError):
        Run(id="r1", version=-1, state="s")
    assert pydantic.VERSION.startswith("2.14")


await run_tests()  # noqa: F704 - `harness.mjs run` allows top-level await
