"""The serving app: a Flask factory that exposes one ONNX model over HTTP.

`create_app()` builds the WSGI app; `app.serve` runs one per server worker behind
Granian (`python -m app.serve`). Settings come
from defaults, then plain environment variables (the names the Kubernetes manifests
set), then `test_config`. The app serves whatever model `MODEL_DIR` holds: nothing in
this package may know which model that is, and nothing here may start Flask's
development server.
"""

from __future__ import annotations

import os

from flask import Flask

from app import auth, errors, metrics, model, open_inference, request_log
from app.front import ServiceFront
from app.routes import api

DEFAULTS = {
    "MODEL_DIR": "/opt/model",
    "GIT_REVISION": "unknown",
    "APP_VERSION": "unknown",
    "MAX_BATCH": 1000,
    "MAX_CONTENT_LENGTH": 1024 * 1024,
    # Seconds a client has to send a request body once its headers arrived (408 after).
    "BODY_TIMEOUT_SECONDS": 10,
    "API_KEY": "",
    "API_KEY_FILE": "",
    # Where the server's workers share their counters; empty keeps them in this process.
    "METRICS_DIR": "",
    # The regressor's prediction buckets, pinned (comma-separated upper edges): a canary is
    # started with the stable version's, so the two histograms compare bucket by bucket.
    # Empty: derived from the golden samples (app.prediction_histogram).
    "PREDICTION_BUCKETS": "",
    # A file whose existence means the server is shutting down (/readyz 503); set by
    # app.serve. Empty: never.
    "SHUTDOWN_MARKER": "",
}
_INTEGER_SETTINGS = {"MAX_BATCH", "MAX_CONTENT_LENGTH", "BODY_TIMEOUT_SECONDS"}
_BOOLEAN_SETTINGS: set[str] = set()


def settings_from_environment(environ=os.environ) -> dict:
    """The settings among DEFAULTS that the environment overrides, with integers parsed."""
    settings = {}
    for key in DEFAULTS:
        raw = environ.get(key)
        if raw is None or raw == "":
            continue
        if key in _BOOLEAN_SETTINGS:
            settings[key] = raw.strip().lower() in ("1", "true", "yes", "on")
        elif key in _INTEGER_SETTINGS:
            try:
                settings[key] = int(raw)
            except ValueError:
                raise ValueError(
                    f"environment variable {key} must be a whole number, got {raw!r}"
                ) from None
            if settings[key] < 1:
                raise ValueError(f"environment variable {key} must be at least 1, got {raw!r}")
        else:
            settings[key] = raw
    return settings


def create_app(test_config=None) -> Flask:
    app = Flask(__name__)
    app.config.from_mapping(DEFAULTS)
    app.config.from_mapping(settings_from_environment())
    if test_config is not None:
        app.config.from_mapping(test_config)

    errors.init_app(app)
    request_log.init_app(app)  # first, so what the others log at start comes out as JSON
    auth.init_app(app)
    metrics.init_app(app)
    model.init_app(app)
    app.register_blueprint(api)
    app.register_blueprint(open_inference.api)  # the Open Inference Protocol (v2)
    # ids, logs and metrics for all; answers POST /score and v2 infer itself
    app.wsgi_app = ServiceFront(app)
    return app
