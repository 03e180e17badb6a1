"""POST /score: API key, body, validation, prediction and the JSON answer.

`score` works on the bare WSGI environ, not on a Flask request, because app.front
serves scoring itself: Flask's request context, routing and response objects cost
more than the model call on a 1-row request. Everything it raises is an `ApiError`
or a Werkzeug HTTP error, which the caller renders in the API's one error shape.
This module must stay free of Flask's context-locals (`request`, `current_app`, `g`).
"""

from __future__ import annotations

import orjson
from flask import Flask

from app import metrics
from app.auth import check_api_key, expected_key_digest
from app.instances import decode_json, numeric_table, parse_instances, read_json_body
from app.metric_names import SCORE_ROUTE
from app.model import model_of

ROUTE = SCORE_ROUTE
METHOD = "POST"


def score(app: Flask, environ: dict) -> bytes:
    """The JSON answer to one scoring request, or an exception saying what is wrong."""
    check_api_key(environ, expected_key_digest(app))
    model = model_of(app)
    config = app.config
    body = read_json_body(environ, config["MAX_CONTENT_LENGTH"])
    instances = numeric_table(body, model.input, config["MAX_BATCH"])
    if instances is None:  # anything but a plain table: the checks that explain it
        instances = parse_instances(decode_json(body), model.input, config["MAX_BATCH"])
    result = model.predict(instances)
    metrics.store_of(app).record_predictions(metrics.histogram_of(app, model),
                                             result["predictions"])
    result["model"] = {"name": model.name, "version": model.version}
    # orjson, not Flask's JSON provider, which sorts keys and costs twenty times as
    # much on a 1-row answer. It writes the compact form and UTF-8 as is, and would
    # write a NaN as null, as the model's _json_ready already does.
    return orjson.dumps(result)
