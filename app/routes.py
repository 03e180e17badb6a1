"""The HTTP API: liveness, readiness, version and scoring.

Handlers stay thin: the body is parsed and checked in `app.instances`, the model is
reached through `app.model.get_model()`, and every failure is an `ApiError` or an
HTTP error rendered as JSON by `app.errors`. No handler may load a model, touch the
file system or return anything but JSON.
"""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify, request

from app.errors import error_response
from app.instances import parse_instances, read_json_body
from app.model import get_model, model_problem

api = Blueprint("api", __name__)


@api.get("/healthz")
def healthz():
    # Liveness says only that the process answers: restarting it cannot fix a bad model.
    return {"status": "ok"}


@api.get("/readyz")
def readyz():
    problem = model_problem()
    if problem:
        return error_response(503, "model_not_ready", f"the model is not loaded: {problem}")
    return {"status": "ready"}


@api.get("/version")
def version():
    problem = model_problem()
    model = None if problem else get_model()
    return jsonify(
        git_revision=current_app.config["GIT_REVISION"],
        app_version=current_app.config["APP_VERSION"],
        model={"name": model.name, "version": model.version, "sha256": model.sha256}
        if model
        else None,
    )


@api.post("/score")
def score():
    model = get_model()
    payload = read_json_body(request)
    instances = parse_instances(payload, model.input, current_app.config["MAX_BATCH"])
    result = model.predict(instances)
    result["model"] = {"name": model.name, "version": model.version}
    return result
