"""The serving app: a Flask factory that exposes one ONNX model over HTTP.

`create_app()` is the WSGI entry gunicorn calls (`app:create_app()`). Settings come
from defaults, then plain environment variables (the names the Kubernetes manifests
set), then `test_config`. The app serves whatever model `MODEL_DIR` holds: nothing in
this package may know which model that is, and nothing here may start Flask's
development server.
"""

from __future__ import annotations

import os

from flask import Flask

from app import errors, model, request_log
from app.routes import api

DEFAULTS = {
    "MODEL_DIR": "/opt/model",
    "GIT_REVISION": "unknown",
    "APP_VERSION": "unknown",
    "MAX_BATCH": 1000,
    "MAX_CONTENT_LENGTH": 1024 * 1024,
}
_INTEGER_SETTINGS = {"MAX_BATCH", "MAX_CONTENT_LENGTH"}


def settings_from_environment(environ=os.environ) -> dict:
    """The settings among DEFAULTS that the environment overrides, with integers parsed."""
    settings = {}
    for key in DEFAULTS:
        raw = environ.get(key)
        if raw is None or raw == "":
            continue
        if key in _INTEGER_SETTINGS:
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
    request_log.init_app(app)
    model.init_app(app)
    app.register_blueprint(api)
    return app
