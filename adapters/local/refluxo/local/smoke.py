"""``refluxo smoke``: run the demo workflow to completion against a deployment, step by step.

It checks what tests on emulators cannot: that the deployed front door admits the caller,
that the platform's queue delivers steps to ``/_dispatch`` (with its real credentials), that
retries, a durable sleep and an event work there. Each stage prints what it saw; a stage that
does not finish in time says what most likely is wrong.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any, TextIO

from .client import ApiError, Client

# What each stage needs from the platform, for the message when it does not happen.
_HINTS = {
    "first_step": (
        "no step ran: deliveries do not reach /_dispatch. Check that the queue exists and "
        "targets this URL, that the queue's account may invoke the function, and the "
        "function's log for 401s"
    ),
    "approval": (
        "the run started but did not reach its approval wait: retries or the durable sleep "
        "were not delivered. Check the queue's retry settings and the function's log"
    ),
    "finished": (
        "the approval was accepted but the run did not finish: the delivery that consumes the "
        "event did not arrive. Check the function's log"
    ),
}


class SmokeFailed(Exception):
    """A stage of the smoke run did not happen; the message says which and why."""


def _waiting_for_approval(snap: dict[str, Any]) -> bool:
    wait = snap.get("wait") or {}
    return snap.get("status") == "paused" and wait.get("kind") == "event"


def run_smoke(
    client: Client,
    *,
    workflow: str = "demo",
    timeout_s: float = 300.0,
    poll_s: float = 1.0,
    out: TextIO,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Run ``workflow`` (the demo's shape) to completion; returns the final snapshot.

    Raises:
        SmokeFailed: a stage did not happen within ``timeout_s``, or ended wrongly.
        ApiError, OSError: the deployment answered an error, or could not be reached.
    """
    started = clock()

    def say(text: str) -> None:
        print(f"  [{clock() - started:6.1f} s] {text}", file=out, flush=True)

    def wait(run_id: str, until: Callable[[dict[str, Any]], bool], stage: str) -> dict[str, Any]:
        deadline = clock() + timeout_s
        while True:
            snap: dict[str, Any] = client.get(run_id)
            if until(snap):
                return snap
            if snap.get("status") in ("completed", "failed"):
                raise SmokeFailed(
                    f"run {run_id} ended {snap.get('status')} while waiting for {stage}: "
                    f"{(snap.get('metadata') or {}).get('failedReason', 'see the run')}"
                )
            if clock() >= deadline:
                raise SmokeFailed(
                    f"run {run_id} is at version {snap.get('version')}, {snap.get('status')}, "
                    f"after {timeout_s:.0f} s: {_HINTS[stage]}"
                )
            sleep(poll_s)

    status, health = client.call("GET", "/healthz")
    say(f"GET /healthz: {status} {health}")
    run_id = f"smoke-{os.urandom(6).hex()}"
    summary = client.start(workflow, run_id, {"customer": "smoke test"})
    say(f"started run {run_id}: {summary.get('status')} v{summary.get('version')}")

    wait(run_id, lambda s: int(s.get("version", 0)) > 0, "first_step")
    say("the first delivery arrived: a step ran")
    snap = wait(run_id, _waiting_for_approval, "approval")
    attempts = len((snap.get("context") or {}).get("order", []))
    say(f"waiting for approval (v{snap.get('version')}; order took {attempts} attempt(s))")

    client.event(run_id, {"approved": True}, "approval", f"{run_id}-approval")
    say("sent the approval event")
    snap = wait(run_id, lambda s: s.get("status") in ("completed", "failed"), "finished")
    if snap.get("status") != "completed":
        reason = (snap.get("metadata") or {}).get("failedReason")
        raise SmokeFailed(f"run {run_id} ended {snap.get('status')}: {reason}")
    say(f"completed at v{snap.get('version')}: nodes {', '.join(snap.get('context') or {})}")
    return snap


def smoke(client: Client, *, timeout_s: float, out: TextIO, poll_s: float = 1.0) -> int:
    """The ``refluxo smoke`` command: 0 when the demo completed, 1 when it did not."""
    print(f"refluxo smoke: running the demo against {client.url}", file=out, flush=True)
    try:
        run_smoke(client, timeout_s=timeout_s, poll_s=poll_s, out=out)
    except SmokeFailed as exc:
        print(f"refluxo smoke: FAILED: {exc}", file=out, flush=True)
        return 1
    except ApiError as exc:
        hint = ""
        if exc.status in (401, 403):
            hint = (
                ' (on Google Cloud: --token "$(gcloud auth print-identity-token)", and the '
                "invoker role for your account)"
            )
        print(f"refluxo smoke: FAILED: {exc}{hint}", file=out, flush=True)
        return 1
    print("refluxo smoke: OK, the demo ran to completion", file=out, flush=True)
    return 0
