"""The WSGI layer in front of Flask: each request's id, log line and metrics, and scoring.

Every request passes through `ServiceFront`, which gives it a request id, times it,
and once it is answered writes its one log line and counts it in the metrics. POST
/score is answered right here by `app.scoring`, and the Open Inference Protocol's POST
/v2/models/.../infer by `app.open_inference`; everything else (probes, version,
metrics, the API description, routing errors such as a GET on /score) goes on to
Flask. Scoring skips Flask because, on a 1-row request, Flask's request context,
hooks and response object cost more than parsing, validating and predicting
together. The two paths must answer alike: the same error shape, the same
X-Request-ID header, one log line and one metrics count each.
"""

from __future__ import annotations

import time
from http import HTTPStatus

from flask import Flask, request
from werkzeug.exceptions import HTTPException

from app import metrics, open_inference, scoring
from app.errors import (
    INTERNAL_ERROR_MESSAGE,
    ApiError,
    error_body,
    http_error_as_api_error,
    log_unexpected_error,
    speaks_open_inference,
)
from app.request_log import REQUEST_ID_HEADER, log_request, request_id_for

_JSON_CONTENT_TYPE = "application/json"
_ROUTE_KEY = "modelship.route"
# Set by the server bridge (app.rsgi_bridge) when the request was refused before the app
# ran (its framing, its Host header, its body too large, too slow or malformed): the
# answer is that error, whatever the route.
REQUEST_PROBLEM_KEY = "modelship.request_problem"
# Set once a request is logged and counted, so that the bridge, answering a failure the
# front did not see through, neither counts it twice nor leaves it out.
FINISHED_KEY = "modelship.finished"
_STATUS_LINES = {status.value: f"{status.value} {status.phrase}" for status in HTTPStatus}


class ServiceFront:
    """The app's WSGI callable; `create_app` installs it as `app.wsgi_app`."""

    def __init__(self, app: Flask):
        self._app = app
        self.flask_wsgi_app = app.wsgi_app  # public: tests compare answers without the front
        self._metric_store = metrics.store_of(app)
        app.before_request(_note_route)

    def __call__(self, environ: dict, start_response):
        started = time.perf_counter()
        request_id = request_id_for(environ)
        method = environ.get("REQUEST_METHOD", "")
        path = environ.get("PATH_INFO", "")
        is_scoring = method == scoring.METHOD and path == scoring.ROUTE
        infer_target = None
        if not is_scoring and open_inference.is_infer_request(method, path):
            infer_target = open_inference.infer_target(path)
        problem = environ.get(REQUEST_PROBLEM_KEY)
        if problem is not None:
            status, headers, body = self._error(problem, request_id,
                                                speaks_open_inference(path))
            route = scoring.ROUTE if is_scoring else infer_target and infer_target[2]
            start_response(_STATUS_LINES[status], headers)
            finish_request(self._metric_store, environ, method, route, status, started,
                           request_id)
            return [body]
        if is_scoring:
            status, headers, body = self._answer(scoring.score, (self._app, environ), method,
                                                 request_id, False)
            start_response(_STATUS_LINES[status], headers)
            finish_request(self._metric_store, environ, method, scoring.ROUTE, status, started,
                           request_id)
            return [body]
        if infer_target is not None:
            name, version, route = infer_target
            status, headers, body = self._answer(
                open_inference.infer, (self._app, environ, name, version), method, request_id,
                True)
            start_response(_STATUS_LINES[status], headers)
            finish_request(self._metric_store, environ, method, route, status, started,
                           request_id)
            return [body]
        return self._through_flask(environ, start_response, method, started, request_id)

    def _answer(self, handler, arguments: tuple, method: str, request_id: str,
                open_inference_errors: bool) -> tuple[int, list, bytes]:
        """Status, headers and body of `handler(*arguments)`, errors rendered in its API's shape."""
        try:
            body = handler(*arguments)
        except ApiError as error:
            return self._error(error, request_id, open_inference_errors)
        except HTTPException as error:  # a body over the limit, a client gone mid-body
            limit = self._app.config["MAX_CONTENT_LENGTH"]
            return self._error(http_error_as_api_error(error, method, limit), request_id,
                               open_inference_errors)
        except Exception:
            log_unexpected_error(request_id)
            return self._error(ApiError(500, "internal", INTERNAL_ERROR_MESSAGE), request_id,
                               open_inference_errors)
        return 200, _headers(body, request_id), body

    @staticmethod
    def _error(error: ApiError, request_id: str,
               open_inference_errors: bool = False) -> tuple[int, list, bytes]:
        body = error_body(error.code, error.message, open_inference_errors)
        headers = _headers(body, request_id)
        extra = error.headers or ()
        headers.extend(extra.items() if isinstance(extra, dict) else extra)
        return error.status, headers, body

    def _through_flask(self, environ, start_response, method, started, request_id):
        answered_status = None

        def start_with_request_id(status, headers, exc_info=None):
            nonlocal answered_status
            answered_status = status
            headers.append((REQUEST_ID_HEADER, request_id))
            return start_response(status, headers, exc_info)

        try:
            return self.flask_wsgi_app(environ, start_with_request_id)
        finally:
            # The route pattern, not the path: paths of unknown URLs are client input.
            route = environ.get(_ROUTE_KEY)
            status = int(answered_status[:3]) if answered_status else 500
            finish_request(self._metric_store, environ, method, route, status, started,
                           request_id)


def finish_request(metric_store, environ: dict, method: str, route: str | None, status: int,
                   started: float, request_id: str) -> None:
    """Count the answered request in the metrics and write its one log line."""
    seconds = time.perf_counter() - started
    metric_store.record_request(
        metrics.method_label(method),
        route or metrics.UNMATCHED_ROUTE,
        str(status),
        seconds,
    )
    log_request(method, route, status, seconds, request_id)
    environ[FINISHED_KEY] = True


def _note_route() -> None:
    # Flask clears its request from the environ before the front looks again, so the
    # matched rule is written down while routing's result is at hand.
    current = request._get_current_object()
    if current.url_rule is not None:
        current.environ[_ROUTE_KEY] = current.url_rule.rule


def _headers(body: bytes, request_id: str) -> list:
    return [
        ("Content-Type", _JSON_CONTENT_TYPE),
        ("Content-Length", str(len(body))),
        (REQUEST_ID_HEADER, request_id),
    ]
