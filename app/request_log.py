"""One JSON log line per request, tied to the caller by an X-Request-ID.

The line carries method, route, status, latency and request id: enough to follow a
request through the ingress, the pod and the client's own logs. It must never carry
request or response bodies, query strings or headers other than the request id,
because scoring payloads may hold personal data.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
import uuid
from datetime import datetime, timezone

from flask import Flask, g, request

REQUEST_ID_HEADER = "X-Request-ID"
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
_APP_LOGGER_NAME = "app"

request_logger = logging.getLogger(__name__)


class JsonLogFormatter(logging.Formatter):
    """Formats a record as one JSON object; structured fields come from `extra={"fields": ...}`."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def ensure_log_output(logger: logging.Logger, stream=None) -> None:
    """Send `logger`'s INFO records to stderr as JSON unless logging is already set up.

    Under gunicorn nobody configures the root logger, so without this the request
    lines would be dropped; under pytest or an embedding app, their handlers win.
    """
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)
    current = logger
    while current is not None:
        if any(handler.level <= logging.INFO for handler in current.handlers):
            return
        current = current.parent if current.propagate else None
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonLogFormatter())
    logger.addHandler(handler)


def _start_request() -> None:
    g.request_started = time.perf_counter()
    offered = request.headers.get(REQUEST_ID_HEADER, "")
    g.request_id = offered if _SANE_REQUEST_ID.fullmatch(offered) else uuid.uuid4().hex


def _finish_request(response):
    context = g._get_current_object()  # one proxy lookup each, not several
    current = request._get_current_object()
    response.headers[REQUEST_ID_HEADER] = context.request_id
    latency_ms = (time.perf_counter() - context.request_started) * 1000
    request_logger.info(
        "request",
        extra={
            "fields": {
                "method": current.method,
                # The route pattern, not the path: paths of unknown URLs are client input.
                "route": current.url_rule.rule if current.url_rule else None,
                "status": response.status_code,
                "latency_ms": round(latency_ms, 2),
                "request_id": context.request_id,
            }
        },
    )
    return response


def init_app(app: Flask) -> None:
    ensure_log_output(logging.getLogger(_APP_LOGGER_NAME))
    app.before_request(_start_request)
    app.after_request(_finish_request)
