"""Turn a /score request body into the input tensor the model expects, or say what is wrong.

Everything a client can get wrong about a request is caught here and reported as a
4xx with a message naming the row and column at fault, so a bad request never
reaches onnxruntime (where it would surface as a 500). Messages describe values by
type and position only: this module must never echo payload values back or into logs.

The usual request, a plain table of numbers, takes a hand-written fast path
(`numeric_table`: a scan of the raw bytes, then simdjson straight into an array) in
front of the general one (orjson, then checks on the decoded lists). orjson has no way
to decode into an array, and the lists it builds cost more to check and convert than
to parse: benchmarks/bench_parsing.py times the two paths on the same bodies.
"""

from __future__ import annotations

import json
import math
import threading
from itertools import chain

import numpy as np
import orjson
import simdjson
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.http import parse_options_header
from werkzeug.wsgi import get_input_stream

from app.errors import ApiError
from app.model import InputSpec

_EXAMPLE_BODY = '{"instances": [[...], ...]}'
_JSON_CONTENT_TYPE = "application/json"
_NUMBER_TYPES = {int, float}
# The bytes JSON writes a list of lists of numbers with (0-9, sign, point, exponent,
# separators, brackets, white space), and what deleting them leaves of the bare key.
_NUMBER_LIST_BYTES = b"0123456789+-.eE,[] \t\r\n"
_BARE_KEY_RESIDUE = b'{"instances":}'.translate(None, _NUMBER_LIST_BYTES)
_parsers = threading.local()


def read_json_body(environ: dict, body_limit: int | None) -> bytes:
    """The raw body; 415 if it is not declared as JSON, 413 if it is longer than
    `body_limit` bytes."""
    # The exact header every client library sends is recognised without parsing it.
    content_type = environ.get("CONTENT_TYPE", "")
    if content_type != _JSON_CONTENT_TYPE:
        mimetype = parse_options_header(content_type)[0].lower()
        if not _is_json(mimetype):
            raise ApiError(
                415,
                "unsupported_media_type",
                f"expected Content-Type: application/json, got {mimetype or 'no content type'}",
            )
    return _read_body(environ, body_limit)


def decode_json(body: bytes, example: str = _EXAMPLE_BODY):
    """The decoded body; 400 if it does not parse, naming `example` as what was expected."""
    try:
        return orjson.loads(body)  # a fifth of the standard library's time on a 1-row body
    except orjson.JSONDecodeError:
        pass
    # orjson is stricter than the standard library, which the API has always followed:
    # it refuses NaN and Infinity literals, integers beyond any float, a byte order mark
    # and UTF-16 bodies. The standard library has the last word, so those still reach
    # validation (a 422 naming the row and column) and truly malformed bodies get the
    # same 400 message as ever.
    try:
        return json.loads(body)
    except RecursionError:
        raise ApiError(
            400, "malformed_json", f"request body is nested too deeply; expected {example}"
        ) from None
    except ValueError as error:  # JSONDecodeError and undecodable bytes alike
        raise ApiError(
            400,
            "malformed_json",
            f"request body is not valid JSON ({error}); expected {example}",
        ) from None


def _is_json(mimetype: str) -> bool:
    # What Werkzeug's Request.is_json accepts: application/json or application/*+json.
    return mimetype == "application/json" or (
        mimetype.startswith("application/") and mimetype.endswith("+json")
    )


def _read_body(environ: dict, body_limit: int | None) -> bytes:
    """The body, bounded by `body_limit` (413 beyond it).

    With a plain Content-Length the body is read straight from the WSGI input, which
    costs a tenth of Werkzeug's general path; anything else (chunked bodies, odd
    headers) takes that path.
    """
    declared = environ.get("CONTENT_LENGTH", "")
    if not (declared.isascii() and declared.isdecimal()):
        return get_input_stream(environ, max_content_length=body_limit).read()
    length = int(declared)
    if body_limit is not None and length > body_limit:
        raise RequestEntityTooLarge()
    return environ["wsgi.input"].read(length)


def holds_only_numbers(body: bytes) -> bool:
    """True when a body that parses as an object with an "instances" key holds nothing
    else but numbers, lists and white space.

    Deleting every byte a list of numbers can be written with leaves exactly what the
    bare key leaves: one string (the key itself, so no string values), one object (no
    nested ones), and no letters outside that key, so no true, false or null. One C pass
    over the bytes, a tenth of the time of asking each decoded value its type.
    """
    return body.translate(None, _NUMBER_LIST_BYTES) == _BARE_KEY_RESIDUE


def numeric_table(body: bytes, spec: InputSpec, max_batch: int) -> np.ndarray | None:
    """The instances of a well-formed request for a float model, read from the bytes
    straight into an array of spec.dtype; None for anything else.

    The common request (a table of finite numbers of the right shape) is parsed by
    simdjson, which writes the numbers into one buffer without making a Python object
    of each: a third of the time of decoding to lists and converting those. Whenever
    this says None, `parse_instances` on the decoded body gives the answer, error
    messages included; where this gives an array, it is the one `parse_instances`
    would give (tests/unit/test_app_properties.py holds the two paths side by side).
    """
    if spec.dtype.kind != "f" or not holds_only_numbers(body):
        return None
    try:
        table = _parser().parse(body)["instances"]
        row_count = len(table)
        if not 0 < row_count <= max_batch or body.count(b"[") != row_count + 1:
            return None  # the byte scan let nested lists through; the walk names them
        feature_count = spec.feature_count
        for row in table:
            if len(row) != feature_count:
                return None
        values = np.frombuffer(table.as_buffer(of_type="d"), dtype=np.float64)
    except (ValueError, TypeError, RuntimeError, KeyError):
        # Not JSON, numbers simdjson will not take (1e400, integers past 64 bits), or a
        # list where the key's value should be a table.
        return None
    with np.errstate(over="ignore"):  # 1e39 does not fit a float32: the walk says so
        instances = values.reshape(row_count, feature_count).astype(spec.dtype, copy=False)
    if not np.isfinite(instances).all():
        return None
    return instances


def _parser() -> simdjson.Parser:
    # A parser reuses its buffers from one document to the next, so it is kept, one per
    # thread: a document is only valid until its parser's next parse.
    parser = getattr(_parsers, "parser", None)
    if parser is None:
        parser = _parsers.parser = simdjson.Parser()
    return parser


def parse_instances(payload, spec: InputSpec, max_batch: int) -> np.ndarray:
    """A [rows, spec.feature_count] array of spec.dtype built from payload["instances"]."""
    if not isinstance(payload, dict) or "instances" not in payload:
        raise ApiError(
            422,
            "missing_instances",
            f'expected a JSON object with an "instances" key: {_EXAMPLE_BODY}',
        )
    rows = payload["instances"]
    if not isinstance(rows, list):
        raise ApiError(
            422,
            "instances_not_a_list",
            f'"instances" must be a list of rows, got {json_type(rows)}: {_EXAMPLE_BODY}',
        )
    if not rows:
        raise ApiError(422, "empty_batch", '"instances" is empty; send at least one row')
    if len(rows) > max_batch:
        raise ApiError(
            422,
            "batch_too_large",
            f'"instances" has {len(rows)} rows; send at most {max_batch} per request',
        )
    if spec.dtype.kind == "O":
        return _text_rows(rows, spec)
    array = _bulk_array(rows, spec)
    if array is None:
        # Something is wrong; walk the rows to name the first bad row and column.
        for row_index, row in enumerate(rows):
            _check_row(row_index, row, spec.feature_count)
        array = np.asarray(rows, dtype=np.float64)
    if array.dtype == spec.dtype:
        return array  # already checked finite
    with np.errstate(over="ignore", invalid="ignore"):  # reported below, row and column named
        instances = array.astype(spec.dtype)
    _check_representable(array, instances, spec)
    return instances


def _text_rows(rows: list, spec: InputSpec) -> np.ndarray:
    """The rows of a model that takes strings, as an object array; 422 for anything else."""
    for row_index, row in enumerate(rows):
        if not isinstance(row, list) or len(row) != spec.feature_count:
            _check_row(row_index, row, spec.feature_count)  # names what is wrong with it
        for column, value in enumerate(row):
            if type(value) is not str:
                raise ApiError(
                    422,
                    "non_text_value",
                    f"row {row_index}, column {column} is {json_type(value)}; this model "
                    "takes strings",
                )
    return np.array(rows, dtype=object).reshape(len(rows), spec.feature_count)


def _bulk_array(rows: list, spec: InputSpec) -> np.ndarray | None:
    """The rows as one finite array when every check passes, else None; C loops only.

    Most requests are valid, so they are checked in bulk, and converted straight to
    a float model's own type; the per-value walk that explains a failure runs only
    when this says no. For an integer model the array is float64, checked for whole
    numbers by the caller.
    """
    if set(map(type, rows)) != {list} or set(map(len, rows)) != {spec.feature_count}:
        return None
    # bool is a subclass of int, but true/false are not numbers in JSON: compare exact
    # types. (NumPy would also take true as 1.0 and "1.5" as 1.5 without a word.)
    if not set(map(type, chain.from_iterable(rows))) <= _NUMBER_TYPES:
        return None
    dtype = spec.dtype if spec.dtype.kind == "f" else np.float64
    try:
        with np.errstate(over="ignore"):  # 1e39 becomes inf in float32: caught below
            array = np.array(rows, dtype=dtype)
    except OverflowError:  # an integer beyond any float
        return None
    if not np.isfinite(array).all():
        return None
    return array


def _check_row(row_index: int, row, feature_count: int) -> None:
    if not isinstance(row, list):
        raise ApiError(
            422,
            "row_not_a_list",
            f"row {row_index} is {json_type(row)}; expected a list of {feature_count} features",
        )
    if len(row) != feature_count:
        raise ApiError(
            422,
            "wrong_feature_count",
            f"row {row_index} has {len(row)} values; expected {feature_count} features",
        )
    for column, value in enumerate(row):
        # bool is a subclass of int in Python, but true/false are not numbers in JSON.
        if type(value) not in (int, float):
            raise ApiError(
                422,
                "non_numeric_value",
                f"row {row_index}, column {column} is {json_type(value)}; expected a number",
            )
        try:
            finite = math.isfinite(value)
        except OverflowError:  # an integer beyond any float
            finite = False
        if not finite:
            raise ApiError(
                422,
                "non_finite_value",
                f"row {row_index}, column {column} is NaN or infinite; expected a finite number",
            )


def _check_representable(as_float: np.ndarray, instances: np.ndarray, spec: InputSpec) -> None:
    """Catch values that are finite in JSON but not in the model's dtype (1e39 in float32)."""
    if np.issubdtype(spec.dtype, np.floating):
        if np.isfinite(instances).all():
            return
        bad = np.argwhere(~np.isfinite(instances))
        if bad.size:
            row_index, column = bad[0]
            raise ApiError(
                422,
                "non_finite_value",
                f"row {row_index}, column {column} does not fit in {spec.dtype.name}",
            )
    else:
        bad = np.argwhere(as_float != instances)
        if bad.size:
            row_index, column = bad[0]
            raise ApiError(
                422,
                "non_integer_value",
                f"row {row_index}, column {column} must be a whole number that fits in "
                f"{spec.dtype.name}",
            )


def json_type(value) -> str:
    """How an error message names a JSON value's type (true is a boolean, not a number)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__
