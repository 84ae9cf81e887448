"""Log lines as text or JSON, each carrying the trace and span ids of the span current where it was logged.

Nothing in the server logs prompt or output text; this module adds none (content goes to spans only, and only with
`telemetry.capture_content`). Light on purpose: OpenTelemetry is imported only when trace ids are asked for.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from rillet.server.config import LogFormat

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
TRACED_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [trace_id=%(trace_id)s span_id=%(span_id)s]: %(message)s"


class TraceIds(logging.Filter):
    """Sets `trace_id` and `span_id` on every record: the current span's (hex), or "" outside any span."""

    def __init__(self) -> None:
        super().__init__()
        from opentelemetry import trace

        self._current = trace.get_current_span

    def filter(self, record: logging.LogRecord) -> bool:
        context = self._current().get_span_context()
        if context.is_valid:
            record.trace_id = f"{context.trace_id:032x}"
            record.span_id = f"{context.span_id:016x}"
        else:
            record.trace_id = record.span_id = ""
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, trace_id, span_id[, exception]."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "trace_id": getattr(record, "trace_id", ""),
            "span_id": getattr(record, "span_id", ""),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


def configure_logging(level: str, log_format: LogFormat, *, trace_ids: bool) -> None:
    """Configure the root logger once, at the entrypoint: level, format, and trace ids when tracing is on."""
    handler = logging.StreamHandler()
    if log_format is LogFormat.JSON:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(TRACED_TEXT_FORMAT if trace_ids else TEXT_FORMAT))
    if trace_ids:
        handler.addFilter(TraceIds())
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
