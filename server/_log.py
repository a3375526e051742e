"""Structured logs: one event a line, as key=value pairs or as a JSON object.

``log = get_logger("quic"); log.info("connection_closed", peer=addr, reason=r)``
writes ``ts=... level=info logger=shopcast.quic event=connection_closed
peer=... reason=...``. The format comes from ``[log] format``.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

__all__ = ["EventLogger", "configure_logging", "get_logger"]


class _Formatter(logging.Formatter):
    def __init__(self, json_lines: bool) -> None:
        super().__init__()
        self._json = json_lines

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        fields.update(getattr(record, "fields", {}))
        if record.exc_info:
            fields["exception"] = self.formatException(record.exc_info)
        if self._json:
            return json.dumps(fields, default=str, ensure_ascii=False)
        return " ".join(f"{key}={_kv(value)}" for key, value in fields.items())


def _kv(value: Any) -> str:
    text = str(value)
    if text == "" or any(c in text for c in ' ="\n'):
        return json.dumps(text, ensure_ascii=False)
    return text


class EventLogger:
    """A logger that takes an event name and keyword fields."""

    def __init__(self, name: str) -> None:
        self._logger = logging.getLogger(name)

    def _log(self, level: int, event: str, exc_info: bool, fields: dict[str, Any]) -> None:
        if self._logger.isEnabledFor(level):
            self._logger.log(level, event, extra={"fields": fields}, exc_info=exc_info)

    def debug(self, event: str, **fields: Any) -> None:
        self._log(logging.DEBUG, event, False, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._log(logging.INFO, event, False, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._log(logging.WARNING, event, False, fields)

    def error(self, event: str, *, exc_info: bool = False, **fields: Any) -> None:
        self._log(logging.ERROR, event, exc_info, fields)


def get_logger(component: str) -> EventLogger:
    """The logger of a component, named ``shopcast.<component>``."""
    return EventLogger(f"shopcast.{component}")


def configure_logging(format: str = "kv", level: str = "info") -> None:
    """Send shopcast's logs to stderr in the chosen format and level."""
    root = logging.getLogger("shopcast")
    root.handlers.clear()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter(json_lines=(format == "json")))
    root.addHandler(handler)
    root.setLevel(level.upper())
    root.propagate = False
