"""Granian's RSGI interface in front of the WSGI app: the body is awaited, then Flask runs.

Granian accepts connections and parses HTTP in Rust; this bridge receives each request
on the worker's event loop, waits for its body without holding the Python thread, and
only then calls the WSGI app (`app.front.ServiceFront`) with the whole body in memory.
It exists, instead of Granian's own WSGI interface, because that interface (2.8) reads
the body on a Python thread as the client sends it, has no body timeout, and hands the
app a silently shortened body when the chunked framing is broken. Here a slow body
costs an idle coroutine, a body that does not arrive in time is a 408, a body over
`MAX_CONTENT_LENGTH` is a 413 before more than the limit is buffered, and broken
framing is a 400. Before the body it refuses what a server must not guess at: a
Transfer-Encoding other than exactly `chunked` (501, or 400 for `chunked` twice) and an
HTTP/1.1 request without exactly one Host (400); and it drops header names holding an
underscore, which WSGI would otherwise read as the dashed name (`X_API_Key` for
`X-API-Key`), as nginx and gunicorn do. Those refusals go through the app's front like
any request (JSON error, X-Request-ID, log line, metrics). Whatever fails here or in
the app is answered as the API's JSON 500 with a request id and logged in one short
line. This module must never run the app before the body is complete, never buffer
more than the limit of a body, and never let an exception reach Granian (which would
answer an empty 500 and log a whole traceback per request).
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import signal
import sys
import time
import traceback

from flask import Flask

from app import metrics
from app.errors import INTERNAL_ERROR_MESSAGE, ApiError, body_too_large, error_body
from app.front import FINISHED_KEY, REQUEST_PROBLEM_KEY, finish_request
from app.request_log import REQUEST_ID_HEADER, request_id_for, request_id_of

logger = logging.getLogger(__name__)

_CHUNKED = "chunked"
# Where the request's Transfer-Encoding is kept: the body reaches the app whole, with a
# Content-Length, so the header itself is not passed on.
_TRANSFER_ENCODING_KEY = "modelship.transfer_encoding"
_SPECIAL_HEADERS = {
    "content-type": "CONTENT_TYPE",
    "content-length": "CONTENT_LENGTH",
    "transfer-encoding": _TRANSFER_ENCODING_KEY,
}
_CLOSE = ("Connection", "close")
# Granian names HTTP/1.0 "1"; WSGI's SERVER_PROTOCOL is the request line's own spelling.
_SERVER_PROTOCOLS = {"1.1": "HTTP/1.1", "1": "HTTP/1.0", "2": "HTTP/2"}
# How many frames of a failure's traceback its log line names, innermost first.
_FRAMES_LOGGED = 3


class BodyProblem(Exception):
    """The request body cannot be used; carries the answer for the client."""

    def __init__(self, error: ApiError):
        super().__init__(error.message)
        self.error = error


class RsgiBridge:
    """The RSGI application Granian calls; wraps one Flask app built by `create_app`."""

    def __init__(self, app: Flask):
        self.app = app
        self._wsgi = app.wsgi_app
        self._body_limit = app.config["MAX_CONTENT_LENGTH"]
        self._body_timeout = app.config["BODY_TIMEOUT_SECONDS"]
        # Built once: what every request's environ shares.
        self._constant_environ = {
            "SCRIPT_NAME": "",
            "wsgi.version": (1, 0),
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": False,
            "wsgi.multiprocess": True,
            "wsgi.run_once": False,
            "wsgi.input_terminated": True,
        }

    def __rsgi_init__(self, loop) -> None:
        """Called by Granian once its stop signal handlers are installed, before the loop runs.

        uvloop (0.23) notes a signal that arrives before its loop runs but acts on it only
        when a byte reaches its self-pipe, which it creates when the loop starts: a
        SIGTERM sent to a worker in that gap (just after it built the app) was lost, and
        the worker served on until the server killed it at WORKERS_KILL_TIMEOUT_SECONDS.
        The loop's first callback therefore wakes the loop's signal handling once, so
        that a signal noted meanwhile is acted on.
        """
        loop.call_soon(_wake_signal_handling)

    async def __rsgi__(self, scope, protocol) -> None:
        started = time.perf_counter()
        environ = None
        try:
            environ = self._environ(scope)
            problem = _head_problem(environ, scope.http_version)
            body = b""
            if problem is None:
                try:
                    body = await self._read_body(environ, protocol)
                except BodyProblem as refused:
                    problem = refused.error
            if problem is not None:
                environ[REQUEST_PROBLEM_KEY] = problem
            environ["wsgi.input"] = io.BytesIO(body)
            environ["CONTENT_LENGTH"] = str(len(body))
            answer = self._call_app(environ)
        except Exception:
            answer = self._internal_error(environ, started)
        try:
            protocol.response_bytes(*answer)
        except Exception:  # an answer Granian cannot send, such as a header it cannot encode
            try:
                protocol.response_bytes(*self._internal_error(environ, started))
            except Exception:
                logger.error("the answer to a request could not be sent")

    def _environ(self, scope) -> dict:
        environ = dict(self._constant_environ)
        host, _, port = scope.server.rpartition(":")
        client_host, _, client_port = scope.client.rpartition(":")
        path = scope.path
        if not path.isascii():
            # PEP 3333: PATH_INFO holds the path's bytes, one Latin-1 character per byte.
            # Granian hands the path over percent-decoded as UTF-8 (invalid sequences
            # already replaced by U+FFFD), so this is those bytes again.
            path = path.encode("utf-8").decode("latin-1")
        environ.update(
            REQUEST_METHOD=scope.method,
            PATH_INFO=path,
            QUERY_STRING=scope.query_string,
            SERVER_NAME=host,
            SERVER_PORT=port,
            SERVER_PROTOCOL=_SERVER_PROTOCOLS.get(scope.http_version, "HTTP/1.0"),
            REMOTE_ADDR=client_host,
            REMOTE_PORT=client_port,
        )
        environ["wsgi.url_scheme"] = scope.scheme
        for name, value in scope.headers.items():
            key = _SPECIAL_HEADERS.get(name)
            if key is None:
                if "_" in name:
                    # WSGI spells X-API-Key and X_API_Key alike (HTTP_X_API_KEY): only the
                    # dashed name may set it, so one with an underscore is dropped.
                    continue
                key = "HTTP_" + name.upper().replace("-", "_")
            if key in environ:  # a repeated header: WSGI joins the values
                environ[key] = f"{environ[key]},{value}"
            else:
                environ[key] = value
        return environ

    async def _read_body(self, environ: dict, protocol) -> bytes:
        declared = environ.get("CONTENT_LENGTH", "")
        chunked = _TRANSFER_ENCODING_KEY in environ  # _head_problem let only "chunked" by
        if not declared and not chunked:
            return b""
        try:
            if chunked:
                reading = self._read_chunked(protocol)
            else:
                if not (declared.isascii() and declared.isdecimal()):
                    raise BodyProblem(
                        ApiError(400, "bad_request", "Content-Length must be a whole number",
                                 [_CLOSE])
                    )
                if int(declared) > self._body_limit:
                    raise BodyProblem(body_too_large(self._body_limit, [_CLOSE]))
                if declared == "0":
                    return b""
                reading = protocol()  # Granian stops at Content-Length; raises if cut short
            # asyncio.timeout cancels this task in place; wait_for would wrap the read in
            # a second task, which cost a fifth of a 1-row request.
            async with asyncio.timeout(self._body_timeout):
                return await reading
        except asyncio.TimeoutError:
            raise BodyProblem(
                ApiError(
                    408,
                    "request_timeout",
                    f"the request body did not arrive within {self._body_timeout} s",
                    [_CLOSE],
                )
            ) from None
        except BodyProblem:
            raise
        except Exception:  # RSGIProtocolClosed: the client went away or broke the framing
            raise BodyProblem(
                ApiError(400, "bad_request", "the request body ended early or is malformed",
                         [_CLOSE])
            ) from None

    async def _read_chunked(self, protocol) -> bytes:
        """A chunked body, refused as soon as it passes the limit.

        Granian (2.8) reports a broken chunk as an empty piece with the stream still
        open, where a body that ended well is one empty piece and then the end of the
        iteration; a second piece after an empty one therefore means broken framing
        (or trailers, which this API has no use for).
        """
        pieces, size = [], 0
        stream = protocol.__aiter__()
        ended = False
        while True:
            try:
                piece = await stream.__anext__()
            except StopAsyncIteration:
                break
            if ended:
                raise BodyProblem(
                    ApiError(400, "bad_request", "the chunked request body is malformed",
                             [_CLOSE])
                )
            if not piece:
                ended = True
                continue
            size += len(piece)
            if size > self._body_limit:
                raise BodyProblem(body_too_large(self._body_limit, [_CLOSE]))
            pieces.append(piece)
        return b"".join(pieces)

    def _call_app(self, environ: dict) -> tuple[int, list, bytes]:
        answer = []

        def start_response(status, headers, exc_info=None):
            answer[:] = [int(status[:3]), headers]

        chunks = self._wsgi(environ, start_response)
        try:
            body = b"".join(chunks)
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()
        status, headers = answer
        return status, headers, body

    def _internal_error(self, environ: dict | None, started: float) -> tuple[int, list, bytes]:
        """The JSON 500 for the exception being handled, logged in one line.

        The line names the exception's type and its innermost frames, never its message,
        which may quote the request (a path, a header). Counted and logged as a request
        too, unless the front already did.
        """
        if environ is None:
            environ = {}
        request_id = request_id_of(environ) or request_id_for(environ)
        error_type, _, trace = sys.exc_info()
        frames = traceback.extract_tb(trace)[-_FRAMES_LOGGED:]
        where = " < ".join(
            f"{os.path.basename(frame.filename)}:{frame.lineno} {frame.name}"
            for frame in reversed(frames)
        )
        logger.error(
            "request failed outside the app's error handling",
            extra={"fields": {"request_id": request_id, "error": error_type.__name__,
                              "where": where}},
        )
        if not environ.get(FINISHED_KEY):
            try:
                finish_request(metrics.store_of(self.app), environ,
                               environ.get("REQUEST_METHOD", ""), None, 500, started,
                               request_id)
            except Exception:  # the failure may be in the bookkeeping itself
                pass
        body = error_body("internal", INTERNAL_ERROR_MESSAGE)
        headers = [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(body))),
            (REQUEST_ID_HEADER, request_id),
            _CLOSE,
        ]
        return 500, headers, body


def _wake_signal_handling() -> None:
    """Write a NUL to the running loop's signal wake-up fd: the loop reads it, skips the NUL
    (the byte Python itself writes on an overflow) and handles the signals it has noted."""
    wakeup_fd = signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(wakeup_fd, warn_on_full_buffer=False)
    if wakeup_fd != -1:
        try:
            os.write(wakeup_fd, b"\0")
        except OSError:  # a full pipe already wakes the loop
            pass


def _head_problem(environ: dict, http_version: str) -> ApiError | None:
    """Why the request's head is refused before its body is read, or None.

    A server that passes on a framing it did not apply (the gzip of `gzip, chunked`), or
    a request whose host it has to guess, lets a proxy in front and the app behind
    disagree about what the request was.
    """
    if http_version == "1.1":
        host = environ.get("HTTP_HOST")
        if host is None or "," in host:  # none, or several joined by _environ
            return ApiError(400, "bad_request",
                            "an HTTP/1.1 request needs exactly one Host header", [_CLOSE])
    coding = environ.get(_TRANSFER_ENCODING_KEY)
    if coding is None or coding == _CHUNKED:
        return None
    codings = [part.strip().lower() for part in coding.split(",") if part.strip()]
    if codings == [_CHUNKED]:  # Chunked, or a list with empty elements
        environ[_TRANSFER_ENCODING_KEY] = _CHUNKED
        return None
    if codings and all(part == _CHUNKED for part in codings):
        return ApiError(400, "bad_request", "Transfer-Encoding names chunked more than once",
                        [_CLOSE])
    return ApiError(501, "unsupported_transfer_encoding",
                    "the only Transfer-Encoding accepted is chunked, on its own", [_CLOSE])
