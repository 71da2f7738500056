"""`lightcell serve --log-format text|json`: how log records are written (to stderr).

text (the default): `TIME LEVEL LOGGER: MESSAGE`, as before.
json: one object per line: time (UTC, RFC 3339), level, logger, message, and the
context a call site gave with `extra=` (FIELDS: listener, plugin, tier, sandbox,
fault, capability, reason, protocol), plus `exception` with a traceback.

Plugin log lines (the `log` capability) cannot forge records in either format:
the host escapes their control characters before logging (vmm.capabilities), and
json.dumps escapes quotes and backslashes, so a plugin's text stays inside its
own `message` string.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

__all__ = ["FIELDS", "FORMATS", "JsonFormatter", "configure"]

FORMATS = ("text", "json")
FIELDS = ("listener", "plugin", "tier", "sandbox", "fault", "capability", "reason", "protocol")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                entry[name] = value if isinstance(value, int | float | bool) else str(value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)  # ASCII: no U+2028 and the like to split lines on


def configure(level: str, fmt: str = "text") -> None:
    """The root logger's handler and level (replacing any earlier configuration)."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
