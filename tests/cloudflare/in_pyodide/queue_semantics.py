"""Runs inside Pyodide through ``harness.mjs run --queue STEPS --kv STATE``.

Queue consumer semantics as Miniflare and the harness give them to Python:
``retry(delaySeconds=N)`` redelivers after N s with ``attempts`` + 1; after a
handler raises, the messages it acked stay acked and the others come back; bodies
keep bytes and nested values; KV round-trips JSON.
"""

import asyncio
import time

from harness_env import env, run_tests, set_queue_handler

deliveries: list[dict] = []


async def handler(batch):
    for message in batch.messages:
        body = message.body
        deliveries.append(
            {"body": body, "attempts": message.attempts, "at": time.monotonic(), "id": message.id}
        )
        kind = body["kind"]
        if kind == "retry-once" and message.attempts == 1:
            message.retry(delaySeconds=1)
        elif kind == "ack-then-raise":
            message.ack()
        elif kind == "raise" and message.attempts == 1:
            pass  # neither acked nor retried: the raise below redelivers it
        else:
            message.ack()
    if any(m.body["kind"] == "raise" and m.attempts == 1 for m in batch.messages):
        raise RuntimeError("handler failed after acking some messages")


async def wait_for(predicate, within=15.0):
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, f"timed out; deliveries: {deliveries}"
        await asyncio.sleep(0.05)


def of_kind(kind):
    return [d for d in deliveries if d["body"]["kind"] == kind]


async def test_retry_with_delay_redelivers_with_attempts_incremented():
    sent = time.monotonic()
    await env.STEPS.send({"kind": "retry-once", "n": 1})
    await wait_for(lambda: len(of_kind("retry-once")) == 2)
    first, second = of_kind("retry-once")
    assert (first["attempts"], second["attempts"]) == (1, 2)
    assert first["id"] == second["id"]
    assert second["at"] - first["at"] >= 0.95
    assert first["at"] - sent < 1.0


async def test_acked_messages_stay_acked_when_the_handler_raises():
    await env.STEPS.sendBatch([{"body": {"kind": "ack-then-raise"}}, {"body": {"kind": "raise"}}])
    await wait_for(lambda: len(of_kind("raise")) == 2)
    await asyncio.sleep(0.5)
    assert [d["attempts"] for d in of_kind("raise")] == [1, 2]
    assert [d["attempts"] for d in of_kind("ack-then-raise")] == [1]


async def test_send_delay_and_body_types_survive():
    sent = time.monotonic()
    body = {"kind": "types", "bytes": b"\x00\xff", "nested": {"l": [1, 2.5, None, True]}}
    await env.STEPS.send(body, delaySeconds=2)
    await wait_for(lambda: of_kind("types"))
    got = of_kind("types")[0]
    assert got["at"] - sent >= 1.95
    received = got["body"]
    assert bytes(received["bytes"]) == b"\x00\xff"
    assert received["nested"] == {"l": [1, 2.5, None, True]}


async def test_kv_round_trip():
    await env.STATE.put("k", '{"a": 1}')
    assert await env.STATE.get("k", type="json") == {"a": 1}
    assert await env.STATE.get("missing") is None
    listed = await env.STATE.list(prefix="k")
    assert [key.name for key in listed.get("keys")] == ["k"]


set_queue_handler(handler)
await run_tests()  # noqa: F704 - `harness.mjs run` allows top-level await
