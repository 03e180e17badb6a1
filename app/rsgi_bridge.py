"""Granian's RSGI interface in front of the WSGI app: the body is awaited, then Flask runs.

Granian accepts connections and parses HTTP in Rust; this bridge receives each request
on the worker's event loop, waits for its body without holding the Python thread, and
only then calls the WSGI app (`app.front.ServiceFront`) with the whole body in memory.
It exists, instead of Granian's own WSGI interface, because that interface (2.8) reads
the body on a Python thread as the client sends it, has no body timeout, and hands the
app a silently shortened body when the chunked framing is broken. Here a slow body
costs an idle coroutine, a body that does not arrive in time is a 408, a body over
`MAX_CONTENT_LENGTH` is a 413 before more than the limit is buffered, and broken
framing is a 400. Those refusals go through the app's front like any request (JSON
error, X-Request-ID, log line, metrics). This module must never run the app before
the body is complete, and never buffer more than the limit of a body.
"""

from __future__ import annotations

import asyncio
import io
import sys

from flask import Flask

from app.errors import ApiError, body_too_large
from app.front import BODY_PROBLEM_KEY

_CHUNKED = "chunked"
_CONTENT_HEADERS = {"content-type": "CONTENT_TYPE", "content-length": "CONTENT_LENGTH"}
_SKIPPED_HEADERS = {"transfer-encoding"}  # the body arrives whole, with a Content-Length
_CLOSE = ("Connection", "close")


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

    async def __rsgi__(self, scope, protocol) -> None:
        environ = self._environ(scope)
        try:
            body = await self._read_body(environ, protocol)
        except BodyProblem as problem:
            environ[BODY_PROBLEM_KEY] = problem.error
            body = b""
        environ["wsgi.input"] = io.BytesIO(body)
        environ["CONTENT_LENGTH"] = str(len(body))
        self._respond(environ, protocol)

    def _environ(self, scope) -> dict:
        environ = dict(self._constant_environ)
        host, _, port = scope.server.rpartition(":")
        client_host, _, client_port = scope.client.rpartition(":")
        environ.update(
            REQUEST_METHOD=scope.method,
            PATH_INFO=scope.path,
            QUERY_STRING=scope.query_string,
            SERVER_NAME=host,
            SERVER_PORT=port,
            SERVER_PROTOCOL=f"HTTP/{scope.http_version}",
            REMOTE_ADDR=client_host,
            REMOTE_PORT=client_port,
        )
        environ["wsgi.url_scheme"] = scope.scheme
        for name, value in scope.headers.items():
            key = _CONTENT_HEADERS.get(name)
            if key is None:
                if name in _SKIPPED_HEADERS:
                    environ["modelship.transfer_encoding"] = value.lower()
                    continue
                key = "HTTP_" + name.upper().replace("-", "_")
            if key in environ:  # a repeated header: WSGI joins the values
                environ[key] = f"{environ[key]},{value}"
            else:
                environ[key] = value
        return environ

    async def _read_body(self, environ: dict, protocol) -> bytes:
        declared = environ.get("CONTENT_LENGTH", "")
        chunked = environ.get("modelship.transfer_encoding", "").endswith(_CHUNKED)
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

    def _respond(self, environ: dict, protocol) -> None:
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
        protocol.response_bytes(status, headers, body)
