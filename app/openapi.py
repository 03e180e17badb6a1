"""The OpenAPI 3 description served at `/openapi.json`, built from the loaded model.

The row schema (feature count, number or integer, batch limit) is read from the
model and the app's settings, never written by hand, so the description cannot
drift from what `/score` accepts; the test suite replays it against the app
(schemathesis). This module must never describe an endpoint or response the app
does not implement.
"""

from __future__ import annotations

import numpy as np

from app.auth import API_KEY_HEADER
from app.model import OnnxModel

OPENAPI_VERSION = "3.0.3"

_ERROR = {"$ref": "#/components/schemas/Error"}


def _error_response(description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": _ERROR}}}


def _json_response(description: str, schema: dict) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _score_schemas(model: OnnxModel | None, max_batch: int) -> tuple[dict, dict]:
    if model is None:  # unready: describe the shape loosely, /score answers 503 anyway
        value, feature_bounds, prediction = {"type": "number"}, {}, {}
    else:
        dtype = model.input.dtype
        if dtype.kind == "b":  # /score takes a boolean feature as 0 or 1
            value = {"type": "integer", "minimum": 0, "maximum": 1}
        elif dtype.kind == "O":  # a model that takes text
            value = {"type": "string"}
        else:
            limits = np.iinfo(dtype) if np.issubdtype(dtype, np.integer) else np.finfo(dtype)
            # The range is part of the contract: 1e39 is valid JSON but no float32.
            value = {
                "type": "integer" if np.issubdtype(dtype, np.integer) else "number",
                "minimum": limits.min.item(),
                "maximum": limits.max.item(),
            }
        count = model.input.feature_count
        feature_bounds = {"minItems": count, "maxItems": count}
        # null: the model's output overflowed (inputs far outside its training range).
        prediction = {"type": model.prediction_type, "nullable": model.prediction_type == "number"}
    request = {
        "type": "object",
        "required": ["instances"],
        "properties": {
            "instances": {
                "type": "array",
                "minItems": 1,
                "maxItems": max_batch,
                "description": "Rows to score, each a list of the model's features in order.",
                "items": {"type": "array", "items": value, **feature_bounds},
            }
        },
    }
    response_properties = {
        "predictions": {"type": "array", "items": prediction},
        "model": {"$ref": "#/components/schemas/ModelIdentity"},
    }
    if model is None or model.is_classifier:
        response_properties["probabilities"] = {
            "type": "array",
            "description": "Per row, the probability of each class (classifiers only).",
            "items": {"type": "array", "items": {"type": "number", "nullable": True}},
        }
    response = {
        "type": "object",
        "required": ["predictions", "model"],
        "properties": response_properties,
    }
    return request, response


def build_spec(
    model: OnnxModel | None, max_batch: int, key_required: bool, app_version: str
) -> dict:
    """The OpenAPI document for this app serving `model` (None while it is not loaded)."""
    score_request, score_response = _score_schemas(model, max_batch)
    score = {
        "summary": "Score a batch of rows",
        "operationId": "score",
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": score_request}},
        },
        "responses": {
            "200": _json_response("Predictions, in the order of the rows sent.", score_response),
            "400": _error_response("The body is not valid JSON."),
            "413": _error_response("The body is larger than the size limit."),
            "415": _error_response("The body is not declared as application/json."),
            "422": _error_response("The JSON does not match the model's input."),
            "503": _error_response("The model is not loaded; see /readyz."),
        },
    }
    components = {
        "schemas": {
            "Error": {
                "type": "object",
                "required": ["error"],
                "properties": {
                    "error": {
                        "type": "object",
                        "required": ["code", "message"],
                        "properties": {
                            "code": {"type": "string"},
                            "message": {"type": "string"},
                        },
                    }
                },
            },
            "ModelIdentity": {
                "type": "object",
                "required": ["name", "version"],
                "properties": {"name": {"type": "string"}, "version": {"type": "string"}},
            },
        }
    }
    if key_required:
        score["security"] = [{"bearer": []}, {"apiKey": []}]
        score["responses"]["401"] = _error_response("The API key is missing or wrong.")
        components["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer"},
            "apiKey": {"type": "apiKey", "in": "header", "name": API_KEY_HEADER},
        }

    status = {
        "type": "object",
        "required": ["status"],
        "properties": {"status": {"type": "string"}},
    }
    paths = {
        "/score": {"post": score},
        "/healthz": {
            "get": {
                "summary": "Liveness: the process answers",
                "operationId": "healthz",
                "responses": {"200": _json_response("Alive.", status)},
            }
        },
        "/readyz": {
            "get": {
                "summary": "Readiness: the model is loaded and passed its warm-up",
                "operationId": "readyz",
                "responses": {
                    "200": _json_response("Ready to score.", status),
                    "503": _error_response("Not ready; the message says why."),
                },
            }
        },
        "/version": {
            "get": {
                "summary": "Code and model identity",
                "operationId": "version",
                "responses": {
                    "200": _json_response(
                        "What this process runs.",
                        {
                            "type": "object",
                            "required": ["git_revision", "app_version", "model"],
                            "properties": {
                                "git_revision": {"type": "string"},
                                "app_version": {"type": "string"},
                                "model": {
                                    "type": "object",
                                    "nullable": True,
                                    "required": ["name", "version", "sha256"],
                                    "properties": {
                                        "name": {"type": "string"},
                                        "version": {"type": "string"},
                                        "sha256": {"type": "string"},
                                    },
                                },
                            },
                        },
                    )
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics of every worker in this pod",
                "operationId": "metrics",
                "responses": {
                    "200": {
                        "description": "Prometheus text exposition format 0.0.4.",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
        "/openapi.json": {
            "get": {
                "summary": "This description",
                "operationId": "openapi",
                "responses": {"200": _json_response("OpenAPI 3 document.", {"type": "object"})},
            }
        },
    }
    title = f"{model.name} scoring API" if model else "Model scoring API"
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": title,
            "version": app_version,
            "description": "Scores rows with one ONNX model. Errors are "
            '{"error": {"code", "message"}}.',
        },
        "paths": paths,
        "components": components,
    }
