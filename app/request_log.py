"""One JSON log line per request, tied to the caller by an X-Request-ID.

`app.front` calls `request_id_for` as a request arrives and `log_request` once it is
answered; this module only decides the id and writes the line.

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

from flask import Flask

REQUEST_ID_HEADER = "X-Request-ID"
_REQUEST_ID_ENVIRON_KEY = "HTTP_X_REQUEST_ID"
# Where the request's id is kept in the WSGI environ for everything after the front.
REQUEST_ID_KEY = "modelship.request_id"
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
# Granian takes a method of any length (up to its 64 KiB head buffer): what logs and
# error messages repeat of one is cut to this many characters.
METHOD_SHOWN_CHARACTERS = 24
_NOT_TOKEN_CHARACTER = re.compile(r"[^!#$%&'*+.^_`|~0-9A-Za-z-]")  # RFC 9110 tchar
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
                stream = self.stream
                stream.write(line)
                # sys.stderr is line-buffered (Python 3.9+): the newline has already
                # sent the line on, and a second flush per request is measurable.
                if not getattr(stream, "line_buffering", False):
                    stream.flush()
            except Exception:  # same contract as emit(): logging never fails a request
                self.handleError(None)


# (whole second, its "YYYY-MM-DDTHH:MM:SS" text), replaced whole so threads never
# see the second of one pair with the text of another.
_formatted_second = (None, "")


def _iso_time(created: float) -> str:
    """ISO 8601 in UTC with microseconds, e.g. 2026-11-21T06:35:52.418962+00:00.

    The date and time of day are formatted once per second: building a datetime per
    request line cost more than the rest of the line.
    """
    global _formatted_second
    second = int(created)
    cached_second, text = _formatted_second
    if cached_second != second:
        text = datetime.fromtimestamp(second, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
        _formatted_second = (second, text)
    micros = min(int((created - second) * 1_000_000), 999_999)
    return f"{text}.{micros:06d}+00:00"


def ensure_log_output(logger: logging.Logger, stream=None) -> None:
    """Send `logger`'s INFO records to stderr as JSON unless logging is already set up.

    Under the server nobody configures the root logger, so without this the request
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


def request_id_for(environ: dict) -> str:
    """The caller's X-Request-ID when it is sane, else a fresh one; kept in `environ`."""
    offered = environ.get(_REQUEST_ID_ENVIRON_KEY, "")
    # 32 random hex characters, as long as a uuid4's hex, without building a UUID.
    request_id = offered if _SANE_REQUEST_ID.fullmatch(offered) else os.urandom(16).hex()
    environ[REQUEST_ID_KEY] = request_id
    return request_id


def request_id_of(environ: dict) -> str | None:
    """The id `request_id_for` gave this request, for log lines written along the way."""
    return environ.get(REQUEST_ID_KEY)


def shown_method(method: str) -> str:
    """A client's method as a log line or error message may repeat it: short, token only."""
    shown = _NOT_TOKEN_CHARACTER.sub("?", method[:METHOD_SHOWN_CHARACTERS])
    return shown + "..." if len(method) > METHOD_SHOWN_CHARACTERS else shown


def log_request(method: str, route: str | None, status: int, seconds: float, request_id: str):
    """Write the request's one log line. `route` is the matched route pattern or None."""
    latency_ms = round(seconds * 1000, 2)
    if route is None:  # a matched route's method is one of its own; any other is client input
        method = shown_method(method)
    handler = _sole_json_handler()
    if handler is None:
        fields = {
            "method": method,
            "route": route,
            "status": status,
            "latency_ms": latency_ms,
            "request_id": request_id,
        }
        request_logger.info("request", extra={"fields": fields})
        return
    # The same line JsonLogFormatter would write. Route patterns are ours, request ids
    # match _SANE_REQUEST_ID and a matched route's method is one of its own, so only
    # the method of an unmatched request (client input, already shortened) is escaped.
    if route is None:
        method, route = json.dumps(method), "null"
    else:
        method, route = f'"{method}"', f'"{route}"'
    handler.write_line(
        f'{{"time": "{_iso_time(time.time())}", "level": "INFO", '
        f'"logger": "{request_logger.name}", "message": "request", "method": {method}, '
        f'"route": {route}, "status": {status}, '
        f'"latency_ms": {latency_ms!r}, "request_id": "{request_id}"}}\n'
    )


def init_app(app: Flask) -> None:
    ensure_log_output(logging.getLogger(_APP_LOGGER_NAME))
