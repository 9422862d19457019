"""``make screenshots``: PNGs of the dashboard's main pages, for the README.

Serves the test workflows (``refluxo dev`` with a token, ``refluxo ui`` for it), gives them a
few runs in every state, and photographs the runs page, a run waiting for its approval, a run
that was retried, and the workflows page with headless Chromium.

    python -m tests.local.screenshots docs/dashboard
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

from .browser import Deployment, browser_page, deployment

DEADLINE_MS = 20_000


def _runs(d: Deployment) -> None:
    for run_id in ("order-1001", "order-1002"):
        d.start("demo", run_id)
    d.wait("order-1001", lambda s: s["status"] == "paused")
    d.call("POST", "/runs/order-1001/events", {"payload": {"approved": True}})
    d.wait("order-1001", lambda s: s["status"] == "completed")
    d.start("fragile", "check-7")
    d.wait("check-7", lambda s: s["status"] == "failed")
    d.start("fragile", "check-8")
    d.wait("check-8", lambda s: s["status"] == "failed")
    d.call("POST", "/runs/check-8/retry", {"reason": "the checker is back"})
    d.wait("check-8", lambda s: s["status"] == "completed")
    d.start("demo", "order-1003")
    d.call("POST", "/runs/order-1003/cancel", {"reason": "customer changed their mind"})
    d.start("demo", "order-1004")
    d.wait("order-1002", lambda s: s["status"] == "paused")
    d.wait("order-1004", lambda s: s["status"] == "paused")


def _shoot(page: Any, url: str, ready: str, out: Path, height: int | None = None) -> None:
    from playwright.sync_api import expect

    page.goto(url)
    expect(page.locator(ready).first).to_be_visible(timeout=DEADLINE_MS)
    if height is None:
        page.screenshot(path=str(out))
    else:  # the page's top, taller than the window
        clip = {"x": 0, "y": 0, "width": 1280, "height": height}
        page.screenshot(path=str(out), full_page=True, clip=clip)
    print(f"screenshots: wrote {out}")


def main(argv: list[str]) -> int:
    out = Path(argv[0] if argv else "docs/dashboard")
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp, deployment(Path(tmp) / "shots.db") as d:
        _runs(d)
        with browser_page(1280, 900) as page:
            base = d.ui_url
            _shoot(page, f"{base}#/runs", '#runs-table tr[data-run="order-1004"]', out / "runs.png")
            _shoot(
                page,
                f"{base}#/runs/order-1002",
                '#run-graph g.node.current[data-node="approval"]',
                out / "run.png",
                height=1260,
            )
            _shoot(
                page,
                f"{base}#/runs/check-8",
                '#timeline:has-text("the checker is back")',
                out / "run-retried.png",
            )
            _shoot(
                page,
                f"{base}#/workflows",
                'section[data-workflow="fragile"] svg',
                out / "workflows.png",
            )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
