"""Logging for the servers: text or JSON lines on stderr, each record of a tool call tagged with its id.

The id (`ref`) is made per call; it is in the audit row, in every log record written while the call
runs, and in the text an agent gets when the call fails, so one can be found from the other.
"""

from __future__ import annotations

import json
import logging
import random
import sys
from contextvars import ContextVar
from datetime import UTC, datetime

__all__ = ["JsonLinesFormatter", "configure_logging", "new_ref", "request_id"]

request_id: ContextVar[str | None] = ContextVar("credgate_request_id", default=None)


def new_ref() -> str:
    """A call's id: 8 hex digits. It names a call, guards nothing (the agent sees it), so it comes from
    `random`, not from the system's entropy: one system call less on every call."""
    return f"{random.getrandbits(32):08x}"


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        return True


class JsonLinesFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        rid = getattr(record, "request_id", None)
        if rid:
            entry["request_id"] = rid
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        rid = getattr(record, "request_id", None)
        return f"{text} [ref {rid}]" if rid else text


def configure_logging(fmt: str = "text", level: str = "info") -> None:
    """Logs go to stderr: over stdio, stdout carries the protocol."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_RequestIdFilter())
    handler.setFormatter(
        JsonLinesFormatter() if fmt == "json" else _TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
