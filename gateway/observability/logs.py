"""Log lines as JSON (one object a line, for log collectors) or as text, and the access log:
one line per request with its id, route, adapter version, variant, status and latency.

The access line never holds a key, a header or the prompt; the prompt only when
`GATEWAY_LOG_PROMPTS` asks for it (it may hold personal data)."""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime
from typing import Any, Literal

ACCESS_LOGGER = "gateway.access"
# What serving code puts in `scope["state"][ACCESS_FIELDS]` for the access line.
ACCESS_FIELDS = "access"
PROMPT_CHARS = 2000
# LogRecord attributes that are not extra fields of a line.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}

access_log = logging.getLogger(ACCESS_LOGGER)


class JsonFormatter(logging.Formatter):
    """`{"time", "level", "logger", "message", ...extra fields, "exception"}` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                line[key] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, ensure_ascii=False)


def configure_logging(level: str, fmt: Literal["text", "json"]) -> None:
    """Send every log line to stderr in `fmt`; quiet libraries that log every probe.

    Like `logging.basicConfig`, it leaves a root logger that already has handlers alone (a
    host process's, or a test runner's)."""
    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler])
    # httpx logs every health probe at INFO.
    logging.getLogger("httpx").setLevel(logging.WARNING)


def log_request(
    request_id: str,
    method: str,
    path: str,
    status: int,
    started: float,
    fields: dict[str, Any] | None,
) -> None:
    """The access line of one finished request (`started` from `time.perf_counter`)."""
    if not access_log.isEnabledFor(logging.INFO):
        return
    latency_ms = round((time.perf_counter() - started) * 1000.0, 2)
    extra = {
        "request_id": request_id,
        "method": method,
        "path": path,
        "status": status,
        "latency_ms": latency_ms,
        **(fields or {}),
    }
    served = f" {fields['route']}→{fields.get('adapter')}" if fields and "route" in fields else ""
    access_log.info("%s %s %d %.1fms%s", method, path, status, latency_ms, served, extra=extra)
