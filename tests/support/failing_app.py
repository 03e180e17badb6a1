"""A test-only worker app that fails on purpose, served by the product's server and bridge.

`python -m tests.support.failing_app` runs `app.serve` exactly as the container does,
except that each worker serves the real app wrapped in a WSGI layer with three paths
that fail where the app's own error handling cannot catch them:
  - FAIL_IN_APP raises before the app answers;
  - FAIL_IN_BODY answers 200, then raises while the body is read;
  - BAD_STATUS answers a status line the bridge cannot read;
  - BAD_HEADER answers a header Granian cannot send (a value that is not text).
Every other path goes to the real app. The integration tests check that each failure
reaches the client as the API's JSON 500 with an X-Request-ID, in one short log line.
"""

from __future__ import annotations

from app import create_app, serve
from app.rsgi_bridge import RsgiBridge

FAIL_IN_APP = "/test-only/fail-in-app"
FAIL_IN_BODY = "/test-only/fail-in-body"
BAD_STATUS = "/test-only/bad-status"
BAD_HEADER = "/test-only/bad-header"


class DeliberateFailure(RuntimeError):
    """Raised by this app only; its message must never reach a log line or a client."""


def failing_layer(wsgi_app):
    def failing_app(environ, start_response):
        path = environ.get("PATH_INFO")
        if path == FAIL_IN_APP:
            raise DeliberateFailure("secret-detail-in-app")
        if path == FAIL_IN_BODY:
            start_response("200 OK", [("Content-Type", "application/json")])
            return _body_that_fails()
        if path == BAD_STATUS:
            start_response("two hundred", [])
            return [b"{}"]
        if path == BAD_HEADER:
            start_response("200 OK", [("X-Not-Text", 12345)])
            return [b"{}"]
        return wsgi_app(environ, start_response)

    return failing_app


def _body_that_fails():
    yield b'{"partial":'
    raise DeliberateFailure("secret-detail-in-body")


def worker_app():
    app = create_app()
    app.wsgi_app = failing_layer(app.wsgi_app)
    return RsgiBridge(app)


if __name__ == "__main__":
    serve.main("tests.support.failing_app:worker_app")
