"""One JSON log line per request, tied to the caller by an X-Request-ID.

The line carries method, route, status, latency and request id: enough to follow a
request through the ingress, the pod and the client's own logs. It must never carry
request or response bodies, query strings or headers other than the request id,
because scoring payloads may hold personal data.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from datetime import datetime, timezone

from flask import Flask, g, request

REQUEST_ID_HEADER = "X-Request-ID"
_REQUEST_ID_ENVIRON_KEY = "HTTP_X_REQUEST_ID"
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
_APP_LOGGER_NAME = "app"

request_logger = logging.getLogger(__name__)


class JsonLogFormatter(logging.Formatter):
    """Formats a record as one JSON object; structured fields come from `extra={"fields": ...}`."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": _iso_time(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class JsonStreamHandler(logging.StreamHandler):
    """The handler `ensure_log_output` installs: JSON lines on a stream.

    `write_line` lets the per-request line skip the logging machinery (record,
    caller lookup, formatter), which costs more than the rest of a small request's
    bookkeeping; it is used only while this handler is the line's sole consumer.
    """

    def __init__(self, stream=None):
        super().__init__(stream)
        self.setFormatter(JsonLogFormatter())

    def write_line(self, line: str) -> None:
        with self.lock:
            try:
                self.stream.write(line)
                self.flush()
            except Exception:  # same contract as emit(): logging never fails a request
                self.handleError(None)


def _iso_time(created: float) -> str:
    return datetime.fromtimestamp(created, timezone.utc).isoformat()


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
    logger.addHandler(JsonStreamHandler(stream or sys.stderr))


def _sole_json_handler() -> JsonStreamHandler | None:
    """Our handler, when it alone would receive the request line; None otherwise.

    Checked on every request (a handful of attribute reads) so that handlers, filters
    or levels configured after start (pytest's caplog, an embedding app) still get
    ordinary log records.
    """
    if not request_logger.isEnabledFor(logging.INFO):
        return None
    if request_logger.handlers or request_logger.filters or not request_logger.propagate:
        return None
    parent = request_logger.parent
    if parent.name != _APP_LOGGER_NAME or parent.filters or len(parent.handlers) != 1:
        return None
    handler = parent.handlers[0]
    if type(handler) is not JsonStreamHandler or handler.filters or handler.level > logging.INFO:
        return None
    if parent.propagate and logging.root.handlers:
        return None
    return handler


def _start_request() -> None:
    context = g._get_current_object()  # one proxy lookup, not two
    context.request_started = time.perf_counter()
    offered = request.environ.get(_REQUEST_ID_ENVIRON_KEY, "")
    # 32 random hex characters, as long as a uuid4's hex, without building a UUID.
    context.request_id = offered if _SANE_REQUEST_ID.fullmatch(offered) else os.urandom(16).hex()


def _finish_request(response):
    context = g._get_current_object()  # one proxy lookup each, not several
    current = request._get_current_object()
    request_id = context.request_id
    response.headers[REQUEST_ID_HEADER] = request_id
    latency_ms = round((time.perf_counter() - context.request_started) * 1000, 2)
    # The route pattern, not the path: paths of unknown URLs are client input.
    route = current.url_rule.rule if current.url_rule else None
    handler = _sole_json_handler()
    if handler is None:
        fields = {
            "method": current.method,
            "route": route,
            "status": response.status_code,
            "latency_ms": latency_ms,
            "request_id": request_id,
        }
        request_logger.info("request", extra={"fields": fields})
        return response
    # The same line JsonLogFormatter would write. Route patterns are ours, request ids
    # match _SANE_REQUEST_ID and a matched route's method is one of its own, so only
    # the method of an unmatched request (client input) needs escaping.
    if route is None:
        method, route = json.dumps(current.method), "null"
    else:
        method, route = f'"{current.method}"', f'"{route}"'
    handler.write_line(
        f'{{"time": "{_iso_time(time.time())}", "level": "INFO", '
        f'"logger": "{request_logger.name}", "message": "request", "method": {method}, '
        f'"route": {route}, "status": {response.status_code}, '
        f'"latency_ms": {latency_ms!r}, "request_id": "{request_id}"}}\n'
    )
    return response


def init_app(app: Flask) -> None:
    ensure_log_output(logging.getLogger(_APP_LOGGER_NAME))
    app.before_request(_start_request)
    app.after_request(_finish_request)
