"""The one ONNX model this process serves: loaded once, checked, then shared by requests.

`init_app` loads the model from `MODEL_DIR` (`model.onnx` + `metadata.json`) when the
app is created, warms it up and replays the golden samples the metadata carries; only
then is the process ready. Each server worker builds its own app, so each reads,
verifies and opens the model once, before it takes connections. Requests reach the model
through `get_model()` and nothing else. The input signature comes from the ONNX session
itself, so this module knows nothing about any particular model, and it must never load
a model per request or serve a model whose bytes do not match the sha256 its metadata
declares.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from flask import Flask, current_app

from app.errors import ApiError
# The model itself is Flask-free and shared with the host side and the image's server.
from modelship_serving.onnx_model import (  # noqa: F401  (re-exported for the app)
    METADATA_FILENAME, MODEL_FILENAME, InputSpec, ModelLoadError, OnnxModel, TensorSignature)

logger = logging.getLogger(__name__)

_EXTENSION_KEY = "modelship.model"


@dataclass(frozen=True)
class _LoadedModel:
    model: OnnxModel | None
    problem: str | None = None


def init_app(app: Flask) -> None:
    """Load, check and open the model; the app is unready (not crashed) if that fails."""
    model_dir = app.config["MODEL_DIR"]
    try:
        model = OnnxModel(model_dir)
    except Exception as error:
        _mark_unready(app, error, model_dir)
        return
    _open(app, model)


def _open(app: Flask, model: OnnxModel) -> None:
    started = time.perf_counter()
    try:
        model.open()
    except Exception as error:
        _mark_unready(app, error, app.config["MODEL_DIR"])
        return
    app.extensions[_EXTENSION_KEY] = _LoadedModel(model)
    load_ms = round((time.perf_counter() - started) * 1000, 1)
    logger.info("model loaded", extra={"fields": {**_identity(model), "load_ms": load_ms}})


def _identity(model: OnnxModel) -> dict:
    return {"model_name": model.name, "model_version": model.version, "sha256": model.sha256}


def _mark_unready(app: Flask, error: Exception, model_dir) -> None:
    # Stay up but unready rather than crash: during a rollout Kubernetes keeps the
    # old pods serving, and /readyz tells the operator what is wrong.
    logger.exception("model not loaded", extra={"fields": {"model_dir": str(model_dir)}})
    problem = str(error)
    if not isinstance(error, ModelLoadError):
        problem = f"{type(error).__name__}: {problem}"
    app.extensions[_EXTENSION_KEY] = _LoadedModel(None, problem)


def model_problem() -> str | None:
    """Why the model cannot serve, or None when it is loaded and warmed up."""
    return current_app.extensions[_EXTENSION_KEY].problem


def model_of(app: Flask) -> OnnxModel:
    """`app`'s model, ready to predict; a 503 for the client when it is not.

    Looked up on every request rather than kept, so the front never holds a model
    that failed its checks.
    """
    loaded = app.extensions[_EXTENSION_KEY]
    if loaded.problem is not None:
        raise ApiError(503, "model_not_ready", "the model is not loaded; see /readyz")
    return loaded.model


def get_model() -> OnnxModel:
    """The process's model; a 503 for the client when it did not load."""
    return model_of(current_app)
