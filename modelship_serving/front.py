"""The image's front for a project's own WSGI app: the probes and counters the app lacks.

A project's app need not know it is deployed: this middleware answers `/healthz` and
`/readyz` where the contract says the app has none, `/version` (the image's revision and the
model it carries) and `/metrics` (Prometheus text, this worker's counts), and hands every
other request to the app untouched. Readiness is earned once per worker, before the worker
takes connections: the model's golden samples are posted to the app's own score route, in
process, and must come back as published. It never changes a request the app answers.
"""

from __future__ import annotations

import io
import json
import os
import threading
from collections import Counter
from pathlib import Path

from modelship_serving import drain
from modelship_serving.contract import AppContract

PLAIN = [("Content-Type", "text/plain; version=0.0.4")]
JSON = [("Content-Type", "application/json")]


def read_metadata(model_dir: Path) -> dict:
    return json.loads((model_dir / "metadata.json").read_text())


def call_app(app, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
    """Run one request through the WSGI app in this process: (status, body)."""
    captured = {}

    def start_response(status, headers, exc_info=None):
        captured["status"] = int(status.split()[0])

    environ = {
        "REQUEST_METHOD": method, "PATH_INFO": path, "SCRIPT_NAME": "", "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "0", "SERVER_PROTOCOL": "HTTP/1.1",
        "CONTENT_TYPE": "application/json", "CONTENT_LENGTH": str(len(body)),
        "wsgi.input": io.BytesIO(body), "wsgi.errors": io.StringIO(), "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http", "wsgi.multithread": False, "wsgi.multiprocess": True,
        "wsgi.run_once": False, "HTTP_HOST": "127.0.0.1",
    }
    chunks = app(environ, start_response)
    try:
        payload = b"".join(chunks)
    finally:
        getattr(chunks, "close", lambda: None)()
    return captured.get("status", 500), payload


def golden_problem(app, contract: AppContract, metadata: dict) -> str | None:
    """Why the app does not answer the golden samples as published, or None."""
    samples = metadata.get("golden") or []
    if not samples:
        return "the model's metadata has no golden samples"
    try:
        status, payload = call_app(app, "POST", contract.score_path,
                                   json.dumps(contract.request_body(samples)).encode())
    except Exception as error:  # the app's own bug: the worker stays up, unready, and says so
        return f"{contract.score_path} raised {type(error).__name__}: {error}"
    if status != 200:
        return f"{contract.score_path} answered {status}: {payload[:200]!r}"
    try:
        answer = json.loads(payload)
    except ValueError:
        return f"{contract.score_path} did not answer JSON"
    return contract.mismatch(samples, answer, metadata)


class ContractFront:
    """The WSGI callable the server runs: the app, with the probes it lacks."""

    def __init__(self, app, contract: AppContract, metadata: dict, environ=os.environ):
        self.app = app
        self.contract = contract
        self.metadata = metadata
        self.version = {
            "git_revision": environ.get("GIT_REVISION", "unknown"),
            "app_version": environ.get("APP_VERSION", "unknown"),
            "model": {key: metadata.get(key) for key in ("name", "version", "sha256")},
        }
        self.problem = golden_problem(app, contract, metadata)
        self.shutdown_marker = drain.marker_path(environ)
        self.requests: Counter = Counter()
        self._lock = threading.Lock()

    def _answer(self, start_response, status: str, headers, body: bytes):
        start_response(status, headers + [("Content-Length", str(len(body)))])
        return [body]

    def _own(self, path: str):
        """The front's answer to `path` as (status, headers, body), or None: the app's."""
        if path == "/healthz" and not self.contract.health_path:
            return "200 OK", JSON, b'{"status":"ok"}'
        if path == "/readyz" and not self.contract.readiness_path:
            if self.shutdown_marker is not None and self.shutdown_marker.exists():
                # The preStop hook ran: out of every endpoint list, while still serving.
                return ("503 Service Unavailable", JSON,
                        b'{"status":"unready","problem":"shutting down"}')
            if self.problem:
                return ("503 Service Unavailable", JSON,
                        json.dumps({"status": "unready", "problem": self.problem}).encode())
            return "200 OK", JSON, b'{"status":"ready"}'
        if path == "/version":
            return "200 OK", JSON, json.dumps(self.version).encode()
        if path == "/metrics":
            with self._lock:
                counts = sorted(self.requests.items())
            lines = ["# TYPE modelship_requests_total counter"] + [
                f'modelship_requests_total{{path="{p}",status="{s}"}} {n}'
                for (p, s), n in counts]
            return "200 OK", PLAIN, ("\n".join(lines) + "\n").encode()
        return None

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        own = self._own(path)
        if own is not None:
            return self._answer(start_response, *own)
        counted = path if path == self.contract.score_path else "other"

        def counting_start_response(status, headers, exc_info=None):
            with self._lock:
                self.requests[(counted, status.split()[0])] += 1
            return start_response(status, headers, exc_info)

        return self.app(environ, counting_start_response)
