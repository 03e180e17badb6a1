"""The Open Inference Protocol (v2) REST API beside /score, for clients written for KServe,
Triton, MLServer, Seldon or OpenVINO.

GET /v2, /v2/health/live, /v2/health/ready, /v2/models/<name>[/versions/<version>] (the
model's tensors, from the ONNX graph) and .../ready are Flask routes; POST .../infer is
served by app.front beside /score, with the same API key, size limit, log line, metrics
and a fast path for plain numeric tensors. The one model this process serves answers
under its metadata name and version; any other name or version is a 404. Errors are the
protocol's `{"error": "<message>"}`. As for /score, everything a client can get wrong is
a 4xx before onnxruntime sees it, and no message echoes a value from the body.
"""

from __future__ import annotations

import math
import os
import threading
import weakref
from dataclasses import dataclass
from itertools import chain

import numpy as np
import orjson
import simdjson
from flask import Blueprint, Flask, Response, current_app, request

from app import metrics
from app.auth import check_api_key, expected_key_digest
from app.errors import ApiError
from app.instances import decode_json, json_type, read_json_body
from app.metric_names import INFER_ROUTE, VERSIONED_INFER_ROUTE
from app.model import InputSpec, OnnxModel, model_of, model_problem
from app.request_log import request_id_of

SERVER_NAME = "modelship"
PLATFORM = "onnxruntime_onnx"
MODELS_PREFIX = "/v2/models/"
INFER_METHOD = "POST"

# The protocol's tensor datatypes for the ONNX element types it names, and the array type
# each is read into. BF16 is named by the protocol too, but NumPy has no such type and
# ONNX models served here cannot take it.
ONNX_DATATYPES = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}
DATATYPE_DTYPES = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),
}
PROTOCOL_DATATYPES = (*DATATYPE_DTYPES, "BF16")
_DTYPE_DATATYPES = {dtype: datatype for datatype, dtype in DATATYPE_DTYPES.items()}

_EXAMPLE_BODY = ('{"inputs": [{"name": ..., "shape": [rows, features], "datatype": ..., '
                 '"data": [...]}]}')
_JSON_CONTENT_TYPE = "application/json"
_parsers = threading.local()

api = Blueprint("open_inference", __name__)


def datatype_of(dtype: np.dtype) -> str:
    """The protocol's name for an array type (object arrays hold strings: BYTES)."""
    return _DTYPE_DATATYPES[np.dtype(dtype)]


def _dimensions(shape: tuple) -> list[int]:
    # A dimension the graph leaves open (a name, or nothing) is -1 in the protocol.
    return [dim if isinstance(dim, int) and dim >= 0 else -1 for dim in shape]


def _tensor_metadata(signature) -> dict:
    return {
        "name": signature.name,
        "datatype": ONNX_DATATYPES.get(signature.onnx_type, signature.onnx_type),
        "shape": _dimensions(signature.shape),
    }


def model_metadata(model: OnnxModel) -> dict:
    return {
        "name": model.name,
        "versions": [model.version],
        "platform": PLATFORM,
        "inputs": [_tensor_metadata(model.input_signature)],
        "outputs": [_tensor_metadata(output) for output in model.output_signatures],
    }


def check_served(model: OnnxModel, name: str, version: str | None) -> None:
    """A 404 unless `name` (and `version`, when given) is the model this process serves."""
    # The message names what is served, never the name asked for: that is client input.
    if name != model.name:
        raise ApiError(404, "unknown_model",
                       f"no model of that name is served here; this server serves {model.name!r}")
    if version is not None and version != model.version:
        raise ApiError(404, "unknown_model_version",
                       f"no such version of {model.name!r} is served here; this server serves "
                       f"version {model.version!r}")


def infer_target(path: str) -> tuple[str, str | None, str] | None:
    """(model name, version or None, route pattern) of an infer URL; None for any other path."""
    parts = path.split("/")
    # ["", "v2", "models", name, "infer"] or [..., name, "versions", version, "infer"]
    if len(parts) == 5 and parts[4] == "infer" and parts[3]:
        return parts[3], None, INFER_ROUTE
    if len(parts) == 7 and parts[4] == "versions" and parts[6] == "infer" and parts[3] and parts[5]:
        return parts[3], parts[5], VERSIONED_INFER_ROUTE
    return None


def is_infer_request(method: str, path: str) -> bool:
    return method == INFER_METHOD and path.startswith(MODELS_PREFIX) and path.endswith("/infer")


# --- the infer request ---------------------------------------------------------------


@dataclass(frozen=True)
class InferRequest:
    instances: np.ndarray
    id: str | None = None
    output_names: tuple[str, ...] | None = None  # None: every output


def _count_predictions(app: Flask, model, names: list, results: list, rows: int) -> None:
    """The rows, and what they predicted when the client asked for the predictions."""
    store = metrics.store_of(app)
    predicted = results[names.index(model.prediction_output)] \
        if model.prediction_output in names else None
    if predicted is None or predicted.size != rows:  # not asked for, or several per row
        store.add(metrics.PREDICTIONS, (), rows)
        return
    store.record_predictions(metrics.histogram_of(app, model), predicted.reshape(rows).tolist())


def infer(app: Flask, environ: dict, name: str, version: str | None) -> bytes:
    """The JSON answer to one infer request, or an ApiError / HTTP error saying what is wrong."""
    check_api_key(environ, expected_key_digest(app))
    model = model_of(app)
    check_served(model, name, version)
    config = app.config
    body = _read_body(environ, config["MAX_CONTENT_LENGTH"])
    tensors = _tensors_of(model)
    parsed = plain_request(body, model.input, tensors.input_datatype, config["MAX_BATCH"])
    if parsed is None:  # anything but one plain tensor: the checks that explain it
        parsed = parse_request(decode_json(body, _EXAMPLE_BODY), model.input,
                               tensors.input_datatype, config["MAX_BATCH"], tensors.output_names)
    names = list(parsed.output_names or tensors.output_names)
    results = model.run(parsed.instances, names)
    _count_predictions(app, model, names, results, len(parsed.instances))
    answer = {
        "model_name": model.name,
        "model_version": model.version,
        "id": parsed.id if parsed.id is not None else request_id_of(environ),
        "outputs": [
            _output_tensor(name, tensors.output_datatypes[name], result)
            for name, result in zip(names, results)
        ],
    }
    # NumPy arrays straight to JSON: NaN and infinity become null, as on /score, and a
    # float32 is written as the shortest text that reads back as the same float32.
    return orjson.dumps(answer, option=orjson.OPT_SERIALIZE_NUMPY)


@dataclass(frozen=True)
class _ModelTensors:
    """What every infer request asks of the model's signature, worked out once per model."""

    input_datatype: str
    output_names: tuple[str, ...]
    output_datatypes: dict


_tensors_by_model: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _tensors_of(model: OnnxModel) -> _ModelTensors:
    known = _tensors_by_model.get(model)
    if known is not None:
        return known
    outputs = model.output_signatures
    tensors = _ModelTensors(
        datatype_of(model.input.dtype),
        tuple(output.name for output in outputs),
        {output.name: ONNX_DATATYPES.get(output.onnx_type, output.onnx_type)
         for output in outputs},
    )
    _tensors_by_model[model] = tensors
    return tensors


def _output_tensor(name: str, datatype: str, result: np.ndarray) -> dict:
    flat = np.ascontiguousarray(result).reshape(-1)
    return {
        "name": name,
        "datatype": datatype,
        "shape": list(result.shape),
        "data": flat.tolist() if flat.dtype.kind in "OUS" else flat,
    }


def _read_body(environ: dict, body_limit: int | None) -> bytes:
    # The protocol asks for no content type, and some of its clients send none: a body
    # without one is read as JSON. One declared as anything else is refused (415).
    if not environ.get("CONTENT_TYPE"):
        environ = {**environ, "CONTENT_TYPE": _JSON_CONTENT_TYPE}
    return read_json_body(environ, body_limit)


def _parser() -> simdjson.Parser:
    parser = getattr(_parsers, "parser", None)
    if parser is None:
        parser = _parsers.parser = simdjson.Parser()
    return parser


def plain_request(body: bytes, spec: InputSpec, datatype: str, max_batch: int):
    """The request, when it is one well-formed tensor of finite numbers for a float model,
    read by simdjson straight into an array; None for anything else.

    Whenever this says None, `parse_request` on the decoded body gives the answer, error
    messages included; where it gives a request, it is the one `parse_request` would give
    (tests/unit/test_open_inference_properties.py holds the two side by side).
    """
    if spec.dtype.kind != "f":
        return None
    try:
        document = _parser().parse(body)
        parsed = _plain_request(document, body, spec, datatype, max_batch)
        del document  # the parser may be used again only once its documents are gone
        return parsed
    except (ValueError, TypeError, RuntimeError, KeyError, IndexError):
        # Not JSON, numbers simdjson will not take (1e400), values of the wrong type.
        return None


def _plain_request(document, body: bytes, spec: InputSpec, datatype: str, max_batch: int):
    # Keys are checked by count and lookup, not listed: simdjson's keys() and get() cost
    # more than the rest of this function. Two keys found among two are those two, once
    # each (simdjson keeps a repeated key and reads its first copy, the standard decoder
    # its last: a repeated key must go the general way).
    if not isinstance(document, simdjson.Object):
        return None
    key_count = len(document)
    if key_count == 1:
        request_id = None
    elif key_count == 2:
        request_id = document["id"]
        if not isinstance(request_id, str):
            return None
    else:
        return None
    inputs = document["inputs"]
    if not isinstance(inputs, simdjson.Array) or len(inputs) != 1:
        return None
    tensor = inputs[0]
    if not isinstance(tensor, simdjson.Object) or len(tensor) != 4:
        return None
    if tensor["name"] != spec.name or tensor["datatype"] != datatype:
        return None
    shape = tensor["shape"]
    data = tensor["data"]
    if not isinstance(shape, simdjson.Array) or not isinstance(data, simdjson.Array):
        return None
    shape = shape.as_list()
    if len(shape) != 2 or type(shape[0]) is not int or type(shape[1]) is not int:
        return None
    row_count, feature_count = shape
    if not 0 < row_count <= max_batch or feature_count != spec.feature_count:
        return None
    if len(data) == 0:
        return None
    if isinstance(data[0], simdjson.Array):  # nested: one list per row
        if len(data) != row_count:
            return None
        for row in data:
            if not isinstance(row, simdjson.Array) or len(row) != feature_count:
                return None
        data_brackets = row_count + 1
    else:
        if len(data) != row_count * feature_count:
            return None
        data_brackets = 1
    # One "[" for inputs, one for shape, the rest the data's own: any more (a list deeper
    # down, a "[" inside a string) and the general checks decide.
    if body.count(b"[") != 2 + data_brackets:
        return None
    values = np.frombuffer(data.as_buffer(of_type="d"), dtype=np.float64)
    if values.size != row_count * feature_count:
        return None
    with np.errstate(over="ignore"):  # 1e39 does not fit a float32: the checks say so
        instances = values.reshape(row_count, feature_count).astype(spec.dtype)
    if not np.isfinite(instances).all():
        return None
    return InferRequest(instances, request_id)


def _invalid(message: str) -> ApiError:
    return ApiError(400, "invalid_inference_request", message)


def parse_request(payload, spec: InputSpec, datatype: str, max_batch: int,
                  output_names: tuple[str, ...]) -> InferRequest:
    """The checked request in `payload` (a decoded body), or a 400 saying what is wrong.

    Fields the protocol does not name are ignored; those it names must be as it says.
    """
    if not isinstance(payload, dict) or "inputs" not in payload:
        raise _invalid(f'expected a JSON object with an "inputs" list: {_EXAMPLE_BODY}')
    request_id = payload.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise _invalid('"id" must be a string')
    if "parameters" in payload and not isinstance(payload["parameters"], dict):
        raise _invalid('"parameters" must be an object')
    inputs = payload["inputs"]
    if not isinstance(inputs, list) or len(inputs) != 1:
        raise _invalid(f'"inputs" must be a list of exactly one tensor: this model takes one '
                       f'input, {spec.name!r}')
    instances = _parse_tensor(inputs[0], spec, datatype, max_batch)
    return InferRequest(instances, request_id, _requested_outputs(payload, output_names))


def _requested_outputs(payload: dict, output_names: tuple[str, ...]):
    if "outputs" not in payload:
        return None
    requested = payload["outputs"]
    served = ", ".join(repr(name) for name in output_names)
    if not isinstance(requested, list):
        raise _invalid('"outputs" must be a list of {"name": ...} objects')
    names = []
    for index, output in enumerate(requested):
        if not isinstance(output, dict) or not isinstance(output.get("name"), str):
            raise _invalid(f'outputs[{index}] must be an object with a "name" string')
        if "parameters" in output and not isinstance(output["parameters"], dict):
            raise _invalid(f'outputs[{index}].parameters must be an object')
        if output["name"] not in output_names:
            raise _invalid(f"outputs[{index}] names no output of this model; its outputs are "
                           f"{served}")
        if output["name"] not in names:
            names.append(output["name"])
    return tuple(names) or None  # an empty list asks for nothing in particular: all


def _parse_tensor(tensor, spec: InputSpec, datatype: str, max_batch: int) -> np.ndarray:
    if not isinstance(tensor, dict):
        raise _invalid(f"inputs[0] must be an object: {_EXAMPLE_BODY}")
    missing = [key for key in ("name", "shape", "datatype", "data") if key not in tensor]
    if missing:
        raise _invalid(f"inputs[0] lacks {', '.join(missing)}: {_EXAMPLE_BODY}")
    if "parameters" in tensor and not isinstance(tensor["parameters"], dict):
        raise _invalid("inputs[0].parameters must be an object")
    if tensor["name"] != spec.name:
        raise _invalid(f"inputs[0] names no input of this model; its input is {spec.name!r}")
    _check_datatype(tensor["datatype"], datatype)
    row_count = _check_shape(tensor["shape"], spec, max_batch)
    flat = _flat_data(tensor["data"], row_count, spec.feature_count)
    values = _typed_values(flat, datatype)
    return values.reshape(row_count, spec.feature_count)


def _check_datatype(given, expected: str) -> None:
    if not isinstance(given, str) or given not in PROTOCOL_DATATYPES:
        raise _invalid(f"inputs[0].datatype must be one of {', '.join(PROTOCOL_DATATYPES)}")
    if given == expected:
        return
    if given == "BYTES":
        raise _invalid(f"this model takes {expected} numbers, not BYTES: BYTES (strings) is "
                       "only for models that take strings")
    raise _invalid(f"inputs[0].datatype is {given}; this model takes {expected}")


def _check_shape(shape, spec: InputSpec, max_batch: int) -> int:
    expected = f"[rows, {spec.feature_count}]"
    if (not isinstance(shape, list) or len(shape) != 2
            or not all(type(dim) is int for dim in shape)):
        raise _invalid(f"inputs[0].shape must be {expected}, two whole numbers")
    row_count, feature_count = shape
    if feature_count != spec.feature_count:
        raise _invalid(f"inputs[0].shape has {feature_count} features; this model takes "
                       f"{spec.feature_count}: {expected}")
    if row_count < 1:
        raise _invalid("inputs[0].shape has no rows; send at least one")
    if row_count > max_batch:
        raise _invalid(f"inputs[0].shape has {row_count} rows; send at most {max_batch} per "
                       "request")
    return row_count


def _flat_data(data, row_count: int, feature_count: int) -> list:
    """The values of `data`, flat in row-major order: given flat, or nested as the shape."""
    expected = row_count * feature_count
    if not isinstance(data, list):
        raise _invalid("inputs[0].data must be a list of values, flat or nested as the shape")
    if data and all(type(row) is list for row in data):
        if len(data) != row_count or set(map(len, data)) != {feature_count}:
            raise _invalid(f"inputs[0].data is nested but not as the shape: expected "
                           f"{row_count} lists of {feature_count} values")
        flat = list(chain.from_iterable(data))
    else:
        flat = data
    if any(type(value) is list for value in flat):
        raise _invalid("inputs[0].data must be flat, or nested exactly as the shape")
    if len(flat) != expected:
        raise _invalid(f"inputs[0].data has {len(flat)} values; the shape asks for {expected}")
    return flat


def _typed_values(flat: list, datatype: str) -> np.ndarray:
    dtype = DATATYPE_DTYPES[datatype]
    if dtype.kind == "O":
        _check_types(flat, (str,), "a string")
        return np.array(flat, dtype=object)
    if dtype.kind == "b":
        _check_types(flat, (bool,), "true or false")
        return np.array(flat, dtype=bool)
    if dtype.kind in "iu":
        _check_types(flat, (int,), "a whole number")
        limits = np.iinfo(dtype)
        for index, value in enumerate(flat):
            if not limits.min <= value <= limits.max:
                raise _invalid(f"inputs[0].data[{index}] does not fit in {datatype}")
        return np.array(flat, dtype=dtype)
    _check_types(flat, (int, float), "a number")
    try:
        as_double = np.array(flat, dtype=np.float64)
    except OverflowError:  # an integer beyond any float
        as_double = None
    if as_double is None or not np.isfinite(as_double).all():
        index = next(i for i, value in enumerate(flat) if not _finite(value))
        raise _invalid(f"inputs[0].data[{index}] is NaN or infinite; expected a finite number")
    with np.errstate(over="ignore"):
        values = as_double.astype(dtype)
    if not np.isfinite(values).all():
        index = int(np.argwhere(~np.isfinite(values))[0][0])
        raise _invalid(f"inputs[0].data[{index}] does not fit in {datatype}")
    return values


def _finite(value) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _check_types(flat: list, types: tuple, expected: str) -> None:
    # Exact types: bool is a subclass of int in Python, but true is no number in JSON.
    if set(map(type, flat)) <= set(types):
        return
    index = next(i for i, value in enumerate(flat) if type(value) not in types)
    raise _invalid(f"inputs[0].data[{index}] is {json_type(flat[index])}; expected {expected}")


# --- the Flask routes: health, metadata, readiness -----------------------------------


def _not_ready_reason() -> str | None:
    marker = current_app.config["SHUTDOWN_MARKER"]
    if marker and os.path.exists(marker):
        return "shutting down"
    return model_problem()


@api.get("/v2")
def server_metadata():
    return {"name": SERVER_NAME, "version": current_app.config["APP_VERSION"], "extensions": []}


@api.get("/v2/health/live")
def server_live():
    return {"live": True}


@api.get("/v2/health/ready")
def server_ready():
    # The protocol answers "not ready" with a 4xx, not a 5xx.
    ready = _not_ready_reason() is None
    return {"ready": ready}, 200 if ready else 400


@api.get("/v2/models/<model_name>")
@api.get("/v2/models/<model_name>/versions/<model_version>")
def model_metadata_route(model_name: str, model_version: str | None = None):
    model = model_of(current_app)
    check_served(model, model_name, model_version)
    return model_metadata(model)


@api.get("/v2/models/<model_name>/ready")
@api.get("/v2/models/<model_name>/versions/<model_version>/ready")
def model_ready(model_name: str, model_version: str | None = None):
    if model_problem() is not None:
        return {"name": model_name, "ready": False}, 400
    model = model_of(current_app)
    check_served(model, model_name, model_version)
    return {"name": model.name, "ready": True}


@api.post(INFER_ROUTE)
@api.post(VERSIONED_INFER_ROUTE)
def infer_route(model_name: str, model_version: str | None = None):
    # app.front answers infer requests before Flask sees them; these rules give Flask's
    # routing the URLs (a GET on one is a 405 naming POST) and serve the same answer
    # should the app ever be mounted without its front.
    body = infer(current_app._get_current_object(), request.environ, model_name, model_version)
    return Response(body, content_type=_JSON_CONTENT_TYPE)
