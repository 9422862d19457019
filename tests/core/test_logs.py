"""One structured line per step: JSON in the shape Cloud Logging reads, text on a terminal."""

from __future__ import annotations

import json
import logging

from refluxo.core.logs import JsonFormatter, TextFormatter


def record(level: int = logging.INFO, **fields: object) -> logging.LogRecord:
    rec = logging.LogRecord("refluxo.steps", level, __file__, 1, "run %s v%s", ("r1", 3), None)
    rec.refluxo = {
        "run": "r1",
        "version": 3,
        "node": "order",
        "outcome": "stepped",
        "durationMs": 1.5,
        "attempt": 2,
        **fields,
    }
    return rec


def test_json_lines_carry_severity_message_and_the_step_fields() -> None:
    line = json.loads(JsonFormatter().format(record(logging.WARNING, error="Boom: x")))
    assert line["severity"] == "WARNING"
    assert line["message"] == "run r1 v3"
    assert {k: line[k] for k in ("run", "version", "node", "outcome", "attempt", "durationMs")} == {
        "run": "r1",
        "version": 3,
        "node": "order",
        "outcome": "stepped",
        "attempt": 2,
        "durationMs": 1.5,
    }
    assert line["error"] == "Boom: x"


def test_text_lines_are_readable() -> None:
    text = TextFormatter().format(record())
    assert "INFO" in text and "run r1 v3" in text and "1.5ms" in text
