"""How every process logs: the human format by default, one JSON object per line with
LOG_FORMAT=json (for CloudWatch Logs Insights, Loki, any log pipeline).

A JSON line holds the time, level, logger and message, and the record's extra fields (the
ingest function's access lines add request_id, route, status, duration_ms, events, source).
Nothing here adds a write key or an event body: callers never pass them.
"""

from __future__ import annotations

import logging
import os
from datetime import UTC, datetime
from typing import Any

import msgspec

HUMAN_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
# Every attribute a LogRecord has by itself: the rest was given as `extra`.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}
_json = msgspec.json.Encoder()


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        document.update(
            (name, value) for name, value in vars(record).items() if name not in _STANDARD
        )
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        return _json.encode(document).decode()


def json_wanted() -> bool:
    return os.environ.get("LOG_FORMAT", "").strip().lower() == "json"


def formatter() -> logging.Formatter:
    return JsonFormatter() if json_wanted() else logging.Formatter(HUMAN_FORMAT)


def configure(level: str = "INFO") -> None:
    """The root logger's level and format. Handlers already there (Lambda's runtime installs
    one) keep their destination and get the format; else one on stderr."""
    root = logging.getLogger()
    root.setLevel(level.upper())
    if not root.handlers:
        root.addHandler(logging.StreamHandler())
    for handler in root.handlers:
        handler.setFormatter(formatter())
