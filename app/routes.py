"""The HTTP API: scoring, probes, version, metrics and the API's own description.

Handlers stay thin: scoring itself lives in `app.scoring` (served by `app.front`),
the model is reached through `app.model`, and every failure is an `ApiError` or an
HTTP error rendered as JSON by `app.errors`. No handler may load a model or touch
the file system, and only scoring (`/score`, and v2 infer in `app.open_inference`) may
require an API key: the platform's probes and scrapers carry none.
"""

from __future__ import annotations

import os

from flask import Blueprint, Response, current_app, jsonify, request

from app import metrics, scoring
from app.auth import key_required
from app.errors import error_response
from app.model import get_model, model_problem
from app.openapi import build_spec

api = Blueprint("api", __name__)
_JSON_CONTENT_TYPE = "application/json"


def _loaded_model():
    return None if model_problem() else get_model()


@api.get("/healthz")
def healthz():
    # Liveness says only that the process answers: restarting it cannot fix a bad model.
    return {"status": "ok"}


@api.get("/readyz")
def readyz():
    marker = current_app.config["SHUTDOWN_MARKER"]
    if marker and os.path.exists(marker):
        # Draining: Kubernetes stops sending new traffic while requests are still served.
        return error_response(503, "shutting_down", "the server is shutting down")
    problem = model_problem()
    if problem:
        return error_response(503, "model_not_ready", f"the model is not loaded: {problem}")
    return {"status": "ready"}


@api.get("/version")
def version():
    model = _loaded_model()
    return jsonify(
        git_revision=current_app.config["GIT_REVISION"],
        app_version=current_app.config["APP_VERSION"],
        model={"name": model.name, "version": model.version, "sha256": model.sha256}
        if model
        else None,
    )


@api.get("/metrics")
def prometheus_metrics():
    info = {
        "app_info": {
            "version": current_app.config["APP_VERSION"],
            "git_revision": current_app.config["GIT_REVISION"],
        }
    }
    model = _loaded_model()
    if model:
        info["model_info"] = {"name": model.name, "version": model.version, "sha256": model.sha256}
        metrics.histogram_of(current_app, model)  # its buckets show before the first score
    body = metrics.render(metrics.store().totals(), info)
    return Response(body, content_type=metrics.CONTENT_TYPE)


@api.get("/openapi.json")
def openapi():
    return build_spec(
        _loaded_model(),
        current_app.config["MAX_BATCH"],
        key_required(),
        current_app.config["APP_VERSION"],
    )


@api.post(scoring.ROUTE)
def score():
    # app.front answers POST /score before Flask sees it; this rule gives Flask's
    # routing the URL (a GET on it is a 405 naming POST) and serves the same answer
    # should the app ever be mounted without its front.
    body = scoring.score(current_app._get_current_object(), request.environ)
    return Response(body, content_type=_JSON_CONTENT_TYPE)
