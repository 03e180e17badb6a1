"""Every error the service returns, as one JSON shape: {"error": {"code", "message"}}.

Clients program against `code` and read `message`, so a message says what was
expected. A 4xx is the client's mistake and is never logged as ours; a 500 is always
our bug: it is logged with its traceback, and its message never leaks internals.
This module must never let an HTML error page or a stack trace reach a client.
"""

from __future__ import annotations

import logging
import re

from flask import Flask, g, jsonify, request
from werkzeug.exceptions import HTTPException

logger = logging.getLogger(__name__)

# Codes for the HTTP errors Flask and Werkzeug raise themselves (routing, body size).
_HTTP_ERROR_CODES = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


class ApiError(Exception):
    """An error the client can act on; raised anywhere in a request, rendered as JSON."""

    def __init__(self, status: int, code: str, message: str, headers=None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers


def error_response(status: int, code: str, message: str, headers=None):
    response = jsonify({"error": {"code": code, "message": message}})
    response.status_code = status
    if headers:
        response.headers.extend(headers)
    return response


def _snake_case(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def _handle_api_error(error: ApiError):
    return error_response(error.status, error.code, error.message, error.headers)


def _handle_http_exception(error: HTTPException):
    code = _HTTP_ERROR_CODES.get(error.code) or _snake_case(error.name)
    if error.code == 404:
        message = (
            "no such endpoint; see POST /score, /healthz, /readyz, /version, /metrics "
            "and /openapi.json"
        )
    elif error.code == 405 and getattr(error, "valid_methods", None):
        message = f"{request.method} is not allowed here; use {', '.join(error.valid_methods)}"
    elif error.code == 413:
        message = f"request body is larger than the limit of {request.max_content_length} bytes"
    else:
        message = error.description
    # Keep headers such as Allow (405) but not the HTML content type.
    headers = [(key, value) for key, value in error.get_headers() if key.lower() != "content-type"]
    return error_response(error.code, code, message, headers)


def _handle_unexpected_error(error: Exception):
    logger.exception("unhandled error", extra={"fields": {"request_id": g.get("request_id")}})
    return error_response(
        500, "internal", "internal error; quote the X-Request-ID response header when reporting it"
    )


def init_app(app: Flask) -> None:
    app.register_error_handler(ApiError, _handle_api_error)
    app.register_error_handler(HTTPException, _handle_http_exception)
    app.register_error_handler(Exception, _handle_unexpected_error)
