"""Log formats: one line per step, JSON for cloud log viewers, readable text on a terminal.

The dispatcher logs each step on the ``refluxo.steps`` logger with its fields under the
``refluxo`` attribute of the record (run, workflow, version, node, outcome, status, attempt,
durationMs). Payloads, node data and globals are never logged.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

_SEVERITY = {
    logging.DEBUG: "DEBUG",
    logging.INFO: "INFO",
    logging.WARNING: "WARNING",
    logging.ERROR: "ERROR",
    logging.CRITICAL: "CRITICAL",
}


class JsonFormatter(logging.Formatter):
    """One JSON object per line, in the shape Cloud Logging reads (``severity``, ``message``)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "severity": _SEVERITY.get(record.levelno, "DEFAULT"),
            "message": record.getMessage(),
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "logger": record.name,
        }
        fields = getattr(record, "refluxo", None)
        if isinstance(fields, dict):
            entry.update({k: v for k, v in fields.items() if v is not None})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    """``HH:MM:SS.mmm LEVEL message`` plus the step's duration, for terminals."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.fromtimestamp(record.created).strftime("%H:%M:%S.%f")[:-3]
        text = f"{stamp} {record.levelname:<7} {record.getMessage()}"
        fields = getattr(record, "refluxo", None)
        if isinstance(fields, dict):
            if fields.get("durationMs") is not None:
                text += f" {fields['durationMs']:.1f}ms"
            if fields.get("error"):
                text += f" [{fields['error']}]"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def configure_logging(
    fmt: str = "text", level: int = logging.INFO, *, split_streams: bool = False
) -> None:
    """Send refluxo's logs to stderr as ``"json"`` or ``"text"`` (idempotent).

    With ``split_streams``, records under WARNING go to stdout and the rest to stderr: where a
    platform derives the level from the stream (a Python Worker's stdout is ``console.log``,
    its stderr ``console.error``).
    """
    root = logging.getLogger("refluxo")
    root.setLevel(level)
    for old in list(root.handlers):
        if getattr(old, "_refluxo", False):
            root.removeHandler(old)
    handlers: list[logging.Handler] = []
    if split_streams:
        out = logging.StreamHandler(sys.stdout)
        out.addFilter(lambda record: record.levelno < logging.WARNING)
        err = logging.StreamHandler(sys.stderr)
        err.setLevel(logging.WARNING)
        handlers = [out, err]
    else:
        handlers = [logging.StreamHandler(sys.stderr)]
    for handler in handlers:
        handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
        handler._refluxo = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.propagate = False
