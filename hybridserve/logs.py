"""Structured logs: one JSON object per line, so a log pipeline can filter on fields."""

from __future__ import annotations

import json
import logging
import sys
from typing import Any


def event(logger: logging.Logger, name: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log `name` with `fields` as one JSON line (cheap when the level is off)."""
    if logger.isEnabledFor(level):
        logger.log(level, "", extra={"event": name, "fields": fields})


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": getattr(record, "event", None) or record.getMessage(),
        }
        doc.update(getattr(record, "fields", {}))
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


def configure(level: str = "info", stream: Any = None) -> None:
    """Route the `hybridserve` loggers to stderr as JSON lines."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger("hybridserve")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
