"""Serve a project's own WSGI app with Granian: `python -m modelship_serving` (the image's CMD).

APP_WSGI names the app as `module:attribute` (or `module:factory()`), imported from the
image's working folder (/opt/service, the project's code); MODEL_DIR holds the model
(MODEL_PATH is its model.onnx, metadata.json lies beside it). Each worker imports the app,
wraps it in ContractFront (probes, version, counters, the golden replay) and only then takes
connections. HOST, PORT and WEB_CONCURRENCY say where and how wide, as for the sample's
server. It must never bind anything but HOST:PORT.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

from modelship_serving.contract import AppContract
from modelship_serving.front import ContractFront, read_metadata

WORKER_APP = "modelship_serving.serve:worker_app"


def load_wsgi(target: str):
    """The callable `module:attribute` names; `module:factory()` calls the factory."""
    module_name, _, attribute = target.partition(":")
    if not module_name or not attribute:
        raise SystemExit(f"APP_WSGI must be module:attribute, got {target!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    module = importlib.import_module(module_name)
    call = attribute.endswith("()")
    app = getattr(module, attribute.removesuffix("()"))
    return app() if call else app


def worker_app():
    """What each Granian worker serves."""
    app = load_wsgi(os.environ.get("APP_WSGI") or "app:app")
    metadata = read_metadata(Path(os.environ.get("MODEL_DIR") or "/opt/model"))
    return ContractFront(app, AppContract.from_environment(), metadata)


def main() -> None:
    from granian import Granian
    from granian.constants import Interfaces

    workers = int(os.environ.get("WEB_CONCURRENCY") or 1)
    # After SIGTERM (the preStop drain has already run in a pod) Granian lets in-flight
    # requests finish for at most this long, inside the pod's grace period.
    kill_timeout = int(os.environ.get("WORKERS_KILL_TIMEOUT_SECONDS") or 15)
    Granian(WORKER_APP, factory=True, interface=Interfaces.WSGI,
            address=os.environ.get("HOST") or "0.0.0.0", port=int(os.environ.get("PORT") or 8080),
            workers=workers, workers_kill_timeout=kill_timeout, log_access=False).serve()
