"""Run inside Pyodide against the deployed bundle's entry: handlers called as workerd calls them."""

import harness_env


async def test_queue_handler_takes_batch_env_and_ctx():
    result = await harness_env.deliver_batch(
        "refluxo-steps", [{"id": "m1", "body": {"not": "a dispatch message"}}]
    )
    assert result["error"] is None, result["error"]
    # A body that is no DispatchMessage can never succeed: acknowledged, not retried.
    assert result["ops"] == [{"op": "ack", "id": "m1"}], result["ops"]


await harness_env.run_tests()  # noqa: F704 - `harness.mjs run` allows top-level await
