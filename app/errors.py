"""Every error the service returns, as one JSON shape: {"error": {"code", "message"}}.

Clients program against `code` and read `message`, so a message says what was
expected. A 4xx is the client's mistake and is never logged as ours; a 500 is always
our bug: it is logged with its traceback, and its message never leaks internals.
This module must never let an HTML error page or a stack trace reach a client.
"""

from __future__ import annotations

import logging
import re

import orjson
from flask import Flask, jsonify, request
from werkzeug.exceptions import HTTPException

from app.request_log import request_id_of, shown_method

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


OPEN_INFERENCE_PREFIX = "/v2"


def speaks_open_inference(path: str) -> bool:
    """True for the Open Inference Protocol's URLs, whose errors are {"error": "<message>"}."""
    return path == OPEN_INFERENCE_PREFIX or path.startswith(OPEN_INFERENCE_PREFIX + "/")


def error_response(status: int, code: str, message: str, headers=None):
    if speaks_open_inference(request.path):
        response = jsonify({"error": message})
    else:
        response = jsonify({"error": {"code": code, "message": message}})
    response.status_code = status
    if headers:
        response.headers.extend(headers)
    return response


def error_body(code: str, message: str, open_inference: bool = False) -> bytes:
    """The JSON body of an error, for responses built without Flask (app.front)."""
    if open_inference:  # the protocol's shape: the message alone
        return orjson.dumps({"error": message})
    return orjson.dumps({"error": {"code": code, "message": message}})


def _snake_case(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def _handle_api_error(error: ApiError):
    return error_response(error.status, error.code, error.message, error.headers)


def http_error_as_api_error(error: HTTPException, method: str, body_limit,
                            path: str = "") -> ApiError:
    """What a Werkzeug HTTP error (routing, body size) says to the client, in our terms."""
    code = _HTTP_ERROR_CODES.get(error.code) or _snake_case(error.name)
    if error.code == 404 and speaks_open_inference(path):
        message = (
            "no such endpoint of the Open Inference Protocol; see GET /v2, /v2/health/live, "
            "/v2/health/ready, /v2/models/<name>[/versions/<version>][/ready] and "
            "POST /v2/models/<name>[/versions/<version>]/infer"
        )
    elif error.code == 404:
        message = (
            "no such endpoint; see POST /score, /healthz, /readyz, /version, /metrics "
            "and /openapi.json"
        )
    elif error.code == 405 and getattr(error, "valid_methods", None):
        message = (f"{shown_method(method)} is not allowed here; "
                   f"use {', '.join(error.valid_methods)}")
    elif error.code == 413:
        return body_too_large(body_limit)
    else:
        message = error.description
    # Keep headers such as Allow (405) but not the HTML content type.
    headers = [(key, value) for key, value in error.get_headers() if key.lower() != "content-type"]
    return ApiError(error.code, code, message, headers)


def body_too_large(body_limit, headers=None) -> ApiError:
    """The 413 for a body over `body_limit` bytes, whoever notices it (app or server bridge)."""
    return ApiError(
        413,
        _HTTP_ERROR_CODES[413],
        f"request body is larger than the limit of {body_limit} bytes",
        headers,
    )


def _handle_http_exception(error: HTTPException):
    return _handle_api_error(
        http_error_as_api_error(error, request.method, request.max_content_length, request.path)
    )


INTERNAL_ERROR_MESSAGE = "internal error; quote the X-Request-ID response header when reporting it"


def log_unexpected_error(request_id) -> None:
    """Log the exception being handled, with its traceback: a 500 is always our bug."""
    logger.exception("unhandled error", extra={"fields": {"request_id": request_id}})


def _handle_unexpected_error(error: Exception):
    log_unexpected_error(request_id_of(request.environ))
    return error_response(500, "internal", INTERNAL_ERROR_MESSAGE)


def init_app(app: Flask) -> None:
    app.register_error_handler(ApiError, _handle_api_error)
    app.register_error_handler(HTTPException, _handle_http_exception)
    app.register_error_handler(Exception, _handle_unexpected_error)
