"""How ``refluxo inspect`` shows a run: dates with their zone, durations, refused and stranded."""

from __future__ import annotations

from refluxo.core.model import Snapshot
from refluxo.core.timeline import STRANDED_AFTER_MS, render_timeline, timeline

T0 = 1_767_225_600_000  # 2026-01-01 00:00:00 UTC


def _run(**fields: object) -> Snapshot:
    base: dict[str, object] = {
        "workflowId": "r-1",
        "status": "active",
        "currentNodeId": "b",
        "definition": {"name": "w", "hash": "0123456789abcdef"},
        "context": {
            "a": [{"output": 1, "timestamp": T0, "attempt": 1}],
            "b": [{"timestamp": T0 + 61_500, "error": "Boom: line 1\nline 2", "attempt": 1}],
        },
        "lastStartedAt": T0 + 61_500,
    }
    base.update(fields)
    return Snapshot.model_validate(base)


def test_the_timeline_shows_dates_with_their_zone_and_durations_since_the_start() -> None:
    shown = render_timeline(_run(), now=T0 + 62_000)
    assert "started 2026-01-01 00:00:00.000 UTC" in shown
    assert "+61.5 s" in shown
    assert "STRANDED" not in shown


def test_a_refused_run_is_shown_as_refused() -> None:
    refused = {"refused": {"reason": "shape differs", "at": T0 + 70_000}}
    shown = render_timeline(_run(metadata=refused), now=T0 + 10 * STRANDED_AFTER_MS)
    assert "REFUSED since 2026-01-01 00:01:10.000 UTC: shape differs" in shown


def test_a_run_overdue_without_a_step_is_shown_as_stranded() -> None:
    shown = render_timeline(_run(), now=T0 + 61_500 + STRANDED_AFTER_MS + 1)
    assert "STRANDED: due since 2026-01-01 00:01:01.500 UTC" in shown
    paused = _run(status="paused", wait={"kind": "event", "event": "ok"})
    assert "STRANDED" not in render_timeline(paused, now=T0 + 100 * STRANDED_AFTER_MS)


def test_the_json_timeline_keeps_the_errors_whole() -> None:
    data = timeline(_run())
    assert [s["node"] for s in data["steps"]] == ["a", "b"]
    assert data["steps"][1]["error"] == "Boom: line 1\nline 2"
    assert data["now"] == {"status": "active", "node": "b"}
